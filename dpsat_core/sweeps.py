"""Sweeps: methods × ε values × seeds on a local process pool (or a Ray cluster), each run stored as it finishes.

Running the same sweep again trains only the cells not yet done (reuse is by
config hash), so a stopped sweep resumes by being run again. Non-private methods
ignore ε, so they get one cell per seed. Pool workers die with the sweep
process (`workers.die_with_parent`). The parent calibrates σ for every cell, and
computes its per-epoch ε, into the store before any worker starts; workers (and
every later run) read σ and per-epoch ε from the store's answers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .config import TrainConfig
from .errors import ConfigError, DpsatError
from .methods import METHODS, method_info
from .progress import Cancelled, Progress, ProgressFn, StopFn, no_progress, stop_asked
from .results import counted
from .store import RunStore

if TYPE_CHECKING:
    from .cluster import RayCluster

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


def default_workers() -> int:
    """Worker processes of a local sweep unless told otherwise (the CLI's `--workers`, the dashboard's sweeps):
    one per core, at most 2."""
    return min(2, os.cpu_count() or 1)


def default_comparison(dataset: str = "digits") -> SweepSpec:
    """The one-click comparison: every private method plus the non-private baselines, ε = 1, 3, 8,
    two seeds, 5 epochs (small enough for a CPU in about a minute per dozen runs)."""
    methods = tuple(m.name for m in METHODS.values() if m.private or m.baseline is None)
    return SweepSpec(
        base=TrainConfig(dataset=dataset, epochs=5), methods=methods, epsilons=(1.0, 3.0, 8.0), seeds=(0, 1)
    )


def check_sweep(spec: SweepSpec, store: Optional[RunStore] = None, *, device_here: bool = True) -> None:
    """Plan every cell against its data before any training (the same checks as `run`: δ < 1/n, batch ≤ n,
    model fits, device present, ε reachable), so a page or the CLI can refuse the grid with one message
    instead of failing cell by cell. Calibrations are kept in `store` (and cached), so the cells reuse them.
    A sweep on a Ray cluster passes `device_here=False`: its workers, not this machine, must have the device."""
    check_cells(spec.cells(), store, device_here=device_here)


def check_cells(cells: Sequence[TrainConfig], store: Optional[RunStore] = None, *, device_here: bool = True) -> None:
    """`check_sweep` for these cells of a grid (the CLI checks only those it will train)."""
    from .data import load_config_dataset
    from .planning import plan_run

    for cell in cells:
        try:  # each cell's own data: a table's released statistics take a share of that cell's ε
            plan_run(cell, load_config_dataset(cell), store, device_here=device_here)
        except ConfigError as exc:
            raise ConfigError(f"{cell_label(cell)}: {exc}") from None


@dataclass
class SweepResult:
    """Run ids of the grid, split by what happened to each cell; a stopped sweep lists the runs it cancelled
    midway (stored as cancelled) and the cells it never started."""

    reused: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False
    stopped: list[str] = field(default_factory=list)  # run ids cancelled while training
    skipped: list[str] = field(default_factory=list)  # labels of cells never started

    @property
    def run_ids(self) -> list[str]:
        return self.reused + self.trained + self.failed

    def problems(self) -> str:
        """One line on failed cells (each failed cell leaves one error), or '' when all finished."""
        if not self.errors:
            return ""
        return f"{len(self.errors)} of the cells failed: " + "; ".join(self.errors[:3])


def cell_label(cell: TrainConfig) -> str:
    """A cell as users read it in progress, errors and the skipped list: 'DP-SAT, ε = 3, ρ = 0.05, seed 0' (σ = 1.2
    for a cell given σ; no privacy part for a non-private method, no ρ for a method without one). Distinct for the
    cells of one sweep: the job panel tells a sweep's runs apart by it."""
    info = method_info(cell.method)
    parts = [info.label]
    if cell.epsilon is not None:
        parts.append(f"ε = {cell.epsilon:g}")
    elif cell.noise_multiplier is not None:
        parts.append(f"σ = {cell.noise_multiplier:g}")
    if info.uses_rho:
        parts.append(f"ρ = {cell.rho:g}")
    return ", ".join([*parts, f"seed {cell.seed}"])


@dataclass(frozen=True, kw_only=True)
class CellOutcome:
    """What happened to one cell: its run id ('' when no run was written), status and error reason."""

    run_id: str
    status: str  # a run status; "error" when the cell raised before or while training; "skipped": never started
    error: str
    reused: bool = False  # finished by another trainer of the same settings while this one waited


