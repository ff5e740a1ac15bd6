"""Group stored runs into comparable cells (method × target ε over seeds) and say what they show.

Runs are comparable when everything but method, ε, σ, ρ and seed is equal: the
"setting". Pages, the CLI and reports use these numbers, never re-derive them.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .methods import METHODS, compared_methods, method_info
from .results import AdaptiveSharpness, HessianSpectrum, RunRecord

_VARYING = ("method", "epsilon", "noise_multiplier", "rho", "seed", "device", "max_physical_batch_size")


def setting_key(record: RunRecord) -> str:
    """Hash of the settings shared by comparable runs (data, model, epochs, batch, lr, C, δ, accountant)."""
    data = {k: v for k, v in record.config.to_dict().items() if k not in _VARYING}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def runs_by_setting(records: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Finished runs grouped by `setting_key`, the largest group first."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.status == "done":
            groups[setting_key(r)].append(r)
    return sorted(groups.values(), key=len, reverse=True)


def describe_setting(record: RunRecord) -> str:
    c = record.config
    return (
        f"{c.dataset}: {c.epochs} epochs, batch {c.batch_size}, lr {c.lr:g}, C {c.clip_norm:g}, "
        f"momentum {c.momentum:g}, {c.accountant.upper()}"
    )


def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True, kw_only=True)
class CellStats:
    """One method at one target ε (None for non-private methods), over seeds."""

    method: str
    target_epsilon: Optional[float]
    seeds: int
    accuracy_mean: float
    accuracy_std: Optional[float]
    epsilon_spent_mean: Optional[float]
    seconds_per_epoch: float
    lambda_max_mean: Optional[float]
    lambda_max_std: Optional[float]
    trace_mean: Optional[float]
    trace_std: Optional[float]
    adaptive_mean: Optional[float]  # adaptive (scale-invariant) λ_max
    adaptive_std: Optional[float]
    run_ids: tuple[str, ...]

    @property
    def label(self) -> str:
        return method_info(self.method).label


def group_runs(
    records: Sequence[RunRecord],
    spectra: Optional[Mapping[str, HessianSpectrum]] = None,
    adaptive: Optional[Mapping[str, AdaptiveSharpness]] = None,
) -> list[CellStats]:
    """Finished runs grouped by (method, target ε), in method order then ε; spectra and adaptive sharpness
    by run id when known."""
    spectra, adaptive = spectra or {}, adaptive or {}
    cells: dict[tuple[str, Optional[float]], list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.status == "done" and r.summary is not None and r.test_accuracy is not None:
            cells[(r.method, r.config.epsilon)].append(r)
    order = list(METHODS)
    out = []
    for (method, eps), runs in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1] or 0.0)):
        acc_mean, acc_std = _mean_std([r.test_accuracy for r in runs])
        eps_mean, _ = _mean_std([r.epsilon_spent for r in runs if r.epsilon_spent is not None])
        lam_mean, lam_std = _mean_std([spectra[r.run_id].lambda_max for r in runs if r.run_id in spectra])
        tr_mean, tr_std = _mean_std([spectra[r.run_id].trace for r in runs if r.run_id in spectra])
        ad_mean, ad_std = _mean_std([adaptive[r.run_id].lambda_max for r in runs if r.run_id in adaptive])
        out.append(
            CellStats(
                method=method,
                target_epsilon=eps,
                seeds=len(runs),
                accuracy_mean=acc_mean,
                accuracy_std=acc_std,
                epsilon_spent_mean=eps_mean,
                seconds_per_epoch=statistics.fmean(r.summary.seconds_per_epoch for r in runs),
                lambda_max_mean=lam_mean,
                lambda_max_std=lam_std,
                trace_mean=tr_mean,
                trace_std=tr_std,
                adaptive_mean=ad_mean,
                adaptive_std=ad_std,
                run_ids=tuple(r.run_id for r in runs),
            )
        )
    return out


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """A method against its baseline (from the registry) at one target ε, with the honest caveat."""

    method: str
    baseline: str
    target_epsilon: float
    accuracy_gain_points: float
    lambda_max_change: Optional[float]  # relative: −0.12 means 12% flatter
    time_ratio: float
    within_seed_spread: Optional[bool]  # None when there is only one seed
    text: str


def compare_at(stats: Sequence[CellStats], epsilon: float, method: str) -> Optional[Comparison]:
    """`method` vs its registered baseline at target ε, or None when either is missing (or it has no baseline)."""
    baseline = method_info(method).baseline
    if baseline is None:
        return None
    cells = {(c.method, c.target_epsilon): c for c in stats}
    a, b = cells.get((method, epsilon)), cells.get((baseline, epsilon))
    if a is None or b is None:
        return None
    gain = 100 * (a.accuracy_mean - b.accuracy_mean)
    lam = None
    if a.lambda_max_mean is not None and b.lambda_max_mean:
        lam = a.lambda_max_mean / b.lambda_max_mean - 1
    ratio = a.seconds_per_epoch / b.seconds_per_epoch if b.seconds_per_epoch else math.nan
    spread = None
    if a.accuracy_std is not None and b.accuracy_std is not None:
        spread = abs(gain) <= 100 * math.hypot(a.accuracy_std, b.accuracy_std)
    parts = [f"At ε={epsilon:g}, {a.label}: {gain:+.1f} points over {b.label}"]
    parts.append(f"λ_max {100 * lam:+.1f}%" if lam is not None else "λ_max not computed")
    parts.append(f"{ratio:.1f}× time")
    caveat = {
        None: "one seed only: the spread is unknown",
        True: "within the seed spread: yes",
        False: "within the seed spread: no",
    }[spread]
    return Comparison(
        method=method,
        baseline=baseline,
        target_epsilon=epsilon,
        accuracy_gain_points=gain,
        lambda_max_change=lam,
        time_ratio=ratio,
        within_seed_spread=spread,
        text=", ".join(parts) + f"; {caveat}",
    )


def comparisons_at(stats: Sequence[CellStats], epsilon: float) -> list[Comparison]:
    """Every private method with a baseline, compared at target ε (registry order; missing cells skipped)."""
    return [c for m in compared_methods(private=True) if (c := compare_at(stats, epsilon, m.name))]


def private_epsilons(stats: Sequence[CellStats]) -> list[float]:
    return sorted({c.target_epsilon for c in stats if c.target_epsilon is not None})


def best_epsilon(stats: Sequence[CellStats]) -> Optional[float]:
    """The target ε that the most private methods were run at (the middle one on ties): the default to compare at."""
    epsilons = private_epsilons(stats)
    if not epsilons:
        return None
    coverage = {e: sum(1 for c in stats if c.target_epsilon == e) for e in epsilons}
    most = max(coverage.values())
    tied = [e for e in epsilons if coverage[e] == most]
    return tied[len(tied) // 2]
