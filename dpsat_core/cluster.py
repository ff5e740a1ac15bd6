"""Sweeps on a Ray cluster: each cell is one Ray task; the driver (this process) alone writes the store.

A task gets the cell's config, its data set (put into Ray's object store once per
sweep) and the plan made here, trains it with `training.train` and returns the
whole result (summary, epochs, weights); the driver claims the cell's row before
submitting it and writes the result into it (`runner.store_result`). Workers
therefore need neither the store file nor the data files, only this project
installed with the same pins. Ray is imported only here, and only when a sweep
uses it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .config import TrainConfig
from .errors import ConfigError
from .progress import Progress, ProgressFn, StopFn, stop_asked
from .store import RunStore

if TYPE_CHECKING:
    from .data import Dataset
    from .planning import RunPlan
    from .sweeps import SweepResult
    from .training import TrainResult

ADDRESS_ENV = "DPSAT_RAY_ADDRESS"
GPUS_ENV = "DPSAT_RAY_GPUS_PER_RUN"
RAY_PIN = "ray[client]==2.60.0"  # requirements-ray.txt
# How often a task forwards progress and asks whether the sweep was cancelled (each is one small actor call).
POLL_SECONDS = 0.5


@dataclass(frozen=True, kw_only=True)
class RayCluster:
    """Where a sweep's cells train: a Ray address (`host:6379` on a cluster node, `ray://host:10001` from
    elsewhere, `auto`; None: Ray's own default, `$RAY_ADDRESS` or a fresh local instance) and the GPUs
    each run asks for (0: CPU tasks, 1 CPU each)."""

    address: Optional[str] = None
    gpus_per_run: float = 0.0

    def __post_init__(self) -> None:
        gpus = self.gpus_per_run
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus) or gpus < 0:
            raise ConfigError(f"gpus per run must be a number ≥ 0 (a fraction shares a GPU), got {gpus!r}")
        if self.address is not None and not self.address.strip():
            raise ConfigError("the Ray address is empty: give host:port, ray://host:port or auto")

    def describe(self) -> str:
        """'the Ray cluster at ADDRESS' for pages and messages (with the GPUs per run, when any)."""
        where = (
            f"the Ray cluster at {self.address}" if self.address else "the Ray cluster ($RAY_ADDRESS, else a local one)"
        )
        return where + (f", {self.gpus_per_run:g} GPU per run" if self.gpus_per_run else "")


def cluster_from_env() -> Optional[RayCluster]:
    """The cluster the dashboard submits to: `$DPSAT_RAY_ADDRESS` (and `$DPSAT_RAY_GPUS_PER_RUN`), or None
    when unset (sweeps then train on the server itself)."""
    address = os.environ.get(ADDRESS_ENV, "").strip()
    if not address:
        return None
    gpus = os.environ.get(GPUS_ENV, "0").strip() or "0"
    try:
        return RayCluster(address=address, gpus_per_run=float(gpus))
    except ValueError:
        raise ConfigError(f"${GPUS_ENV} must be a number ≥ 0, got {gpus!r}") from None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"the Ray executor needs Ray: pip install -r requirements-ray.txt ({RAY_PIN}), here and on the workers"
        ) from None
    return ray


def connect(cluster: RayCluster) -> Any:
    """The `ray` module, connected to `cluster` (an existing connection of this process is kept)."""
    ray = _ray()
    if not ray.is_initialized():
        kept = _signal_handlers()
        try:
            ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
        except Exception as exc:  # Ray raises many kinds here (connection, auth, a racing process): one line
            raise ConfigError(
                f"cannot reach {cluster.describe()}: {type(exc).__name__}: {exc} (a cluster with token "
                "authentication also needs RAY_AUTH_MODE=token and its token here, e.g. RAY_AUTH_TOKEN)"
            ) from None
        finally:
            _restore(kept)
    return ray


def _signal_handlers() -> dict[int, Any]:
    """This process's SIGINT and SIGTERM handlers (main thread only: elsewhere none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict[int, Any]) -> None:
    """Put back handlers that `ray.init` replaced (its SIGTERM handler aborts the driver: no clean stop)."""
    for signum, handler in handlers.items():
        if handler is not None:  # set again even when Python still names it: Ray installs its own in C
            signal.signal(signum, handler)


