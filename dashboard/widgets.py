"""UI pieces the pages share: job panel, setting and run pickers, method legend, error display."""

from __future__ import annotations

import re
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dpsat_core import RunRecord, method_info, method_table
from dpsat_core.analysis import DEFAULT_SAMPLES
from dpsat_core.caveats import TRAINING_DATA, randomness_note
from dpsat_core.compare import (
    CellStats,
    Comparison,
    WithheldRatio,
    conclusion,
    describe_setting,
    diverged_left_out,
    diverged_note,
    interval_scope,
    one_class_note,
    ratio_number,
    runs_by_setting,
    setting_key,
    withheld_reason,
)
from dpsat_core.errors import DpsatError
from dpsat_core.estimates import analysis_estimate, describe_estimate
from dpsat_core.export import MIME, figure_bytes, find_chromium
from dpsat_core.figures import run_label
from dpsat_core.results import counted, format_number

from .state import get_jobs, get_store, is_operator, may_touch, session_owner, shown_source

# every open tab reruns its job panel this often while a job runs; in the browser each refresh costs CPU too (with
# four tabs on the server's machine, Chromium's renderers took ~0.5 cores at "1s", slowing the job they watch)
JOB_PANEL_REFRESH = "2s"
CANCELLING = "cancelling…"  # a job's status between Cancel and its end
ANALYSED_ROWS = f"the first {DEFAULT_SAMPLES:,} training examples"  # what every analysis is evaluated on


def download(where: DeltaGenerator, label: str, build: Callable[[], bytes], file_name: str, *, key: str) -> None:
    """A download button whose file is built by `build` only when clicked (MIME type from the extension)."""
    where.download_button(
        label, data=build, file_name=file_name, mime=MIME[file_name.rsplit(".", 1)[1]], on_click="ignore", key=key
    )


def chart(fig: go.Figure, *, key: str, where: Optional[DeltaGenerator] = None) -> None:
    """Draw a library figure with PNG/SVG/PDF/HTML downloads (named after `key`), each built only when clicked."""
    with where if where is not None else nullcontext():
        st.plotly_chart(fig, key=key)
        formats = ("png", "svg", "pdf", "html") if find_chromium() else ("html",)
        with st.popover("Download", key=f"{key}-download"):
            for fmt in formats:
                download(st, fmt.upper(), partial(figure_bytes, fig, fmt), f"{key}.{fmt}", key=f"{key}-{fmt}")
            if len(formats) == 1:
                st.caption("PNG/SVG/PDF need Chromium (apt-get install chromium, or set BROWSER_PATH)")


# Characters that start Markdown (links, images, emphasis, code, HTML, tables, math, colour directives) in
# what Streamlit renders: st.error/info/success/caption/toast bodies, progress texts and widget labels.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<#|~$])")


def plain_text(text: object) -> str:
    """`text` (a file, column or data-set name, a job label, or a message quoting one) made inert for Streamlit's
    Markdown: those characters backslash-escaped and line breaks flattened, so a CSV column named
    `![b](http://host/leak.png)` reads as typed instead of making the browser fetch an image."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).splitlines()))


def show_error(exc: Exception) -> None:
    """One clear line for input errors; anything else also names its type. User text in it stays plain text."""
    st.error(plain_text(exc if isinstance(exc, DpsatError) else f"{type(exc).__name__}: {exc}"))


def wrapped_table(rows: Sequence[dict[str, Any]]) -> None:
    """A static table whose cells wrap, so a sentence column stays readable in the page's width without a
    horizontal scrollbar (a dataframe cuts it off); every cell plain text, since `st.table` renders Markdown, and
    yes/no for a flag rather than Python's True/False."""
    st.table(pd.DataFrame(rows).map(_table_text), hide_index=True)


def _table_text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return plain_text(value)


def methods_table() -> None:
    wrapped_table(method_table())


BLANK = "—"  # an empty cell: no target ε (SGD, σ runs), no ρ, no ε spent, no spread over a single seed


