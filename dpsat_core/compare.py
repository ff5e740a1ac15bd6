"""Group stored runs into comparable cells and compare each method with its baseline, paired by seed.

Runs are comparable when everything but method, ε, σ, ρ and seed is equal: the
"setting". A cell is one method at one privacy level (target ε, or σ for runs
trained with σ) and one ρ, over seeds; duplicate runs of one config count once.
At the same seed a method and its baseline see the same batches and noise draws
(research mode; in release mode only the same initial weights), so the gain is the
mean *paired* difference with a Student-t interval whose standard error adds to the
seed-to-seed spread the sampling error of the shared test set (`test_set_error`):
counted from the test examples the two models of a pair disagree on where both runs
stored which examples they got right, else the least the accuracies allow. Runs that diverged
(`divergence.py`) are left out unless asked (`include_diverged`). Pages, the CLI
and reports use these numbers, never re-derive them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .caveats import TRAINING_DATA
from .config import ADDED_LATER, TrainConfig
from .correctness import discordant
from .divergence import DIVERGENCE_FACTOR
from .errors import StoreError
from .methods import METHODS, compared_methods, method_info
from .results import DEFAULT_SAMPLES, AdaptiveSharpness, CostProbe, HessianSpectrum, MethodCost, RunRecord, counted
from .student_t import t_quantile

_VARYING = ("method", "epsilon", "noise_multiplier", "rho", "seed", "device", "max_physical_batch_size")
CONFIDENCE = 0.95


def setting_key(run: RunRecord | TrainConfig) -> str:
    """Hash of the settings shared by comparable runs (data, model, epochs, batch, lr, C, δ, accountant)."""
    config = run.config if isinstance(run, RunRecord) else run.normalized()
    data = {
        k: v
        for k, v in config.to_dict().items()
        if k not in _VARYING and not (k in ADDED_LATER and v == ADDED_LATER[k])  # keys stay as they were
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def latest_per_config(records: Sequence[RunRecord], *, include_diverged: bool = False) -> list[RunRecord]:
    """Finished runs with duplicates of one config (same hash) reduced to the newest, oldest first; diverged
    runs only when asked; audit runs (trained on canaries) never, so no comparison, page or report counts them."""
    newest: dict[str, RunRecord] = {}
    for r in records:
        if r.status == "done" and r.summary is not None and not r.config.audit and (include_diverged or not r.diverged):
            if r.config_hash not in newest or r.created > newest[r.config_hash].created:
                newest[r.config_hash] = r
    return sorted(newest.values(), key=lambda r: r.created)


def runs_by_setting(records: Sequence[RunRecord], *, include_diverged: bool = False) -> list[list[RunRecord]]:
    """Finished runs (one per config; diverged ones only when asked) grouped by `setting_key`, the largest
    group first."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in latest_per_config(records, include_diverged=include_diverged):
        groups[setting_key(r)].append(r)
    return sorted(groups.values(), key=len, reverse=True)


def diverged_left_out(records: Sequence[RunRecord], setting: str) -> int:
    """How many finished configs of `setting` (a setting key) a comparison leaves out as diverged."""
    return sum(1 for r in latest_per_config(records, include_diverged=True) if r.diverged and setting_key(r) == setting)


def diverged_note(count: int, *, included: bool = False) -> str:
    """'2 diverged runs left out (…)' ('… included' when asked to count them), or '' when there were none."""
    if not count:
        return ""
    why = f"training loss ended over {DIVERGENCE_FACTOR:g}× its start"
    if included:
        return f"{counted(count, 'diverged run')} included, as asked ({why}): their accuracies enter the comparison"
    return f"{counted(count, 'diverged run')} left out: {why} (dpsat compare --include-diverged counts them)"