def capacity(ray: Any, cluster: RayCluster) -> int:
    """How many runs the cluster can train at once (each takes 1 CPU and `gpus_per_run` GPUs); a cluster
    with fewer GPUs than one run asks for is refused, since its tasks would wait forever."""
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0))
    if cluster.gpus_per_run:
        gpus = resources.get("GPU", 0)
        if gpus < cluster.gpus_per_run:
            raise ConfigError(
                f"each run asks for {cluster.gpus_per_run:g} GPU but the Ray cluster has {gpus:g}: "
                "lower --gpus-per-run or add GPU nodes"
            )
        slots = min(slots, int(gpus / cluster.gpus_per_run))
    return max(1, slots)


class _Channel:
    """One small actor per connection, shared by its sweeps (an actor is a process: starting one per sweep
    cost seconds): each sweep's cancel flag, which its tasks poll, and the progress they report."""

    def __init__(self) -> None:
        self._stopped: set[str] = set()
        self._reports: dict[str, list[tuple]] = {}

    def stop(self, sweep_id: str) -> None:
        self._stopped.add(sweep_id)

    def stopped(self, sweep_id: str) -> bool:
        return sweep_id in self._stopped

    def report(self, sweep_id: str, item: tuple) -> None:
        self._reports.setdefault(sweep_id, []).append(item)

    def drain(self, sweep_id: str) -> list[tuple]:
        return self._reports.pop(sweep_id, [])

    def forget(self, sweep_id: str) -> None:
        self._stopped.discard(sweep_id)
        self._reports.pop(sweep_id, None)


_CHANNELS: dict[str, Any] = {}  # Ray job id -> its channel actor
_CHANNELS_LOCK = threading.Lock()  # the dashboard may start two sweeps at once


def _channel(ray: Any) -> Any:
    """This connection's channel actor, started on first use (a new connection gets a new one)."""
    job = ray.get_runtime_context().get_job_id()
    with _CHANNELS_LOCK:
        if job not in _CHANNELS:
            _CHANNELS[job] = ray.remote(num_cpus=0)(_Channel).remote()
        return _CHANNELS[job]


def train_task(config: dict, dataset: Dataset, plan: RunPlan, key: int, channel: Any, sweep_id: str) -> TrainResult:
    """Train one cell on a worker (no store there): the device is resolved on this machine, progress and the
    cancel check go through `channel` at most every POLL_SECONDS."""
    import ray

    from .devices import resolve_device
    from .training import train

    cell = TrainConfig.from_dict(config)
    plan = dataclasses.replace(plan, device=str(resolve_device(plan.device)))
    last = {"report": 0.0, "stop": 0.0}
    stopped = [False]

    def forward(p: Progress) -> None:
        now = time.monotonic()
        if now - last["report"] >= POLL_SECONDS or "epochs_done" in p.metrics:
            last["report"] = now
            channel.report.remote(sweep_id, (key, p.stage, p.done, p.total, p.message, dict(p.metrics)))

    def should_stop() -> bool:
        now = time.monotonic()
        if not stopped[0] and now - last["stop"] >= POLL_SECONDS:
            last["stop"] = now
            stopped[0] = ray.get(channel.stopped.remote(sweep_id))
        return stopped[0]

    return train(cell, dataset=dataset, plan=plan, on_progress=forward, should_stop=should_stop)


def _task_error(exc: BaseException) -> str:
    """The worker's own exception when Ray wraps one, else Ray's (a lost worker or node)."""
    cause = getattr(exc, "cause", None)
    return f"on the Ray worker: {cause}" if cause is not None else f"{type(exc).__name__}: {exc}"