def run_cell(
    cell: TrainConfig, store: RunStore, *, on_progress: ProgressFn, should_stop: Optional[StopFn]
) -> CellOutcome:
    """Train one cell (in this process or a worker): the same outcome, reasons and messages either way."""
    from .runner import run

    label = cell_label(cell)
    try:
        outcome = run(cell, store, on_progress=on_progress, should_stop=should_stop)
    except Cancelled:  # stopped while it waited for another trainer of the same settings
        return CellOutcome(run_id="", status="skipped", error="")
    except Exception as exc:  # reported, and the other cells keep going
        return CellOutcome(run_id="", status="error", error=f"{label}: {exc}")
    record = outcome.record
    error = f"{label}: {record.reason}" if record.status == "failed" else ""
    return CellOutcome(run_id=record.run_id, status=record.status, error=error, reused=outcome.reused)


_worker: dict[str, Any] = {}  # a pool worker's channel to its parent: progress queue and stop event


def _init_worker(parent_pid: int, environment: dict, threads: int, reports: Any, stop: Any) -> None:
    """First thing in each pool worker: the parent's environment, die with the parent, share the cores, keep the
    parent's channel."""
    from .workers import start_child

    start_child(parent_pid, environment)
    import torch

    torch.set_num_threads(threads)
    _worker.update(reports=reports, stop=stop)


def _cell_worker(config: dict, key: int, store_path: str) -> CellOutcome:
    """Train one cell in a worker process; progress goes to the parent through the queue, tagged with `key`."""
    from .workers import stopping, training

    reports, stop = _worker["reports"], _worker["stop"]
    if stop.is_set() or stopping():  # queued before the sweep was stopped: never started
        return CellOutcome(run_id="", status="skipped", error="")
    cell = TrainConfig.from_dict(config)

    def forward(p: Progress) -> None:
        try:
            reports.put_nowait((key, p.stage, p.done, p.total, p.message, dict(p.metrics)))
        except Exception:  # a full or closed queue must never stop training
            pass

    forward(CELL_STARTED)
    with training():
        return run_cell(
            cell, RunStore(store_path), on_progress=forward, should_stop=lambda: stopping() or stop.is_set()
        )