def data_table(frame: pd.DataFrame, **options: Any) -> None:
    """A sortable table without its index, a missing value shown as `BLANK` (Streamlit writes "None")."""
    st.dataframe(frame, hide_index=True, placeholder=BLANK, **options)


def _fixed(digits: int) -> Any:
    """A number column shown with a fixed count of decimals (no 92.1 beside 92.13)."""
    return st.column_config.NumberColumn(format=f"%.{digits}f")


def cell_table(stats: Sequence[CellStats]) -> None:
    """One row per cell: method (with ρ), privacy level, seeds, test accuracy mean ± std, validation
    accuracy (what ρ, lr or C are chosen by), ε spent, wall time."""
    rows = [
        {
            "method": c.name,
            "privacy": c.privacy,
            "seeds": c.seeds,
            "test accuracy %": 100 * c.accuracy_mean,
            "± std": None if c.accuracy_std is None else 100 * c.accuracy_std,
            "validation %": None if c.validation_mean is None else 100 * c.validation_mean,
            "ε spent": format_number(c.epsilon_spent_mean, ".3f"),  # ∞ for runs without noise
            "wall s / epoch": c.wall_seconds_per_epoch,
        }
        for c in stats
    ]
    columns = {name: _fixed(2) for name in ("test accuracy %", "± std", "validation %")}
    data_table(pd.DataFrame(rows), column_config={**columns, "wall s / epoch": _fixed(3)})


def _ratio_cell(c: Comparison) -> str:
    """'1.12 (0.95 to 1.31)': a comparison's adaptive sharpness ratio and its interval, short enough for a table
    cell; '2 of 3 pairs' where fewer pairs than the accuracy's were analysed; why none is shown where withheld."""
    ratio = c.sharpness_ratio
    if ratio is None:
        return "not analysed"
    if isinstance(ratio, WithheldRatio):
        return f"not shown: {withheld_reason(ratio)}"
    pairs = f", {ratio.n_pairs} of {c.accuracy.n_pairs} pairs" if ratio.n_pairs < c.accuracy.n_pairs else ""
    if ratio.ci_low is None or ratio.ci_high is None:
        return f"{ratio_number(ratio.ratio)} (no interval{pairs or ': 1 pair'})"
    return f"{ratio_number(ratio.ratio)} ({ratio_number(ratio.ci_low)} to {ratio_number(ratio.ci_high)}{pairs})"


def comparison_table(compared: Sequence[Comparison]) -> None:
    """One row per compared cell: paired gain in points with its 95% interval, pairs, and the reading."""
    if not compared:
        st.caption("No method has runs at the same privacy level as its baseline yet.")
        return
    rows = [
        {  # the reading right after the numbers it reads: a narrow page shows it without scrolling
            "method": f"{method_info(c.method).label} vs {method_info(c.baseline).label}",
            "privacy": c.privacy,
            "ρ": f"{c.rho:g}",
            "gain (points)": f"{c.gain_points:+.2f}",
            "95% CI": BLANK if c.ci_points[0] is None else f"{c.ci_points[0]:+.2f} to {c.ci_points[1]:+.2f}",
            "reading": conclusion(c),
            "adaptive sharpness × (95% CI)": _ratio_cell(c),
            "seed pairs": c.accuracy.n_pairs,
            "backward passes ×": f"{c.backward_passes_ratio:g}",
        }
        for c in compared
    ]
    wrapped_table(rows)
    st.caption(
        "Adaptive sharpness ×: the method's adaptive (scale-invariant) λ_max over its baseline's, the geometric "
        "mean over seed pairs with its 95% interval."
    )
    scope = interval_scope(compared)
    if scope:
        st.caption(scope)


def job_panel() -> None:
    """The job panel, refreshed every `JOB_PANEL_REFRESH` only while a job is active: an idle page costs no CPU.
    (A job started elsewhere shows up at this page's next rerun.)"""
    active = any(j.active for j in get_jobs().jobs())
    st.fragment(_job_panel, run_every=JOB_PANEL_REFRESH if active else None)()


