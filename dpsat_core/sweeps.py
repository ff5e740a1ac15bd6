"""Sweeps: methods × ε values × seeds on a local process pool, each run stored as it finishes.

Running the same sweep again trains only the cells not yet done (reuse is by
config hash). Non-private methods ignore ε, so they get one cell per seed.
The parent calibrates σ for every cell into the store before any worker starts;
workers (and every later run) read σ and per-epoch ε from the store's answers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .config import TrainConfig
from .errors import ConfigError, DpsatError
from .methods import METHODS, method_info
from .progress import Progress, ProgressFn, StopFn, no_progress
from .store import RunStore

# Planning and training (torch, Opacus, the data loaders) are imported where a sweep is checked or run, so a
# page can describe the default comparison before any heavy import.


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A grid over methods, target ε values, seeds and (for the methods that use it) ρ around one base config;
    no `rhos` means the base config's ρ."""

    base: TrainConfig
    methods: tuple[str, ...]
    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]
    rhos: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in self.methods:
            method_info(name)
        if not self.methods or not self.seeds:
            raise ConfigError("a sweep needs at least one method and one seed")
        if any(method_info(m).private for m in self.methods) and not self.epsilons:
            raise ConfigError("private methods in a sweep need at least one epsilon")
        for rho in self.rhos:  # each is checked as the config would check it
            dataclasses.replace(self.base, rho=rho)

    def cells(self) -> list[TrainConfig]:
        """One normalised config per distinct cell, in a stable order."""
        out, seen = [], set()
        for method in self.methods:
            info = method_info(method)
            for rho in (self.rhos or (self.base.rho,)) if info.uses_rho else (self.base.rho,):
                for epsilon in self.epsilons if info.private else (None,):
                    for seed in self.seeds:
                        cell = dataclasses.replace(
                            self.base, method=method, seed=seed, epsilon=epsilon, noise_multiplier=None, rho=rho
                        ).normalized()
                        if cell.config_hash() not in seen:
                            seen.add(cell.config_hash())
                            out.append(cell)
        return out


def default_comparison(dataset: str = "digits") -> SweepSpec:
    """The one-click comparison: every private method plus the non-private baselines, ε = 1, 3, 8,
    two seeds, 5 epochs (small enough for a CPU in about a minute per dozen runs)."""
    methods = tuple(m.name for m in METHODS.values() if m.private or m.baseline is None)
    return SweepSpec(
        base=TrainConfig(dataset=dataset, epochs=5), methods=methods, epsilons=(1.0, 3.0, 8.0), seeds=(0, 1)
    )


def check_sweep(spec: SweepSpec, store: Optional[RunStore] = None) -> None:
    """Plan every cell against its data before any training (the same checks as `run`: δ < 1/n, batch ≤ n,
    model fits, device present, ε reachable), so a page or the CLI can refuse the grid with one message
    instead of failing cell by cell. Calibrations are kept in `store` (and cached), so the cells reuse them."""
    from .data import load_config_dataset
    from .planning import plan_run

    dataset = load_config_dataset(spec.base)
    for cell in spec.cells():
        try:
            plan_run(cell, dataset, store)
        except ConfigError as exc:
            raise ConfigError(f"{cell_label(cell)}: {exc}") from None


@dataclass
class SweepResult:
    """Run ids of the grid, split by what happened to each cell."""

    reused: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def run_ids(self) -> list[str]:
        return self.reused + self.trained + self.failed

    def problems(self) -> str:
        """One line on failed cells (each failed cell leaves one error), or '' when all finished."""
        if not self.errors:
            return ""
        return f"{len(self.errors)} of the cells failed: " + "; ".join(self.errors[:3])


def cell_label(cell: TrainConfig) -> str:
    """'dpsat ε=3 seed=0' (σ or no privacy when the cell has no target ε)."""
    if cell.epsilon is not None:
        privacy = f" ε={cell.epsilon:g}"
    elif cell.noise_multiplier is not None:
        privacy = f" σ={cell.noise_multiplier:g}"
    else:
        privacy = ""
    return f"{cell.method}{privacy} seed={cell.seed}"


@dataclass(frozen=True, kw_only=True)
class CellOutcome:
    """What happened to one cell: its run id ('' when no run was written), status and error reason."""

    run_id: str
    status: str  # a run status, or "error" when the cell raised before or while training
    error: str


def run_cell(
    cell: TrainConfig, store: RunStore, *, on_progress: ProgressFn, should_stop: Optional[StopFn]
) -> CellOutcome:
    """Train one cell (in this process or a worker): the same outcome, reasons and messages either way."""
    from .runner import run

    label = cell_label(cell)
    try:
        record = run(cell, store, on_progress=on_progress, should_stop=should_stop).record
    except Exception as exc:  # reported, and the other cells keep going
        return CellOutcome(run_id="", status="error", error=f"{label}: {exc}")
    error = f"{label}: {record.reason}" if record.status == "failed" else ""
    return CellOutcome(run_id=record.run_id, status=record.status, error=error)


