"""How long analyses will take, told before the click: measured from the compute times of earlier analyses of the
same kinds, data set and model in the run store, never a constant.

`estimate_time` is the pure part (past wall times and the work in, an estimate with its range out);
`analysis_estimate` reads the past wall times from the store; `describe_estimate` says it in words, as an estimate,
for the machine the earlier analyses ran on.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from .analysis import ANALYSES, analysis_kind
from .results import RunRecord, counted
from .store import RunStore


@dataclass(frozen=True, kw_only=True)
class TimeEstimate:
    """Seconds some analyses should take: `seconds` is Σ runs × the median earlier wall time of each kind, `low` and
    `high` the same sums over the fastest and slowest earlier ones; `unknown` lists the kinds with no earlier
    analysis (their time is in none of the three); `measured` counts the earlier analyses used."""

    seconds: float
    low: float
    high: float
    measured: int
    unknown: tuple[str, ...]


def estimate_time(past: Mapping[str, Sequence[float]], work: Mapping[str, int]) -> TimeEstimate:
    """The time of `work` ({kind: runs to analyse}) from `past` ({kind: earlier wall times in seconds}): each
    kind's median (and fastest, slowest) earlier time, times its runs, summed over kinds."""
    seconds = low = high = 0.0
    measured, unknown = 0, []
    for kind, runs in work.items():
        if runs < 0:
            raise ValueError(f"runs to analyse must be ≥ 0, got {runs} for {kind!r}")
        times = [t for t in past.get(kind, ()) if t >= 0]
        if runs == 0:
            continue
        if not times:
            unknown.append(kind)
            continue
        seconds += runs * statistics.median(times)
        low += runs * min(times)
        high += runs * max(times)
        measured += len(times)
    return TimeEstimate(seconds=seconds, low=low, high=high, measured=measured, unknown=tuple(unknown))


def analysis_estimate(store: RunStore, work: Mapping[str, int], runs: Sequence[RunRecord]) -> TimeEstimate:
    """`estimate_time` for `work` (kinds whose settings all have defaults) on `runs`, from the analyses stored at
    the default settings for finished runs of the same data sets and models (the model's size sets the cost; other
    runs' times would mislead)."""
    alike = {(r.config.dataset, r.config.model) for r in runs}
    similar = {r.run_id for r in store.list_runs(status="done") if (r.config.dataset, r.config.model) in alike}
    past = {}
    for kind in work:
        spec = analysis_kind(kind)
        stored = store.get_analyses(similar, kind, spec.key(spec.settings({}))) if similar else {}
        past[kind] = [float(result["seconds"]) for result in stored.values() if "seconds" in result]
    return estimate_time(past, work)


def _duration(seconds: float) -> str:
    """'40 s', '7 min', '1.5 h': rounded as far as an estimate deserves."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _mid_sentence(label: str) -> str:
    """An analysis label as it reads inside a sentence: 'adaptive sharpness (…)'; a name (Hessian) keeps its capital."""
    return label if label.startswith("Hessian") else label[:1].lower() + label[1:]


def describe_estimate(estimate: TimeEstimate) -> str:
    """One line for a button's caption: the estimate with its range and what it rests on, or why there is none."""
    unknown = ", ".join(_mid_sentence(ANALYSES[kind].label) for kind in estimate.unknown)
    if not (estimate.measured or estimate.unknown):
        return "Nothing left to compute."
    if not estimate.measured:
        return (
            f"Time unknown until the first analysis finishes: no {unknown} has been computed for this data set and "
            "model at default settings yet."
        )
    rest = f"; plus {unknown}, whose time is unknown until its first analysis finishes" if estimate.unknown else ""
    spread = (
        ""
        if _duration(estimate.low) == _duration(estimate.high)
        else f" ({_duration(estimate.low)} to {_duration(estimate.high)}: every run at the fastest / slowest earlier "
        "time)"
    )
    earlier = "1 earlier analysis" if estimate.measured == 1 else f"{estimate.measured:,} earlier analyses"
    return (
        f"Estimated time: about {_duration(estimate.seconds)}{spread}{rest}. An estimate from the compute time of "
        f"{earlier} (loading and start-up not included) of the same kinds for this data set and model at default "
        f"settings, on the machine that ran them (this server: {counted(os.cpu_count() or 1, 'CPU core')}); other "
        "jobs running at once slow it."
    )