def _job_panel() -> None:
    """Progress of the server's jobs, with Cancel; reruns the page when a watched job finishes."""
    jobs = get_jobs().jobs()
    watched: set = st.session_state.setdefault("watched_jobs", set())
    finished_now = [j for j in jobs if j.job_id in watched and not j.active]
    for job in finished_now:
        watched.discard(job.job_id)
    watched.update(j.job_id for j in jobs if j.active)
    if not jobs:
        return
    title, clear = st.columns([6, 1])
    title.markdown("**Jobs**")
    # every session sees every job; it cancels and clears only its own (an operator: all)
    acting_for = None if is_operator() else session_owner()
    if any(not j.active and may_touch(j.owner) for j in jobs) and clear.button("Clear finished", key="jobs-clear"):
        get_jobs().clear_finished(owner=acting_for)
        jobs = get_jobs().jobs()
    for job in jobs[:6]:
        extra = []
        if job.metrics.get("epsilon_spent") is not None:
            extra.append(f"ε spent {format_number(job.metrics['epsilon_spent'], '.2f')}")
        if job.metrics.get("test_accuracy") is not None:
            extra.append(f"accuracy {100 * job.metrics['test_accuracy']:.1f}%")
        if extra and "epochs_done" in job.metrics:  # the numbers of the last finished epoch, not the one under way
            extra[0] = f"after epoch {job.metrics['epochs_done']}: {extra[0]}"
        run = f" · {job.metrics['run']}" if job.active and "run" in job.metrics else ""
        status = "" if job.message.startswith(job.status) or job.message == "finished" else f" · {job.status}"
        if job.cancelling:  # from the job itself, so every tab says so until the job ends as cancelled
            status = f" · {CANCELLING}"
        whose = "" if job.owner == session_owner() else " · another session's"
        text = f"{job.label}{whose}{status}{run} · {job.message}" + (f" · {', '.join(extra)}" if extra else "")
        cols = st.columns([6, 1])
        cols[0].progress(job.fraction, text=plain_text(text))
        if job.active and may_touch(job.owner):
            # a callback: the cancel is recorded before this panel reruns, so the click's own rerun shows it
            cols[1].button(
                "Cancelling…" if job.cancelling else "Cancel",
                key=f"cancel-{job.job_id}",
                disabled=job.cancelling,
                on_click=get_jobs().cancel,
                args=(job.job_id,),
                kwargs={"by": acting_for},
            )
        if job.error:
            st.error(plain_text(f"{job.label}: {job.error}"))
    if finished_now:
        st.rerun(scope="app")


def not_being_analysed(lacking: dict[str, list[str]]) -> dict[str, list[str]]:
    """`lacking` ({analysis kind: run ids without it}) less the runs a queued or running job of this server will
    analyse for that kind, saying how many runs that leaves to the job, so a page never offers work twice."""
    pending = get_jobs().pending_work()
    covered = {run_id for kind, ids in lacking.items() for run_id in ids if (run_id, kind) in pending}
    if covered:
        st.caption(f"{counted(len(covered), 'run')} already being analysed by a running job (progress under Jobs).")
    left = {kind: [i for i in ids if (i, kind) not in pending] for kind, ids in lacking.items()}
    return {kind: ids for kind, ids in left.items() if ids}


def analysis_time_caption(work: dict[str, int], runs: Sequence[RunRecord]) -> None:
    """Before an analysis button: how long `work` ({kind: runs to analyse}) should take, measured from earlier
    analyses in the store (`estimates.analysis_estimate`), or why that is not known yet."""
    st.caption(plain_text(describe_estimate(analysis_estimate(get_store(), work, runs))))


def randomness_caption(records: Sequence[RunRecord]) -> None:
    """Say what the shown runs' randomness means, once per distinct note: "seeded noise: for research, not for
    release" for private research-mode runs (`caveats.randomness_note`)."""
    for note in dict.fromkeys(n for n in map(randomness_note, (r.config for r in records)) if n):
        st.caption(f"Private runs shown: {note}.")


def training_data_caption(what: str) -> None:
    """One line under a page's heading: `what` is computed on training data, not covered by ε."""
    st.caption(f"{what}: {TRAINING_DATA}.")