def _cell_worker(config: dict, key: int, store_path: str, threads: int, reports, stop) -> CellOutcome:
    """Train one cell in a worker process; progress goes to the parent through `reports`, tagged with `key`."""
    import torch

    torch.set_num_threads(threads)
    cell = TrainConfig.from_dict(config)

    def forward(p: Progress) -> None:
        try:
            reports.put_nowait((key, p.stage, p.done, p.total, p.message, dict(p.metrics)))
        except Exception:  # a full or closed queue must never stop training
            pass

    return run_cell(cell, RunStore(store_path), on_progress=forward, should_stop=stop.is_set)


def sweep(
    spec: SweepSpec,
    store: RunStore,
    *,
    workers: int = 1,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> SweepResult:
    """Train every cell not yet done; `workers > 1` uses a spawn process pool sharing the store file."""
    from .runner import reusable_run

    result = SweepResult()
    todo = []
    for cell in spec.cells():
        done = reusable_run(store, cell)
        (result.reused.append(done.run_id) if done else todo.append(cell))
    total = len(todo)
    on_progress(Progress("sweep", 0, total, f"{len(result.reused)} cells reused, {total} to train"))
    calibrate_cells(todo, store)
    if workers <= 1:
        _sweep_inline(todo, store, result, on_progress, should_stop)
    else:
        _sweep_pool(todo, store, result, workers, on_progress, should_stop)
    return result


def calibrate_cells(cells: Sequence[TrainConfig], store: RunStore) -> None:
    """Calibrate σ for every cell here, once, into the store, so workers read it instead of each recomputing
    it; a cell that cannot be planned is left for its run to report."""
    from .data import load_config_dataset
    from .planning import plan_privacy

    for cell in cells:
        try:
            plan_privacy(cell, load_config_dataset(cell).n_train, store)
        except DpsatError:
            continue


def _record(result: SweepResult, outcome: CellOutcome) -> None:
    if outcome.status == "done":
        result.trained.append(outcome.run_id)
    elif outcome.status == "cancelled":
        result.cancelled = True
    else:
        if outcome.run_id:
            result.failed.append(outcome.run_id)
        result.errors.append(outcome.error)


def _cell_progress(on_progress: ProgressFn, index: int, total: int, label: str) -> ProgressFn:
    """Report a cell's own progress as sweep progress: 'label: message', with the cell's fraction."""

    def report(p: Progress) -> None:
        metrics = {**p.metrics, "cell": label, "run": f"run {index + 1} of {total}"}
        on_progress(Progress("sweep", index, total, f"{label}: {p.message}", metrics, within=p.fraction))

    return report


def _sweep_inline(
    todo: Sequence[TrainConfig],
    store: RunStore,
    result: SweepResult,
    on_progress: ProgressFn,
    should_stop: Optional[StopFn],
) -> None:
    for i, cell in enumerate(todo):
        if should_stop is not None and should_stop():
            result.cancelled = True
            return
        label = cell_label(cell)
        progress = _cell_progress(on_progress, i, len(todo), label)
        outcome = run_cell(cell, store, on_progress=progress, should_stop=should_stop)
        _record(result, outcome)
        if outcome.status == "cancelled":  # the bar stays where the sweep stopped
            return
        on_progress(Progress("sweep", i + 1, len(todo), f"{label} finished"))


def _sweep_pool(
    todo: Sequence[TrainConfig],
    store: RunStore,
    result: SweepResult,
    workers: int,
    on_progress: ProgressFn,
    should_stop: Optional[StopFn],
) -> None:
    context = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    threads = max(1, (os.cpu_count() or 1) // workers)
    with context.Manager() as manager:
        reports, stop = manager.Queue(), manager.Event()
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending: dict[Future, TrainConfig] = {
                pool.submit(_cell_worker, cell.to_dict(), key, str(store.path), threads, reports, stop): cell
                for key, cell in enumerate(todo)
            }
            finished = 0
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if should_stop is not None and should_stop() and not stop.is_set():
                    stop.set()
                    for future in pending:
                        future.cancel()
                while True:
                    try:
                        key, *report = reports.get_nowait()
                    except queue.Empty:
                        break
                    _cell_progress(on_progress, finished, len(todo), cell_label(todo[key]))(Progress(*report))
                for future in done:
                    cell = pending.pop(future)
                    if future.cancelled():
                        result.cancelled = True
                        continue
                    outcome = future.result()
                    _record(result, outcome)
                    if outcome.status != "cancelled":
                        finished += 1
                        on_progress(Progress("sweep", finished, len(todo), f"{cell_label(cell)} finished"))
    if should_stop is not None and should_stop():
        result.cancelled = True
