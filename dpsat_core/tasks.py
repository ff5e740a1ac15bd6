"""The work the dashboard's background jobs do, as module-level functions so a job can run in its own process.

Each task is `(on_progress, should_stop, *, inputs…) -> result`: the caller binds the
inputs with `functools.partial` and submits the partial to the job manager with
`own_process=True`. Inputs and results are plain picklable values (configs, specs, a
`RunStore`, which is only its path). Heavy modules are imported inside the tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from .errors import DpsatError
from .progress import Progress, ProgressFn, StopFn, check_stop
from .store import RunStore

if TYPE_CHECKING:
    from .auditing import AuditOutcome, AuditPlan
    from .cluster import RayCluster
    from .config import TrainConfig
    from .results import CostProbe, Slice
    from .sweeps import SweepResult, SweepSpec


def check_sweep_task(
    on_progress: ProgressFn, should_stop: StopFn, *, spec: SweepSpec, store: RunStore, device_here: bool
) -> Optional[DpsatError]:
    """`sweeps.check_sweep` (calibrations stored for the job to read), its refusal returned rather than raised: the
    server checks a grid in a process started from the fork server, so it never imports torch and Opacus itself."""
    from .sweeps import check_sweep

    try:
        check_sweep(spec, store, device_here=device_here)
    except DpsatError as exc:
        return exc
    return None


def sweep_task(
    on_progress: ProgressFn,
    should_stop: StopFn,
    *,
    spec: SweepSpec,
    store: RunStore,
    cluster: Optional[RayCluster] = None,
    workers: int = 1,
    then_analyse: Sequence[str] = (),
) -> SweepResult:
    """Train the grid (on `cluster` when given, else on `workers` local processes as `sweeps.sweep` does); a failed
    cell fails the job with its reason (finished cells stay stored); then the analyses `then_analyse` names for
    every run and the step cost of its methods."""
    from .probe import step_cost
    from .sweeps import sweep

    result = sweep(spec, store, workers=workers, cluster=cluster, on_progress=on_progress, should_stop=should_stop)
    if result.problems():
        raise DpsatError(result.problems())
    if then_analyse and not result.cancelled:
        work = [(run_id, kind) for kind in then_analyse for run_id in result.run_ids]
        analyses_task(on_progress, should_stop, store=store, work=work)
        step_cost(store, spec.base, spec.methods, on_progress=on_progress, should_stop=should_stop)
    return result


def analyses_task(
    on_progress: ProgressFn, should_stop: StopFn, *, store: RunStore, work: Sequence[tuple[str, str]]
) -> None:
    """Compute and store each (run id, analysis kind) not stored yet, reporting 'k of n'."""
    from .analysis import ANALYSES, analyze
    from .sweeps import cell_label

    for i, (run_id, kind) in enumerate(work):
        check_stop(should_stop)
        # the run named as training progress names its cell ("DP-SAT, ε = 3, ρ = 0.05, seed 0")
        what = f"{ANALYSES[kind].label} of {cell_label(store.get(run_id).config)} ({i + 1} of {len(work)})"
        on_progress(Progress("analysis", i, len(work), what))
        analyze(store, run_id, kind, should_stop=should_stop)
    on_progress(Progress("analysis", len(work), len(work), "analyses stored"))


def audit_task(on_progress: ProgressFn, should_stop: StopFn, *, plan: AuditPlan, store: RunStore) -> AuditOutcome:
    """Train the checked audit run and bound its ε; a run that failed fails the job with its reason."""
    from .auditing import run_audit

    outcome = run_audit(plan, store, on_progress=on_progress, should_stop=should_stop)
    if outcome.result is None and outcome.record.status != "cancelled":
        raise DpsatError(f"the audit run {outcome.record.status}: {outcome.record.reason}")
    return outcome


def step_cost_task(
    on_progress: ProgressFn, should_stop: StopFn, *, store: RunStore, config: TrainConfig, methods: Sequence[str]
) -> Optional[CostProbe]:
    """Measure the step cost of `methods` (and their baselines) side by side on `config`'s setting."""
    from .probe import step_cost

    return step_cost(store, config, methods, on_progress=on_progress, should_stop=should_stop)


def line_task(
    on_progress: ProgressFn, should_stop: StopFn, *, store: RunStore, run_a: str, run_b: str
) -> Optional[Slice]:
    """Loss along the straight line between two runs' weights (stored as an analysis of run A)."""
    from .analysis import run_line

    return run_line(store, run_a, run_b)
