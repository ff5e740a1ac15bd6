"""Sweeps: methods × ε values × seeds on a local process pool, each run stored as it finishes.

Running the same sweep again trains only the cells not yet done (reuse is by
config hash). Non-private methods ignore ε, so they get one cell per seed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .config import TrainConfig, resolve_for_data
from .data import load_dataset
from .errors import ConfigError
from .methods import method_info
from .models import model_spec
from .progress import Progress, ProgressFn, StopFn, no_progress
from .runner import run
from .store import RunStore


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A grid over methods, target ε values and seeds around one base config."""

    base: TrainConfig
    methods: tuple[str, ...]
    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in self.methods:
            method_info(name)
        if not self.methods or not self.seeds:
            raise ConfigError("a sweep needs at least one method and one seed")
        if any(method_info(m).private for m in self.methods) and not self.epsilons:
            raise ConfigError("private methods in a sweep need at least one epsilon")

    def cells(self) -> list[TrainConfig]:
        """One normalised config per distinct cell, in a stable order."""
        out, seen = [], set()
        for method in self.methods:
            private = method_info(method).private
            for epsilon in self.epsilons if private else (None,):
                for seed in self.seeds:
                    cell = dataclasses.replace(
                        self.base, method=method, seed=seed, epsilon=epsilon, noise_multiplier=None
                    ).normalized()
                    if cell.config_hash() not in seen:
                        seen.add(cell.config_hash())
                        out.append(cell)
        return out


def check_sweep(spec: SweepSpec) -> None:
    """Check the grid against its data before any training (δ < 1/n, batch ≤ n, model fits), so a page
    or the CLI can refuse it with one message instead of failing cell by cell."""
    base = spec.base
    dataset = load_dataset(base.dataset, target=base.target, size=base.dataset_size, split_seed=base.split_seed)
    model_spec(base.model, kind=dataset.kind, input_shape=dataset.input_shape, n_classes=dataset.n_classes)
    for cell in spec.cells():
        resolve_for_data(cell, dataset.n_train)


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


def _cell_worker(config: dict, store_path: str, threads: int, reports, stop) -> tuple[str, str, str]:
    """Train one cell in a worker process; progress goes to the parent through `reports`."""
    import torch

    torch.set_num_threads(threads)
    config_obj = TrainConfig.from_dict(config)
    key = config_obj.config_hash()

    def forward(p: Progress) -> None:
        try:
            reports.put_nowait((key, p.done, p.total, p.message, dict(p.metrics)))
        except Exception:  # a full or closed queue must never stop training
            pass

    try:
        outcome = run(config_obj, RunStore(store_path), on_progress=forward, should_stop=stop.is_set)
    except Exception as exc:  # reported to the parent, which keeps the other cells going
        return "", "error", f"{config_obj.method} ε={config_obj.epsilon} seed={config_obj.seed}: {exc}"
    return outcome.record.run_id, outcome.record.status, ""


def sweep(
    spec: SweepSpec,
    store: RunStore,
    *,
    workers: int = 1,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> SweepResult:
    """Train every cell not yet done; `workers > 1` uses a spawn process pool sharing the store file."""
    result = SweepResult()
    todo = []
    for cell in spec.cells():
        done = store.find_done(cell.config_hash())
        (result.reused.append(done) if done else todo.append(cell))
    total = len(todo)
    on_progress(Progress("sweep", 0, total, f"{len(result.reused)} cells reused, {total} to train"))
    if workers <= 1:
        _sweep_inline(todo, store, result, on_progress, should_stop)
    else:
        _sweep_pool(todo, store, result, workers, on_progress, should_stop)
    return result


def _record(result: SweepResult, run_id: str, status: str, error: str) -> None:
    if status == "done":
        result.trained.append(run_id)
    elif status == "cancelled":
        result.cancelled = True
    else:
        if run_id:
            result.failed.append(run_id)
        if error:
            result.errors.append(error)


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
        label = f"{cell.method} ε={cell.epsilon} seed={cell.seed}"

        def inner(p: Progress, i=i, label=label) -> None:
            on_progress(
                Progress("sweep", i, len(todo), f"{label}: {p.message}", {**p.metrics, "cell_fraction": p.fraction})
            )

        try:
            outcome = run(cell, store, on_progress=inner, should_stop=should_stop)
            _record(result, outcome.record.run_id, outcome.record.status, outcome.record.reason)
        except Exception as exc:
            _record(result, "", "error", f"{label}: {exc}")
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
                pool.submit(_cell_worker, cell.to_dict(), str(store.path), threads, reports, stop): cell
                for cell in todo
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
                        _, step, steps, message, metrics = reports.get_nowait()
                    except queue.Empty:
                        break
                    on_progress(
                        Progress(
                            "sweep", finished, len(todo), message, {**metrics, "cell_fraction": step / max(1, steps)}
                        )
                    )
                for future in done:
                    pending.pop(future)
                    finished += 1
                    if future.cancelled():
                        result.cancelled = True
                        continue
                    _record(result, *future.result())
                    on_progress(Progress("sweep", finished, len(todo), f"{finished}/{len(todo)} cells finished"))
    if should_stop is not None and should_stop():
        result.cancelled = True