def _latest(runs: Sequence[RunRecord]) -> RunRecord:
    """The most recently finished of `runs` (a finished run's row was last updated when it finished)."""
    return max(runs, key=lambda r: r.updated)


def setting_picker(records: Sequence[RunRecord], *, key: str) -> list[RunRecord]:
    """Pick a data set, then one comparable setting; returns the finished runs of that setting (and says what
    their randomness means). Opens on the data set and setting of the most recently finished run, where a user who
    just trained looks; a choice made here sticks (widget keys)."""
    done = [r for r in records if r.status == "done" and not r.config.audit]  # audit runs are never compared
    datasets = sorted({r.config.dataset for r in done})
    if not datasets:
        return []
    newest = _latest(done).config.dataset
    dataset = st.selectbox(
        "Data set", datasets, index=datasets.index(newest), format_func=shown_source, key=f"{key}-dataset"
    )
    ordered = runs_by_setting([r for r in done if r.config.dataset == dataset])  # diverged runs left out
    if not ordered:  # every finished run of this data set diverged
        st.caption(plain_text(diverged_note(sum(r.diverged for r in done if r.config.dataset == dataset))))
        return []
    chosen = 0
    if len(ordered) > 1:
        labels = [f"{describe_setting(rs[0])} ({counted(len(rs), 'run')})" for rs in ordered]
        newest_setting = setting_key(_latest([r for rs in ordered for r in rs]))
        chosen = st.selectbox(
            "Setting (runs are compared only within one)",
            range(len(ordered)),
            index=next(i for i, rs in enumerate(ordered) if setting_key(rs[0]) == newest_setting),
            format_func=labels.__getitem__,
            key=f"{key}-setting-{dataset}",  # its own widget per data set: labels never outlive a switch
        )
    for note in (
        diverged_note(diverged_left_out(done, setting_key(ordered[chosen][0]))),
        one_class_note(ordered[chosen]),
    ):
        if note:
            st.caption(plain_text(note))
    randomness_caption(ordered[chosen])
    return ordered[chosen]


def comparable_runs_or_stop(records: Sequence[RunRecord], *, key: str) -> list[RunRecord]:
    """`setting_picker`, or, with no finished run, a pointer to the Train page and the end of the page."""
    runs = setting_picker(records, key=key)
    if not runs:
        st.info("No finished runs yet: start some on **Train & sweep**.")
        job_panel()
        st.stop()
    return runs


def run_multiselect(
    records: Sequence[RunRecord], *, key: str, default: Optional[Sequence[RunRecord]] = None, label: str = "Runs"
) -> list[RunRecord]:
    """Pick runs by their figure label (method, ε, seed)."""
    by_label = {f"{run_label(r)} · {r.run_id}": r for r in records}
    default_labels = [lbl for lbl, r in by_label.items() if default is None or r in default]
    chosen = st.multiselect(label, list(by_label), default=default_labels, key=key)
    return [by_label[c] for c in chosen]


def baseline_pair(records: Sequence[RunRecord], epsilon: Optional[float]) -> tuple[int, int]:
    """Indices in `records` of a baseline run and its compared method's run at the same ε and seed
    (e.g. DP-SGD → DP-SAT at seed 0): the natural default for the line between two runs."""
    for i, a in sorted(enumerate(records), key=lambda ir: ir[1].config.seed):
        for j, b in enumerate(records):
            same = (b.target_epsilon, b.config.seed) == (a.target_epsilon, a.config.seed)
            if method_info(b.method).baseline == a.method and same and a.target_epsilon in (epsilon, None):
                return i, j
    return 0, min(1, len(records) - 1)


def one_run_per_method(records: Sequence[RunRecord], epsilon: Optional[float]) -> list[RunRecord]:
    """The lowest-seed run of each method at ε (non-private methods at any ε)."""
    picked: dict[str, RunRecord] = {}
    for r in sorted(records, key=lambda r: r.config.seed):
        if r.target_epsilon in (epsilon, None) and r.method not in picked:
            picked[r.method] = r
    return list(picked.values())