def sweep_on_ray(
    todo: Sequence[TrainConfig],
    store: RunStore,
    result: SweepResult,
    cluster: RayCluster,
    on_progress: ProgressFn,
    should_stop: Optional[StopFn],
) -> None:
    """Train `todo` as Ray tasks, at most as many at once as the cluster holds; each row is claimed when its
    task is submitted and written when it returns. Cancelling lets running tasks stop at their next check
    (stored as cancelled, with the ε of their releases) and submits no more."""
    from .claims import wait_for_claim
    from .data import load_config_dataset
    from .planning import plan_run
    from .runner import store_result
    from .store import ClaimHeld
    from .sweeps import CellOutcome, _cell_progress, _record, cell_finished, cell_label

    ray = connect(cluster)
    window = capacity(ray, cluster)
    task = ray.remote(train_task).options(num_cpus=1, num_gpus=cluster.gpus_per_run)
    channel, sweep_id = _channel(ray), uuid.uuid4().hex
    shipped: dict[int, tuple[Dataset, Any]] = {}  # one object-store copy per data set (kept alive, so ids stay)
    queued = list(enumerate(todo))
    running: dict[Any, tuple[int, TrainConfig, str]] = {}  # key, cell, run id
    finished, stopping = 0, False
    try:
        while queued or running:
            if stop_asked(should_stop) and not stopping:
                stopping = True
                channel.stop.remote(sweep_id)
            while queued and not stopping and len(running) < window:
                key, cell = queued.pop(0)
                try:
                    dataset = load_config_dataset(cell)
                    plan = plan_run(cell, dataset, store, device_here=False)
                except ConfigError as exc:  # as `run` refuses it: no row
                    _record(result, CellOutcome(run_id="", status="error", error=f"{cell_label(cell)}: {exc}"), cell)
                    continue
                if id(dataset) not in shipped:
                    shipped[id(dataset)] = (dataset, ray.put(dataset))
                data = shipped[id(dataset)][1]
                try:
                    run_id = store.create_run(cell)
                except ClaimHeld as held:  # trained elsewhere now: wait for it and count it as reused
                    other = wait_for_claim(store, held.run_id, should_stop=should_stop)
                    status = "done" if other.status == "done" else "error"
                    error = "" if status == "done" else f"{cell_label(cell)}: {other.reason}"
                    _record(result, CellOutcome(run_id=other.run_id, status=status, error=error, reused=True), cell)
                    continue
                ref = task.remote(cell.to_dict(), data, plan, key, channel, sweep_id)
                running[ref] = (key, cell, run_id)
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for _, _, run_id in running.values():  # the driver holds the claims of its tasks' rows
                store.heartbeat(run_id)
            for key, *report in ray.get(channel.drain.remote(sweep_id)):
                _cell_progress(on_progress, finished, len(todo), cell_label(todo[key]), key + 1)(Progress(*report))
            for ref in done:
                key, cell, run_id = running.pop(ref)
                label = cell_label(cell)
                try:
                    trained = ray.get(ref)
                except Exception as exc:  # the task raised, or its worker died: the cell fails, the sweep goes on
                    reason = _task_error(exc)
                    store.fail(run_id, reason)
                    outcome = CellOutcome(run_id=run_id, status="failed", error=f"{label}: {reason}")
                else:
                    record = store_result(store, run_id, trained)
                    error = f"{label}: {record.reason}" if record.status == "failed" else ""
                    outcome = CellOutcome(run_id=record.run_id, status=record.status, error=error)
                _record(result, outcome, cell)
                if outcome.status != "cancelled":
                    finished += 1
                    cell_finished(on_progress, finished, len(todo), label, key + 1)
    finally:
        for ref, (_, _, run_id) in running.items():  # the driver stopped early (Ctrl-C, an error): no row runs on
            ray.cancel(ref, force=True)
            store.fail(run_id, "interrupted: the sweep's driver stopped before this Ray task returned")
        channel.forget.remote(sweep_id)
    for _, cell in queued:  # stopped before these were submitted
        _record(result, CellOutcome(run_id="", status="skipped", error=""), cell)
    if stopping:
        result.cancelled = True
