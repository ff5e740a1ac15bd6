"""What the pages start in the background: sweeps and analyses, as jobs on the server's job manager."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import streamlit as st

from dpsat_core import DpsatError, SweepSpec, TrainConfig, tasks
from dpsat_core.analysis import ANALYSES
from dpsat_core.cluster import cluster_from_env
from dpsat_core.figures import run_label
from dpsat_core.job_process import run_in_process
from dpsat_core.methods import method_info
from dpsat_core.progress import no_progress
from dpsat_core.report import build_report, write_report
from dpsat_core.results import counted
from dpsat_core.sweeps import default_comparison, default_workers

from .state import get_jobs, get_store, session_owner
from .widgets import analysis_time_caption, not_being_analysed, plain_text

# What the Overview's panels draw, computed right after the one-click comparison so no further click is needed.
OVERVIEW_ANALYSES = ("slice", "adaptive")


def _submit(kind: str, label: str, task: partial) -> str:
    """Queue a `dpsat_core.tasks` task as a job in a process of its own (the server's reruns cannot slow it), and
    say so where the user is looking (a toast), not only in the job panel below."""
    job_id = get_jobs().submit(kind, label, task, owner=session_owner(), own_process=True)
    _started(label)
    return job_id


def _started(label: str) -> None:
    """Say that a job started where the user is looking (a toast), not only in the job panel below."""
    st.toast(
        f"Started: {plain_text(label)}. Progress is under **Jobs** at the bottom of the page.",
        icon=":material/hourglass_top:",
    )


def start_sweep(spec: SweepSpec, *, then_analyse: Sequence[str] = ()) -> str:
    """Check the grid against its data now, in a process of its own (errors reach the page; the calibrations go
    into the store for the job to read), then train it in the background: on the Ray cluster `$DPSAT_RAY_ADDRESS`
    names when it is set, else on this server's cores as `dpsat sweep` trains it (its default worker processes, one
    thread each)."""
    cluster = cluster_from_env()
    store = get_store()
    check = partial(tasks.check_sweep_task, spec=spec, store=store, device_here=cluster is None)
    refusal = run_in_process(check, no_progress, lambda: False)  # the server itself never imports torch
    if refusal is not None:
        raise refusal
    count = len(spec.cells())
    methods = ", ".join(method_info(m).label for m in spec.methods)
    label = f"{counted(count, 'run')} on {Path(spec.base.dataset).name}: {methods}"
    task = partial(
        tasks.sweep_task,
        spec=spec,
        store=store,
        cluster=cluster,
        workers=default_workers(),
        then_analyse=tuple(then_analyse),
    )
    return _submit("sweep", label, task)


def sweep_target() -> str:
    """Where sweeps from the pages train, in words for a caption: the Ray cluster `$DPSAT_RAY_ADDRESS` names,
    or this server."""
    try:
        cluster = cluster_from_env()
    except DpsatError as exc:
        return f"Sweeps cannot start: {plain_text(exc)}"
    if cluster is None:
        return "Runs train on this server."
    return f"Runs train on {plain_text(cluster.describe())} (set by `DPSAT_RAY_ADDRESS`); results are stored here."


def start_default_comparison(dataset: str = "digits") -> str:
    """The one-click comparison (`dpsat_core.sweeps.default_comparison`) in the background, then the
    analyses the Overview draws."""
    return start_sweep(default_comparison(dataset), then_analyse=OVERVIEW_ANALYSES)


def start_audit(config: TrainConfig, *, mode: str, canaries: int) -> str:
    """Check the audit against its data now (errors reach the page, nothing is stored), then train the audit
    run and bound its ε in the background."""
    from dpsat_core.auditing import plan_audit  # torch and Opacus: only when an audit starts

    plan = plan_audit(config, mode=mode, canaries=canaries)
    method = method_info(plan.config.method).label
    label = f"{mode} audit of {method} on {Path(config.dataset).name}, {canaries} canaries"
    return _submit("audit", label, partial(tasks.audit_task, plan=plan, store=get_store()))


def start_probe(config: TrainConfig, methods: Sequence[str]) -> str:
    """Measure the step cost of `methods` (and their baselines) side by side on `config`'s setting."""
    task = partial(tasks.step_cost_task, store=get_store(), config=config, methods=tuple(methods))
    return _submit("probe", f"step cost of {', '.join(methods)}", task)


def _analyses_label(work: Sequence[tuple[str, str]]) -> str:
    """'Hessian spectrum, Noise robustness for 4 runs': what an analysis job computes."""
    kinds = dict.fromkeys(kind for _, kind in work)
    runs = dict.fromkeys(run_id for run_id, _ in work)
    return f"{', '.join(ANALYSES[kind].label for kind in kinds)} for {counted(len(runs), 'run')}"


def start_analyses(run_ids: Sequence[str], kinds: Sequence[str]) -> Optional[str]:
    """Compute (and store) the given analyses (registry names) for each run at their default settings; already
    stored ones are not recomputed, and pairs a queued or running job of this server covers are left to it (None:
    all of them were)."""
    work = [(run_id, kind) for run_id in run_ids for kind in kinds]
    store = get_store()
    job_id = get_jobs().submit_new_work(
        "analysis",
        _analyses_label,
        lambda part: partial(tasks.analyses_task, store=store, work=part),
        work,
        owner=session_owner(),
        own_process=True,
    )
    if job_id is None:
        st.toast("Already being computed by a running job: progress is under **Jobs**.")
    else:
        _started(get_jobs().get(job_id).label)
    return job_id


def offer_analyses(lacking: dict[str, list[str]], runs: Sequence, *, label: str, key: str) -> None:
    """Under a page's figures: the time estimate and the button (`label` for N runs) that computes `lacking`
    ({analysis kind: run ids without it} among `runs`), less what a running job already covers; nothing when
    nothing is left."""
    left = not_being_analysed({kind: ids for kind, ids in lacking.items() if ids})
    missing = list(dict.fromkeys(run_id for ids in left.values() for run_id in ids))
    if not missing:
        return
    analysis_time_caption({kind: len(ids) for kind, ids in left.items()}, runs)
    if st.button(f"{label} for {counted(len(missing), 'run')}", key=key):
        start_analyses(missing, list(left))


def start_line(run_a: str, run_b: str) -> str:
    """Loss along the straight line between two runs' weights."""
    store = get_store()
    label = f"line {run_label(store.get(run_a))} → {run_label(store.get(run_b))}"
    return _submit("analysis", label, partial(tasks.line_task, store=store, run_a=run_a, run_b=run_b))


def report_file(fmt: str, setting: str) -> bytes:
    """The pilot report for one setting as HTML or PDF bytes (built on click, from the store)."""
    with tempfile.TemporaryDirectory() as folder:
        files = write_report(build_report(get_store(), setting=setting), folder)
        if fmt == "pdf":
            if files.pdf is None:
                raise DpsatError(f"the PDF could not be made ({files.note}); the HTML report works")
            return files.pdf.read_bytes()
        return files.html.read_bytes()