def sweep(
    spec: SweepSpec,
    store: RunStore,
    *,
    workers: int = 1,
    cluster: Optional[RayCluster] = None,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> SweepResult:
    """Train every cell not yet done; `workers > 1` uses a process pool sharing the store file (no more workers than
    cells to train), a `cluster` sends each cell to Ray as a task (`workers` then does not apply) and writes its
    result here."""
    from .runner import reusable_run

    result = SweepResult()
    todo = []
    for cell in spec.cells():
        done = reusable_run(store, cell)
        (result.reused.append(done.run_id) if done else todo.append(cell))
    total = len(todo)
    on_progress(Progress("sweep", 0, total, f"{counted(len(result.reused), 'cell')} reused, {total} to train"))
    calibrate_cells(todo, store, should_stop=should_stop, on_progress=on_progress)
    if stop_asked(should_stop):  # cancelled while planning (seconds for a big grid): start nothing
        result.cancelled = True
        result.skipped.extend(cell_label(cell) for cell in todo)
        return result
    if cluster is not None:
        from .cluster import sweep_on_ray  # Ray is imported only for a sweep that uses it

        sweep_on_ray(todo, store, result, cluster, on_progress, should_stop)
    elif min(workers, total) <= 1:  # one cell: here, on every core, without starting a pool
        _sweep_inline(todo, store, result, on_progress, should_stop)
    else:
        _sweep_pool(todo, store, result, min(workers, total), on_progress, should_stop)
    return result


def calibrate_cells(
    cells: Sequence[TrainConfig],
    store: RunStore,
    *,
    should_stop: Optional[StopFn] = None,
    on_progress: ProgressFn = no_progress,
) -> None:
    """Calibrate σ for every cell here, once, into the store, then its per-epoch ε, so workers read them instead
    of each recomputing them (seeds running side by side would ask the same questions at once, each worker
    without the accountant's memo); a cell that cannot be planned is left for its run to report. `should_stop()`
    ends it between cells, between two evaluations of a cell's σ search (seconds to a minute at small ε) or between
    two epochs of its per-epoch ε (a minute for 400 epochs): the sweep then starts nothing. Each cell is named in
    `on_progress` as it is planned (a σ search takes seconds)."""
    from .data import load_config_dataset
    from .planning import plan_run, record_epoch_epsilons

    for i, cell in enumerate(cells):
        if stop_asked(should_stop):
            return
        label = cell_label(cell)
        planning = f"planning σ for {cell_position(label, i + 1, len(cells))}"
        on_progress(Progress("sweep", 0, len(cells), planning, {"cell": label, "event": "planning"}))
        try:  # the whole plan, so a table's released statistics are composed in as the run will compose them
            plan = plan_run(cell, load_config_dataset(cell), store, device_here=False, should_stop=should_stop).privacy
        except DpsatError:
            continue
        except Cancelled:  # stopped during σ's search: nothing of this cell was written
            return
        try:  # right after σ: its last evaluation's PRVs are still held
            record_epoch_epsilons(plan, cell.epochs, store, should_stop=should_stop)
        except Cancelled:  # stopped between two epochs' compositions: σ is stored, the curve is left to the run
            return


def _record(result: SweepResult, outcome: CellOutcome, cell: TrainConfig) -> None:
    if outcome.status == "done":
        (result.reused if outcome.reused else result.trained).append(outcome.run_id)
    elif outcome.status == "skipped":
        result.cancelled = True
        result.skipped.append(cell_label(cell))
    elif outcome.status == "cancelled":
        result.cancelled = True
        result.stopped.append(outcome.run_id)
    else:
        if outcome.run_id:
            result.failed.append(outcome.run_id)
        result.errors.append(outcome.error)


def cell_position(label: str, number: int, total: int) -> str:
    """'DP-SAT, ε = 3, ρ = 0.05, seed 0 · 2 of 4': a cell as progress names it, with its place in the grid."""
    return f"{label} · {number} of {total}"


# A cell's first report, sent as it starts: a sweep's progress names the cell before its first step
CELL_STARTED = Progress("train", 0, 1, "starting", {"event": "started"})


def _cell_progress(on_progress: ProgressFn, done: int, total: int, label: str, number: int) -> ProgressFn:
    """Report a cell's own progress as sweep progress: 'label · number of total: message', where `done` cells of
    `total` have finished and this one's fraction is under way."""

    def report(p: Progress) -> None:
        metrics = {**p.metrics, "cell": label, "run": f"run {number} of {total}"}
        message = f"{cell_position(label, number, total)}: {p.message}"
        on_progress(Progress("sweep", done, total, message, metrics, within=p.fraction))

    return report


def cell_finished(on_progress: ProgressFn, done: int, total: int, label: str, number: int) -> None:
    """Report that cell `number` finished, the `done`-th of `total` to finish."""
    message = f"{cell_position(label, number, total)} finished"
    on_progress(Progress("sweep", done, total, message, {"cell": label, "event": "finished"}))


def _sweep_inline(
    todo: Sequence[TrainConfig],
    store: RunStore,
    result: SweepResult,
    on_progress: ProgressFn,
    should_stop: Optional[StopFn],
) -> None:
    for i, cell in enumerate(todo):
        if stop_asked(should_stop):
            result.cancelled = True
            result.skipped.extend(cell_label(c) for c in todo[i:])
            return
        label = cell_label(cell)
        progress = _cell_progress(on_progress, i, len(todo), label, i + 1)
        progress(CELL_STARTED)
        outcome = run_cell(cell, store, on_progress=progress, should_stop=should_stop)
        _record(result, outcome, cell)
        if outcome.status in ("cancelled", "skipped"):  # the bar stays where the sweep stopped
            result.skipped.extend(cell_label(c) for c in todo[i + 1 :])
            return
        cell_finished(on_progress, i + 1, len(todo), label, i + 1)


def _sweep_pool(
    todo: Sequence[TrainConfig],
    store: RunStore,
    result: SweepResult,
    workers: int,
    on_progress: ProgressFn,
    should_stop: Optional[StopFn],
) -> None:
    import queue
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    from .workers import process_context, warm_up

    context = process_context()
    warm_up()  # its fork server, if not started yet, with SIGINT blocked (a Ctrl-C while it imports: no traceback)
    threads = max(1, (os.cpu_count() or 1) // workers)
    # a plain queue and event handed to each worker at start (no manager process, which would outlive a killed sweep)
    reports, stop = context.Queue(), context.Event()
    initargs = (os.getpid(), dict(os.environ), threads, reports, stop)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        pending: dict[Future, tuple[int, TrainConfig]] = {
            pool.submit(_cell_worker, cell.to_dict(), key, str(store.path)): (key, cell)
            for key, cell in enumerate(todo)
        }
        finished = 0
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if stop_asked(should_stop) and not stop.is_set():
                stop.set()
                for future in pending:
                    future.cancel()
            while True:
                try:
                    key, *report = reports.get_nowait()
                except queue.Empty:
                    break
                _cell_progress(on_progress, finished, len(todo), cell_label(todo[key]), key + 1)(Progress(*report))
            for future in done:
                key, cell = pending.pop(future)
                if future.cancelled():
                    _record(result, CellOutcome(run_id="", status="skipped", error=""), cell)
                    continue
                try:
                    outcome = future.result()
                except Exception as exc:  # its worker process ended (killed, out of memory): the others go on
                    outcome = CellOutcome(
                        run_id="", status="error", error=f"{cell_label(cell)}: its worker process ended ({exc})"
                    )
                _record(result, outcome, cell)
                if outcome.status not in ("cancelled", "skipped"):
                    finished += 1
                    cell_finished(on_progress, finished, len(todo), cell_label(cell), key + 1)
    if stop_asked(should_stop):
        result.cancelled = True