def one_class_note(records: Sequence[RunRecord]) -> str:
    """'2 runs (…) predict one class …' for runs whose model predicted a single class on the whole test set at its
    last finished epoch and so missed some of it (its accuracy is that class's share, whatever ε: equal accuracies
    that look like a bug), or ''."""
    constant = [
        r
        for r in records
        if r.summary is not None and r.summary.test_classes_predicted == 1 and (r.test_accuracy or 0.0) < 1.0
    ]
    if not constant:
        return ""
    cells = list(
        dict.fromkeys(
            f"{method_info(r.method).label} at {privacy_label(r.target_epsilon, r.config.noise_multiplier)}"
            if r.config.private
            else method_info(r.method).label
            for r in constant
        )
    )
    which = ", ".join(cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
    private = any(r.config.private for r in constant)
    one = len(constant) == 1
    return (
        f"{counted(len(constant), 'run')} ({which}) predict{'s' if one else ''} one class for every test example: "
        f"{'its' if one else 'their'} accuracy is that class's share of the test set{', whatever ε' if private else ''}"
        f" (train longer{' or raise ε' if private else ''}; or lower an lr so large that training collapsed)"
    )


def describe_setting(record: RunRecord) -> str:
    """The setting in words; two settings never read the same (the key ends it where the words cannot tell)."""
    c = record.config
    split = f"split {c.split_seed}, validation {c.validation_fraction:.0%}"
    bound = "< 1/n" if c.delta_rule == "1/n" else f"≤ {c.delta_rule}"
    delta = f"δ {c.delta:g}" if c.delta is not None else f"default δ {bound}"
    return (
        f"{c.dataset}: {c.epochs} epochs, batch {c.batch_size}, lr {c.lr:g}, C {c.clip_norm:g}, "
        f"momentum {c.momentum:g}, {c.accountant.upper()}, {delta}, {split}, {c.randomness} randomness"
        f"{', fitted scaling' if c.preprocessing == 'fitted' else ''} [{setting_key(record)}]"
    )


def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def privacy_label(target_epsilon: Optional[float], noise_multiplier: Optional[float]) -> str:
    """'ε=3' for a target ε, 'σ=1.2' for a run trained with σ, 'non-private' otherwise."""
    if target_epsilon is not None:
        return f"ε={target_epsilon:g}"
    if noise_multiplier is not None:
        return f"σ={noise_multiplier:g}"
    return "non-private"


@dataclass(frozen=True, kw_only=True)
class CellStats:
    """One method at one privacy level (target ε, or σ) and one ρ, over seeds (one run per seed)."""

    method: str
    target_epsilon: Optional[float]
    noise_multiplier: Optional[float]  # set only for runs trained with σ instead of a target ε
    rho: float
    seeds: int
    accuracy_mean: float
    accuracy_std: Optional[float]
    epsilon_spent_mean: Optional[float]
    wall_seconds_per_epoch: float  # wall time of the runs themselves: never a cost ratio
    lambda_max_mean: Optional[float]
    lambda_max_std: Optional[float]
    trace_mean: Optional[float]
    trace_std: Optional[float]
    trace_stderr: Optional[float]  # Hutchinson's standard error of the trace, where one seed was analysed
    adaptive_mean: Optional[float]  # adaptive (scale-invariant) λ_max
    adaptive_std: Optional[float]
    run_ids: tuple[str, ...]
    accuracy_by_seed: Mapping[int, float] = field(default_factory=dict)
    lambda_max_by_seed: Mapping[int, float] = field(default_factory=dict)
    adaptive_by_seed: Mapping[int, float] = field(default_factory=dict)
    validation_by_seed: Mapping[int, float] = field(default_factory=dict)  # seeds whose run had a validation split
    test_size_by_seed: Mapping[int, int] = field(default_factory=dict)  # seeds whose run stored its test-set size
    # seeds whose run stored which test examples it got right (`RunSummary.test_correct`, test_size_by_seed bits)
    test_correct_by_seed: Mapping[int, str] = field(default_factory=dict)

    @property
    def validation_mean(self) -> Optional[float]:
        """Mean validation accuracy: what ρ, lr or C are chosen by (never the test accuracy)."""
        return statistics.fmean(self.validation_by_seed.values()) if self.validation_by_seed else None

    @property
    def label(self) -> str:
        return method_info(self.method).label

    @property
    def name(self) -> str:
        """The method's label, with ρ for the methods that use it: 'DP-SAT ρ=0.05'."""
        return self.label + (f" ρ={self.rho:g}" if method_info(self.method).uses_rho else "")

    @property
    def private(self) -> bool:
        return method_info(self.method).private

    @property
    def privacy(self) -> str:
        return privacy_label(self.target_epsilon, self.noise_multiplier)

    @property
    def epsilon_axis(self) -> Optional[float]:
        """Where the cell sits on an ε axis: its target ε, else (σ runs) the ε it spent (None when infinite)."""
        if self.target_epsilon is not None:
            return self.target_epsilon
        spent = self.epsilon_spent_mean
        return spent if spent is not None and math.isfinite(spent) else None


def _cell_key(r: RunRecord) -> tuple[str, Optional[float], Optional[float], float]:
    sigma = r.config.noise_multiplier if r.config.private and r.config.epsilon is None else None
    return (r.method, r.config.epsilon, sigma, r.config.rho)


def group_runs(
    records: Sequence[RunRecord],
    spectra: Optional[Mapping[str, HessianSpectrum]] = None,
    adaptive: Optional[Mapping[str, AdaptiveSharpness]] = None,
    *,
    include_diverged: bool = False,
) -> list[CellStats]:
    """Finished runs (duplicates of a config counted once, diverged ones only when asked) grouped into cells,
    in method order, then target ε, then σ, then ρ; Hessian spectra and adaptive sharpness by run id when
    known."""
    spectra, adaptive = spectra or {}, adaptive or {}
    cells: dict[tuple, dict[int, RunRecord]] = defaultdict(dict)
    for r in latest_per_config(records, include_diverged=include_diverged):
        if r.test_accuracy is not None:
            cells[_cell_key(r)][r.config.seed] = r
    order = list(METHODS)

    def sort_key(key: tuple) -> tuple:
        method, eps, sigma, rho = key
        return (order.index(method), eps is None, eps or 0.0, sigma or 0.0, rho)

    out = []
    for key in sorted(cells, key=sort_key):
        method, eps, sigma, rho = key
        by_seed = dict(sorted(cells[key].items()))
        runs = list(by_seed.values())
        acc_mean, acc_std = _mean_std([r.test_accuracy for r in runs])
        eps_mean, _ = _mean_std([r.epsilon_spent for r in runs if r.epsilon_spent is not None])
        lam_by_seed = {s: spectra[r.run_id].lambda_max for s, r in by_seed.items() if r.run_id in spectra}
        lam_mean, lam_std = _mean_std(list(lam_by_seed.values()))
        analysed = [spectra[r.run_id] for r in runs if r.run_id in spectra]
        tr_mean, tr_std = _mean_std([spectrum.trace for spectrum in analysed])
        ad_by_seed = {s: adaptive[r.run_id].lambda_max for s, r in by_seed.items() if r.run_id in adaptive}
        ad_mean, ad_std = _mean_std(list(ad_by_seed.values()))
        out.append(
            CellStats(
                method=method,
                target_epsilon=eps,
                noise_multiplier=sigma,
                rho=rho,
                seeds=len(runs),
                accuracy_mean=acc_mean,
                accuracy_std=acc_std,
                epsilon_spent_mean=eps_mean,
                wall_seconds_per_epoch=statistics.fmean(r.summary.seconds_per_epoch for r in runs),
                lambda_max_mean=lam_mean,
                lambda_max_std=lam_std,
                trace_mean=tr_mean,
                trace_std=tr_std,
                trace_stderr=analysed[0].trace_stderr if len(analysed) == 1 else None,
                adaptive_mean=ad_mean,
                adaptive_std=ad_std,
                run_ids=tuple(r.run_id for r in runs),
                accuracy_by_seed={s: r.test_accuracy for s, r in by_seed.items()},
                lambda_max_by_seed=lam_by_seed,
                adaptive_by_seed=ad_by_seed,
                validation_by_seed={
                    s: r.validation_accuracy for s, r in by_seed.items() if r.validation_accuracy is not None
                },
                test_size_by_seed={s: r.summary.n_test for s, r in by_seed.items() if r.summary.n_test is not None},
                test_correct_by_seed={
                    s: r.summary.test_correct
                    for s, r in by_seed.items()
                    if r.summary.test_correct is not None and r.summary.n_test is not None
                },
            )
        )
    return out


def validation_best(cells: Sequence[CellStats]) -> frozenset[float]:
    """The ρ values with the highest mean validation accuracy over the seeds all these cells share (several
    when tied; none when fewer than two cells have validation accuracy on a shared seed). A selection, not a
    finding: the test gain at a picked ρ is measured after the selection and is not adjusted for it."""
    scored = [c for c in cells if c.validation_by_seed]
    seeds = set.intersection(*(set(c.validation_by_seed) for c in scored)) if len(scored) > 1 else set()
    if not seeds:
        return frozenset()
    means = {c.rho: statistics.fmean(c.validation_by_seed[s] for s in seeds) for c in scored}
    top = max(means.values())
    return frozenset(rho for rho, mean in means.items() if mean >= top - 1e-12)


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """Mean of paired differences with its Student-t interval (None with fewer than two pairs)."""

    n_pairs: int
    mean: float
    ci_low: Optional[float]
    ci_high: Optional[float]
    # test examples the accuracies count, and the test set's share of the standard error (`test_set_error`);
    # both None when the runs did not store the test-set size: the interval then covers seed-to-seed spread only
    n_test: Optional[int] = None
    test_error: Optional[float] = None
    # pairs whose test-set term counts the examples their models disagree on (the rest: the floor from accuracies)
    exact_pairs: int = 0

    @property
    def detectable(self) -> Optional[bool]:
        """True when the interval excludes 0, False when it contains it, None without an interval."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0 or self.ci_high < 0


def test_set_error(
    differences: Sequence[float], n_test: int, discordant: Optional[Sequence[Optional[float]]] = None
) -> float:
    """The standard error the shared test set's sampling gives the mean of paired accuracy differences.

    Per pair, McNemar's variance on the pair's 2×2 table of right/wrong with half an example added to each cell
    (Agresti & Min 2005), so that two models agreeing on every test example still leave a sampling error:
    Var(d) = (p̃ − d̃²)/(n + 2), p̃ = (n·(p_b + p_c) + 1)/(n + 2), d̃ = n·d/(n + 2), over n test examples, where
    p_b + p_c is the share of examples exactly one model gets right: `discordant[i]` where the runs stored which
    examples they got right, else (None, or no `discordant`) its least possible value |d|, a floor. All pairs score
    one test set, so their errors are taken as fully correlated (the conservative choice): the mean of the
    per-pair errors."""
    if n_test < 1:
        raise ValueError(f"n_test must be a whole number ≥ 1, got {n_test!r}")
    shares = [None] * len(differences) if discordant is None else list(discordant)
    if len(shares) != len(differences):
        raise ValueError(f"{len(shares)} discordant shares for {len(differences)} differences")

    def error(d: float, share: Optional[float]) -> float:
        # a share is never below |d| (the examples one model gets right and the other not account for d)
        disagreed = n_test * max(abs(d), share or 0.0)
        p, dd = (disagreed + 1) / (n_test + 2), n_test * d / (n_test + 2)
        return math.sqrt((p - dd * dd) / (n_test + 2))

    return statistics.fmean(error(d, p) for d, p in zip(differences, shares))


def paired_difference(
    differences: Sequence[float],
    *,
    n_test: Optional[int] = None,
    discordant: Optional[Sequence[Optional[float]]] = None,
    confidence: float = CONFIDENCE,
) -> PairedDifference:
    """Mean ± t_{(1+c)/2, k−1}·SE of k paired accuracy differences (one per seed), SE² = s²/k + SE_test²: the
    seed-to-seed spread plus the test set's sampling error (`test_set_error`) over `n_test` test examples, from
    each pair's `discordant` share where known, else its floor; without `n_test` (runs stored before it was kept)
    the seed-to-seed term alone."""
    k = len(differences)
    if k == 0:
        raise ValueError("no pairs to compare")
    mean = statistics.fmean(differences)
    test_error = None if n_test is None else test_set_error(differences, n_test, discordant)
    exact = 0 if n_test is None or discordant is None else sum(p is not None for p in discordant)
    known = dict(n_test=n_test, test_error=test_error, exact_pairs=exact)
    if k < 2:
        return PairedDifference(n_pairs=k, mean=mean, ci_low=None, ci_high=None, **known)
    error = math.sqrt(statistics.variance(differences) / k + (test_error or 0.0) ** 2)
    half = t_quantile(k - 1, (1 + confidence) / 2) * error
    return PairedDifference(n_pairs=k, mean=mean, ci_low=mean - half, ci_high=mean + half, **known)


@dataclass(frozen=True, kw_only=True)
class PairedRatio:
    """Geometric mean of paired ratios (method/baseline, one per seed) with its Student-t interval on the log
    ratios (None with fewer than two pairs)."""

    n_pairs: int
    ratio: float
    ci_low: Optional[float]
    ci_high: Optional[float]


def paired_ratio(ratios: Sequence[float], *, confidence: float = CONFIDENCE) -> PairedRatio:
    """exp(mean ± t_{(1+c)/2, k−1}·s/√k) of the logs of k positive paired ratios: a ratio's seed-to-seed spread is
    multiplicative, so the interval is symmetric on the log scale and never crosses 0. One ratio: no interval."""
    k = len(ratios)
    if k == 0:
        raise ValueError("no pairs to compare")
    if any(not r > 0 or not math.isfinite(r) for r in ratios):
        raise ValueError(f"paired ratios must be positive and finite, got {list(ratios)!r}")
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if k < 2:
        return PairedRatio(n_pairs=k, ratio=math.exp(mean), ci_low=None, ci_high=None)
    half = t_quantile(k - 1, (1 + confidence) / 2) * math.sqrt(statistics.variance(logs) / k)
    return PairedRatio(n_pairs=k, ratio=math.exp(mean), ci_low=math.exp(mean - half), ci_high=math.exp(mean + half))


@dataclass(frozen=True, kw_only=True)
class WithheldRatio:
    """No ratio shown: at these seeds an analysed value of the pair is ≤ 0 (Lanczos's algebraically largest
    eigenvalue ≤ 0 is a finding about the model, not noise to average away)."""

    nonpositive_seeds: tuple[int, ...]


# A comparison's sharpness ratio: the paired ratio, or why none is shown (None: no seed pair analysed)
SharpnessRatio = PairedRatio | WithheldRatio


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """A method cell against its baseline's cell at the same privacy level, paired by seed."""

    method: str
    baseline: str
    target_epsilon: Optional[float]
    noise_multiplier: Optional[float]
    rho: float
    epsilon_spent: Optional[float]
    accuracy: PairedDifference  # in accuracy fractions (0.01 = one point)
    cost: Optional[MethodCost]  # measured step cost against the baseline (a probe of this setting), if any
    # λ_max(method)/λ_max(baseline) over the seeds both analysed (geometric mean, interval on the log ratios)
    lambda_max_ratio: Optional[SharpnessRatio]
    sharpness_ratio: Optional[SharpnessRatio]  # the same for adaptive (scale-invariant) λ_max
    backward_passes_ratio: float
    releases_ratio: float
    # where the method ran at several ρ at this level: "picked" (best validation accuracy), "tied" (shares
    # the best), "not picked", or "no validation" (nothing to choose by); None with a single ρ
    validation_pick: Optional[str] = None

    @property
    def chosen_by_validation(self) -> Optional[bool]:
        """True for the picked (or a tied) ρ, False for the others, None where no choice was made."""
        return {"picked": True, "tied": True, "not picked": False}.get(self.validation_pick or "")

    @property
    def gain_points(self) -> float:
        return 100 * self.accuracy.mean

    @property
    def ci_points(self) -> tuple[Optional[float], Optional[float]]:
        low, high = self.accuracy.ci_low, self.accuracy.ci_high
        return (None if low is None else 100 * low, None if high is None else 100 * high)

    @property
    def privacy(self) -> str:
        return privacy_label(self.target_epsilon, self.noise_multiplier)


def _baseline_cell(stats: Sequence[CellStats], cell: CellStats) -> Optional[CellStats]:
    base = method_info(cell.method).baseline
    if base is None:
        return None
    rho = cell.rho if method_info(base).uses_rho else 0.0
    for c in stats:
        same_level = (c.target_epsilon, c.noise_multiplier) == (cell.target_epsilon, cell.noise_multiplier)
        if c.method == base and same_level and c.rho == rho:
            return c
    return None


def _paired_ratio(a: Mapping[int, float], b: Mapping[int, float], seeds: Sequence[int]) -> Optional[SharpnessRatio]:
    """`paired_ratio` of a[seed]/b[seed] over the seeds where both were analysed; a `WithheldRatio` when any such
    value is ≤ 0 (a ratio of curvatures of opposite sign says nothing about flatness); None when no seed has both."""
    both = [s for s in seeds if s in a and s in b]
    nonpositive = tuple(s for s in both if not (a[s] > 0 and b[s] > 0))
    if nonpositive:
        return WithheldRatio(nonpositive_seeds=nonpositive)
    return paired_ratio([a[s] / b[s] for s in both]) if both else None


def compare_cell(
    stats: Sequence[CellStats], cell: CellStats, *, cost: Optional[CostProbe] = None
) -> Optional[Comparison]:
    """`cell` against its baseline's cell (same ε or σ), paired by seed; None without a baseline or shared seed.
    `cost`: the setting's step-cost probe, whose ratio becomes the comparison's compute figure."""
    base = _baseline_cell(stats, cell)
    if base is None:
        return None
    seeds = sorted(set(cell.accuracy_by_seed) & set(base.accuracy_by_seed))
    if not seeds:
        return None
    accuracy = paired_difference(
        [cell.accuracy_by_seed[s] - base.accuracy_by_seed[s] for s in seeds],
        n_test=_test_size(cell, base, seeds),
        discordant=[_discordant_share(cell, base, s) for s in seeds],
    )
    lam = _paired_ratio(cell.lambda_max_by_seed, base.lambda_max_by_seed, seeds)
    sharpness = _paired_ratio(cell.adaptive_by_seed, base.adaptive_by_seed, seeds)
    info, base_info = method_info(cell.method), method_info(base.method)
    return Comparison(
        method=cell.method,
        baseline=base.method,
        target_epsilon=cell.target_epsilon,
        noise_multiplier=cell.noise_multiplier,
        rho=cell.rho,
        epsilon_spent=cell.epsilon_spent_mean,
        accuracy=accuracy,
        cost=_measured(cost, cell.method, base.method),
        lambda_max_ratio=lam,
        sharpness_ratio=sharpness,
        backward_passes_ratio=info.backward_passes_per_step / base_info.backward_passes_per_step,
        releases_ratio=(info.releases_per_step / base_info.releases_per_step) if base_info.private else 0.0,
    )


def _test_size(cell: CellStats, base: CellStats, seeds: Sequence[int]) -> Optional[int]:
    """The test-set size of the paired runs (they split one data set alike): the smallest any of them stored, the
    larger error; None when none stored it (runs from before it was kept)."""
    sizes = [size for s in seeds for size in (cell.test_size_by_seed.get(s), base.test_size_by_seed.get(s)) if size]
    return min(sizes) if sizes else None


def _discordant_share(cell: CellStats, base: CellStats, seed: int) -> Optional[float]:
    """The share of test examples exactly one of the seed's two models got right, when both runs stored which
    they got right on a test set of one size; else None."""
    a, b = cell.test_correct_by_seed.get(seed), base.test_correct_by_seed.get(seed)
    n = cell.test_size_by_seed.get(seed)
    if a is None or b is None or n is None or n != base.test_size_by_seed.get(seed):
        return None
    return discordant(a, b, n) / n


def _measured(probe: Optional[CostProbe], method: str, baseline: str) -> Optional[MethodCost]:
    if probe is None or method not in probe.methods:
        return None
    cost = probe.cost(method)
    return cost if cost.reference == baseline and cost.ratio is not None else None


def comparisons(
    stats: Sequence[CellStats], *, private: Optional[bool] = True, cost: Optional[CostProbe] = None
) -> list[Comparison]:
    """Every cell of a method that has a baseline, against it (registry order, then ε, σ, ρ)."""
    names = {m.name for m in compared_methods(private=private)}
    out = [c for cell in stats if cell.method in names and (c := compare_cell(stats, cell, cost=cost))]
    picks = validation_picks(stats)
    return [
        dataclasses.replace(c, validation_pick=_pick(picks, c)) if (c.method, c.privacy) in picks else c for c in out
    ]


def _pick(picks: Mapping[tuple[str, str], frozenset[float]], c: Comparison) -> str:
    best = picks[(c.method, c.privacy)]
    if not best:
        return "no validation"
    if c.rho not in best:
        return "not picked"
    return "picked" if len(best) == 1 else "tied"


def validation_picks(stats: Sequence[CellStats]) -> dict[tuple[str, str], frozenset[float]]:
    """(method, privacy level) → the ρ values validation accuracy picks (`validation_best`; empty when it
    cannot choose), for each method run at several ρ at that level."""
    levels: dict[tuple[str, str], list[CellStats]] = defaultdict(list)
    for c in stats:
        if method_info(c.method).uses_rho:
            levels[(c.method, c.privacy)].append(c)
    return {key: validation_best(cells) for key, cells in levels.items() if len(cells) > 1}


def headline_comparisons(compared: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons a bottom line states: for a method run at several ρ, only the validation pick."""
    return [c for c in compared if c.chosen_by_validation is not False]


def comparisons_at(stats: Sequence[CellStats], epsilon: float, *, cost: Optional[CostProbe] = None) -> list[Comparison]:
    """The private comparisons at one target ε."""
    return [c for c in comparisons(stats, cost=cost) if c.target_epsilon == epsilon]


def rho_levels(compared: Sequence[Comparison]) -> list[str]:
    """Privacy levels at which some method was compared at more than one ρ (where a ρ view says something)."""
    seen: dict[tuple[str, str], set[float]] = defaultdict(set)
    for c in compared:
        seen[(c.privacy, c.method)].add(c.rho)
    return list(dict.fromkeys(level for (level, _), rhos in seen.items() if len(rhos) > 1))


# What a sharpness ratio in a verdict is and what its interval covers (the README, the report, the CLI and the
# pages say it so): every analysis reads one fixed training subset, its estimators start from seed 0
RATIO_INTERVAL = (
    "Sharpness ratios (×) are the geometric mean over seed pairs of the method's value divided by its baseline's, "
    f"each the λ_max (plain or adaptive) of the loss on a fixed {DEFAULT_SAMPLES:,}-row training subset, "
    f"{TRAINING_DATA}; their 95% Student-t interval on the log ratios covers seed-to-seed variation of the "
    "analysed runs (including the estimates' numerical error), not the choice of rows; with one seed pair there "
    "is no interval, and where an analysed value is ≤ 0 no ratio is shown"
)

# What an interval of `paired_difference` covers (the README, pages and the report say it in these words)
INTERVAL_COVERS = (
    "seed-to-seed variation plus the test set's sampling error, counted from the test examples each pair of models "
    "disagrees on (for runs stored before those were kept, at least the part their accuracies imply)"
)
_COVERS_EXACT = (
    "seed-to-seed variation plus the test set's sampling error, counted from the test examples each pair of models "
    "disagrees on"
)
_COVERS_FLOOR = "seed-to-seed variation plus at least the test set's sampling error implied by the accuracies"
_COVERS_SEEDS = (
    "seed-to-seed variation only: the runs were stored without their test-set size (retrain to add the test "
    "set's sampling error)"
)


def _test_term(c: Comparison) -> Optional[str]:
    """The test-set term of a comparison's interval: 'exact' (every pair's disagreements counted), 'floor' (some
    pair's bounded by its accuracies), or None (none: runs stored without their test-set size)."""
    if c.accuracy.test_error is None:
        return None
    return "exact" if c.accuracy.exact_pairs == c.accuracy.n_pairs else "floor"


def interval_note(c: Comparison) -> str:
    """'; seed-to-seed spread only, …' for an interval without the test-set term, '; test-set term a floor, …'
    for one whose runs did not all store their per-example results, else '' (no brackets: it goes inside one)."""
    if c.accuracy.ci_low is None:
        return ""
    term = _test_term(c)
    if term is None:
        return "; seed-to-seed spread only, as the runs were stored without their test-set size"
    if term == "floor":
        return "; test-set term a floor, as the runs were stored without their per-example results"
    return ""


def interval_scope(compared: Sequence[Comparison], *, ratios: bool = True) -> str:
    """What the accuracy intervals of `compared` cover, in one to three sentences, then (`ratios`, where any
    comparison shows a sharpness ratio) what the ratios and their intervals are (`RATIO_INTERVAL`); '' when
    there is nothing to say."""
    text = _accuracy_scope(compared)
    if ratios and any(r is not None for c in compared for r in (c.lambda_max_ratio, c.sharpness_ratio)):
        text = f"{text} {RATIO_INTERVAL}.".strip()
    return text


def _accuracy_scope(compared: Sequence[Comparison]) -> str:
    """What the accuracy intervals cover, the first sentence from the test-set terms present ('' without one)."""
    terms = [_test_term(c) for c in compared if c.accuracy.ci_low is not None]
    if not terms:
        return ""
    covers = _COVERS_EXACT if "exact" in terms else _COVERS_FLOOR if "floor" in terms else _COVERS_SEEDS
    text = f"The accuracy intervals (95%, paired by seed) cover {covers}."
    if covers is _COVERS_SEEDS:
        return text
    floors = terms.count("floor")
    if floors:
        text += (
            f" {counted(floors, 'comparison')} rest{'s' if floors == 1 else ''} on runs stored before their "
            "per-example test results were kept: there the test-set term is a floor (the models may disagree on "
            "more examples than their accuracies imply), so the interval may be too narrow (retrain to count them)."
        )
    without = terms.count(None)
    if without:
        text += (
            f" {counted(without, 'comparison')} rest{'s' if without == 1 else ''} on runs stored before their "
            "test-set size was kept: those intervals cover seed-to-seed variation only (retrain to add the rest)."
        )
    return text


def conclusion(c: Comparison) -> str:
    """The plain-words reading of a paired accuracy difference."""
    detectable = c.accuracy.detectable
    if detectable is None:
        return "one seed pair only: no interval, train more seeds before deciding"
    if not detectable:
        return "no measurable accuracy difference at this size"
    return "measurably more accurate" if c.accuracy.mean > 0 else "measurably less accurate"


_PICK_WORDS = {
    "picked": ", picked by validation accuracy",
    "tied": ", tied for the best validation accuracy",
    "not picked": ", not the validation pick",
    "no validation": ", one of several, no validation split to choose by",
}


def rho_text(c: Comparison) -> str:
    """' (ρ=0.05, picked by validation accuracy)' for a method that uses ρ, '' for one that does not."""
    if not method_info(c.method).uses_rho:
        return ""
    return f" (ρ={c.rho:g}{_PICK_WORDS.get(c.validation_pick or '', '')})"


def ratio_number(value: float) -> str:
    """A ratio to three significant figures ('0.913', '1.00', '0.00312'): never '0.00' for a small one."""
    return f"{value:#.3g}".rstrip(".")


def withheld_reason(ratio: WithheldRatio) -> str:
    """'a value ≤ 0 at seed 2' ('at seeds 1, 2' for several): why a comparison shows no ratio."""
    seeds = ", ".join(str(s) for s in ratio.nonpositive_seeds)
    return f"a value ≤ 0 at seed{'s' if len(ratio.nonpositive_seeds) > 1 else ''} {seeds}"


def ratio_text(what: str, ratio: SharpnessRatio, *, of_pairs: Optional[int] = None) -> str:
    """'λ_max ×0.910 (95% CI 0.800 to 1.04, 3 seed pairs)', worded like the accuracy interval; '… (1 seed pair, no
    interval)' with one pair; '2 of 3 seed pairs analysed' when fewer than `of_pairs` (the accuracy's) were
    analysed; why not, for a `WithheldRatio`."""
    if isinstance(ratio, WithheldRatio):
        return f"{what} ratio not shown: {withheld_reason(ratio)}"
    pairs = counted(ratio.n_pairs, "seed pair")
    if of_pairs is not None and ratio.n_pairs < of_pairs:
        pairs = f"{ratio.n_pairs} of {counted(of_pairs, 'seed pair')} analysed"
    if ratio.ci_low is None or ratio.ci_high is None:
        return f"{what} ×{ratio_number(ratio.ratio)} ({pairs}, no interval)"
    low, high = ratio_number(ratio.ci_low), ratio_number(ratio.ci_high)
    return f"{what} ×{ratio_number(ratio.ratio)} (95% CI {low} to {high}, {pairs})"


def verdict(c: Comparison) -> str:
    """'At ε=3, DP-SAT vs DP-SGD: +0.4 points (95% CI −1.2 to +2.0, 3 seed pairs), 1× backward passes,
    same ε, λ_max ×0.910 (95% CI 0.800 to 1.04, 3 seed pairs). No measurable accuracy difference at this size.'"""
    info, base = method_info(c.method), method_info(c.baseline)
    low, high = c.ci_points
    pairs = counted(c.accuracy.n_pairs, "seed pair")
    interval = (
        f"95% CI {low:+.1f} to {high:+.1f}, {pairs}{interval_note(c)}" if low is not None else f"{pairs}, no interval"
    )
    rho = rho_text(c)
    privacy = (
        f"same ε, paid with more noise ({info.releases_per_step} releases per step)"
        if c.releases_ratio > 1
        else "same ε"
    )
    if c.cost is not None:
        spread = f"IQR {c.cost.ratio_low:.2f}–{c.cost.ratio_high:.2f}"
        if c.cost.ratio_ci_low is not None:  # probes stored before the interval was kept have the spread only
            rounds = f"95% CI {c.cost.ratio_ci_low:.2f}–{c.cost.ratio_ci_high:.2f} over this probe's rounds"
            spread = f"{rounds}, rounds' {spread}"
        compute = f"{c.cost.ratio:.2f}× compute per step (measured; {spread})"
    else:
        compute = f"{c.backward_passes_ratio:g}× backward passes per step (compute not measured)"
    parts = [f"At {c.privacy}, {info.label}{rho} vs {base.label}: {c.gain_points:+.1f} points ({interval})", compute]
    parts.append(privacy)
    if c.sharpness_ratio is not None:
        parts.append(ratio_text("adaptive sharpness", c.sharpness_ratio, of_pairs=c.accuracy.n_pairs))
    if c.lambda_max_ratio is not None:
        parts.append(ratio_text("λ_max", c.lambda_max_ratio, of_pairs=c.accuracy.n_pairs))
    return ", ".join(parts) + f". {conclusion(c).capitalize()}."


def pick_setting(
    records: Sequence[RunRecord],
    *,
    dataset: Optional[str] = None,
    setting: Optional[str] = None,
    include_diverged: bool = False,
) -> list[RunRecord]:
    """The finished runs of one setting: `setting` (a key or its prefix), else the one with the most runs
    (of `dataset`, if given: a stored data set, or the file name of one, as the dashboard shows uploads); diverged
    runs only when asked. A `StoreError` says what is missing."""
    dataset = stored_dataset(records, dataset)
    groups = runs_by_setting(
        [r for r in records if dataset is None or r.config.dataset == dataset], include_diverged=include_diverged
    )
    if setting is not None:
        groups = [g for g in groups if setting_key(g[0]).startswith(setting)]
    if not groups:
        where = (f" for data set {dataset!r}" if dataset else "") + (f" in setting {setting!r}" if setting else "")
        if not include_diverged and pick_setting(records, dataset=dataset, setting=setting, include_diverged=True):
            raise StoreError(  # only diverged runs match: say so, not "train some"
                f"every finished run{where} diverged (training loss ended over {DIVERGENCE_FACTOR:g}× its start): "
                "they are left out of comparisons; dpsat compare --include-diverged counts them"
            )
        stored = sorted({r.config.dataset for r in records})
        if dataset is not None and stored:
            raise StoreError(f"no finished runs{where} in the store; its data sets: {', '.join(stored)}")
        raise StoreError(f"no finished runs{where} in the store: train some first (dpsat sweep …)")
    return groups[0]


def stored_dataset(records: Sequence[RunRecord], name: Optional[str]) -> Optional[str]:
    """`name` as the runs store it: itself, or the one stored file whose file name it is (an upload stored as
    `…/dpsat_uploads/<digest>/table.csv` is `table.csv` on the pages); a `StoreError` when that name is ambiguous."""
    stored = {r.config.dataset for r in records}
    if name is None or name in stored:
        return name
    named = sorted(d for d in stored if Path(d).name == name)
    if len(named) > 1:
        raise StoreError(f"several stored data sets are named {name!r}: give the path of one: {', '.join(named)}")
    return named[0] if named else name


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
