"""Cells and paired comparisons: checked against scipy on hand-made records."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dpsat_core.compare import (
    RATIO_INTERVAL,
    WithheldRatio,
    best_epsilon,
    comparisons,
    comparisons_at,
    describe_setting,
    diverged_left_out,
    diverged_note,
    group_runs,
    headline_comparisons,
    interval_note,
    interval_scope,
    one_class_note,
    paired_difference,
    paired_ratio,
    ratio_text,
    setting_key,
    validation_picks,
    verdict,
)
from dpsat_core.correctness import pack_correct
from dpsat_core.results import AdaptiveSharpness
from tests.factories import record, spectrum


def test_cells_are_mean_and_std_over_seeds_and_skip_unfinished_runs():
    runs = [
        record("dpsgd", 2.0, 0, 0.80),
        record("dpsgd", 2.0, 1, 0.84),
        record("dpsgd", 2.0, 2, 0.1, status="failed"),
        record("sgd", None, 0, 0.95),
    ]
    cells = group_runs(runs)
    assert [(c.method, c.target_epsilon, c.seeds) for c in cells] == [("sgd", None, 1), ("dpsgd", 2.0, 2)]
    assert cells[1].accuracy_mean == pytest.approx(0.82) and cells[1].accuracy_std == pytest.approx(0.0282843, rel=1e-4)


def test_the_paired_interval_is_scipys():
    differences = [0.012, -0.004, 0.020, 0.007, 0.001]
    got = paired_difference(differences)
    reference = scipy_stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
    assert got.n_pairs == 5 and got.mean == pytest.approx(np.mean(differences))
    assert (got.ci_low, got.ci_high) == pytest.approx((reference.low, reference.high))
    assert got.detectable is False  # the interval contains 0
    assert paired_difference([0.02, 0.03, 0.025]).detectable is True
    single = paired_difference([0.05])
    assert single.ci_low is None and single.detectable is None


def _tested_on(r, n_test):
    """`r` as stored with the size of its test set (runs stored before it was kept have None)."""
    return dataclasses.replace(r, summary=dataclasses.replace(r.summary, n_test=n_test))


def _one_example_worse(n_test):
    """DP-SGD and DP-SAT at two seeds, DP-SAT one test example of 360 worse at each: zero seed-to-seed spread."""
    runs = [record("dpsgd", 3.0, s, 300 / 360) for s in (0, 1)] + [record("dpsat", 3.0, s, 299 / 360) for s in (0, 1)]
    return [_tested_on(r, n_test) for r in runs]


def test_one_test_example_of_difference_is_not_measurable_once_the_test_set_error_counts():
    (c,) = comparisons(group_runs(_one_example_worse(360)))
    assert c.accuracy.n_test == 360 and c.accuracy.ci_low < 0 < c.accuracy.ci_high
    assert c.accuracy.detectable is False and verdict(c).endswith("No measurable accuracy difference at this size.")
    assert "seed-to-seed spread only" not in verdict(c)
    (old,) = comparisons(group_runs(_one_example_worse(None)))  # stored before n_test: the seed term alone, said
    assert old.accuracy.n_test is None and old.accuracy.ci_low == pytest.approx(old.accuracy.ci_high)
    assert "seed-to-seed spread only, as the runs were stored without their test-set size" in verdict(old)
    # no comparison has a test-set term: the first sentence says seed-to-seed only, never "plus at least …"
    scope = interval_scope([old])
    assert scope.startswith("The accuracy intervals (95%, paired by seed) cover seed-to-seed variation only")
    assert "at least" not in scope and "plus" not in scope and "rests on" not in scope
    mixed = interval_scope([c, old])  # one with the floor term, one without: the first sentence from the floor
    assert mixed.startswith("The accuracy intervals (95%, paired by seed) cover seed-to-seed variation plus at least")
    assert "1 comparison rests on runs stored before their test-set size was kept" in mixed


def test_the_test_set_term_by_hand():
    # two pairs, d = 0.01 and 0.03 on 100 test examples: s² = 2e-4; SE_test = mean of the pairs' floors (b = 0,
    # c = 1 and c = 3: the fewest disagreements these accuracies allow)
    got = paired_difference([0.01, 0.03], n_test=100)
    test_error = (_adjusted_se(0, 1, 100) + _adjusted_se(0, 3, 100)) / 2
    assert got.test_error == pytest.approx(test_error) == pytest.approx(0.016611, rel=1e-4)
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(2e-4 / 2 + test_error**2)
    assert (got.ci_low, got.ci_high) == pytest.approx((0.02 - half, 0.02 + half))
    # the finding's case: zero spread, so the half-width is t·SE_test alone
    worse = paired_difference([-1 / 360, -1 / 360], n_test=360)
    assert worse.ci_high - worse.mean == pytest.approx(12.706204736 * _adjusted_se(1, 0, 360))
    # two models that agree on every one of 80 test examples (the new-user finding): not a zero-width interval
    agreeing = paired_difference([0.0, 0.0], n_test=80, discordant=[0.0, 0.0])
    assert agreeing.ci_high == pytest.approx(12.706204736 * _adjusted_se(0, 0, 80)) == pytest.approx(0.155, rel=1e-2)
    with pytest.raises(ValueError, match="n_test must be"):
        paired_difference([0.01, 0.02], n_test=0)


def test_the_half_width_is_never_below_the_t_quantile_times_the_test_set_error():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k, n_test = int(rng.integers(2, 8)), int(rng.integers(20, 5000))
        differences = list(rng.integers(-30, 31, size=k) / n_test)
        got = paired_difference(differences, n_test=n_test)
        floor = scipy_stats.t.ppf(0.975, k - 1) * got.test_error
        seeds_only = paired_difference(differences)  # the seed-to-seed interval: never wider
        assert got.ci_high - got.mean >= floor * (1 - 1e-12)
        assert got.ci_high - got.mean >= (seeds_only.ci_high - seeds_only.mean) * (1 - 1e-12)


def test_a_large_consistent_difference_stays_measurable():
    base = [0.70, 0.72, 0.71]
    runs = [record("dpsgd", 3.0, s, a) for s, a in enumerate(base)]
    runs += [record("dpsat", 3.0, s, a + d) for s, (a, d) in enumerate(zip(base, (0.10, 0.11, 0.10)))]
    (c,) = comparisons(group_runs([_tested_on(r, 360) for r in runs]))
    assert c.accuracy.detectable is True and c.accuracy.ci_low > 0
    assert c.accuracy.test_error == pytest.approx(np.mean([_adjusted_se(0, 360 * d, 360) for d in (0.10, 0.11, 0.10)]))
    assert verdict(c).endswith("Measurably more accurate.")
    assert interval_scope([c]) == (
        "The accuracy intervals (95%, paired by seed) cover seed-to-seed variation plus at least the test set's "
        "sampling error implied by the accuracies. 1 comparison rests on runs stored before their per-example test "
        "results were kept: there the test-set term is a floor (the models may disagree on more examples than their "
        "accuracies imply), so the interval may be too narrow (retrain to count them)."
    )
    assert "test-set term a floor, as the runs were stored without their per-example results" in verdict(c)


def _scored(method, seed, correct, n_test=None):
    """A run of `method` at ε=3 that stored which of its test examples (`correct`, 0/1) it got right."""
    r = record(method, 3.0, seed, sum(correct) / len(correct))
    packed = pack_correct([bool(c) for c in correct])
    return dataclasses.replace(
        r, summary=dataclasses.replace(r.summary, n_test=n_test or len(correct), test_correct=packed)
    )


def _adjusted_se(b, c, n):
    """McNemar's standard error of accuracy(method) − accuracy(base) on the 2×2 table with half an example added
    to each of its four cells (Agresti & Min 2005), from b (only the base right) and c (only the method right)."""
    pb, pc, m = (b + 0.5) / (n + 2), (c + 0.5) / (n + 2), n + 2
    return math.sqrt((pb + pc - (pc - pb) ** 2) / m)


def _mcnemar_se(base, method):
    """`_adjusted_se` from two models' per-example right/wrong, counted by hand."""
    b = sum(1 for x, y in zip(base, method) if x and not y)  # base right, method wrong
    c = sum(1 for x, y in zip(base, method) if y and not x)
    return _adjusted_se(b, c, len(base))


def test_the_test_set_term_counts_the_examples_the_paired_models_disagree_on():
    base0, dpsat0 = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 1, 1, 1, 0]  # b = 2, c = 3: d = +0.1
    base1, dpsat1 = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # b = 5, c = 5: d = 0
    runs = [_scored("dpsgd", 0, base0), _scored("dpsat", 0, dpsat0), _scored("dpsgd", 1, base1)]
    (c,) = comparisons(group_runs([*runs, _scored("dpsat", 1, dpsat1)]))
    se = (_adjusted_se(2, 3, 10) + _adjusted_se(5, 5, 10)) / 2  # per pair, then the mean of the SEs
    assert se == pytest.approx((_mcnemar_se(base0, dpsat0) + _mcnemar_se(base1, dpsat1)) / 2)
    assert se == pytest.approx((math.sqrt((6 / 12 - (1 / 12) ** 2) / 12) + math.sqrt((11 / 12) / 12)) / 2)
    assert c.accuracy.test_error == pytest.approx(se) and c.accuracy.exact_pairs == 2 and c.accuracy.n_test == 10
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(0.005 / 2 + se**2)
    assert (c.accuracy.ci_low, c.accuracy.ci_high) == pytest.approx((0.05 - half, 0.05 + half))
    assert interval_note(c) == "" and "at least" not in interval_scope([c]) and "floor" not in interval_scope([c])
    assert "counted from the test examples each pair of models disagrees on" in interval_scope([c])
    # one pair without the per-example results: that pair falls back to the floor, and the note says so
    (mixed,) = comparisons(group_runs([*runs, record("dpsat", 3.0, 1, 0.5)]))
    assert mixed.accuracy.exact_pairs == 1  # seed 1 has d = 0, so its floor is b = c = 0
    assert mixed.accuracy.test_error == pytest.approx((_adjusted_se(2, 3, 10) + _adjusted_se(0, 0, 10)) / 2)
    assert interval_note(mixed) == "; test-set term a floor, as the runs were stored without their per-example results"
    assert "1 comparison rests on runs stored before their per-example test results were kept" in interval_scope(
        [c, mixed]
    )


def test_equal_accuracies_with_many_disagreements_give_a_wide_interval_not_zero():
    # 360 test examples, both models right on 300 at each seed, but disagreeing on 40 of them (20 each way)
    base = [1] * 300 + [0] * 60
    method = [1] * 280 + [0] * 20 + [1] * 20 + [0] * 40
    runs = [_scored(m, s, v) for s in (0, 1) for m, v in (("dpsgd", base), ("dpsat", method))]
    (c,) = comparisons(group_runs(runs))
    assert c.accuracy.mean == 0 and c.accuracy.test_error == pytest.approx(_adjusted_se(20, 20, 360))
    assert c.accuracy.ci_high == pytest.approx(12.706204736 * _adjusted_se(20, 20, 360)) == pytest.approx(0.2247, 1e-3)
    assert c.accuracy.ci_low == pytest.approx(-c.accuracy.ci_high) and c.accuracy.detectable is False
    old = [dataclasses.replace(r, summary=dataclasses.replace(r.summary, test_correct=None)) for r in runs]
    (floor,) = comparisons(group_runs(old))  # the same runs without their bits: the floor is b = c = 0
    assert floor.accuracy.exact_pairs == 0 and floor.accuracy.test_error == pytest.approx(_adjusted_se(0, 0, 360))
    assert 0 < floor.accuracy.ci_high - floor.accuracy.ci_low < c.accuracy.ci_high - c.accuracy.ci_low
    # the reviewer's case: d = 0.4 points, 6% discordant, n = 360 (b + c = 21.6, c − b = 1.44): floor 0.43 points
    # (b = 0, c = 1.44), counted 1.31
    assert paired_difference([0.004], n_test=360).test_error == pytest.approx(_adjusted_se(0, 1.44, 360))
    assert 100 * paired_difference([0.004], n_test=360).test_error == pytest.approx(0.4310, rel=1e-3)
    counted = paired_difference([0.004], n_test=360, discordant=[0.06]).test_error
    assert counted == pytest.approx(_adjusted_se(10.08, 11.52, 360)) == pytest.approx(0.013131, rel=1e-3)


def test_runs_scored_on_test_sets_of_different_sizes_are_not_counted_as_pairs():
    base, method = [1, 1, 0, 0], [1, 0, 1, 1]
    runs = [_scored("dpsgd", s, base) for s in (0, 1)] + [_scored("dpsat", 0, method), _scored("dpsat", 1, method, 5)]
    (c,) = comparisons(group_runs(runs))
    assert c.accuracy.exact_pairs == 1 and c.accuracy.n_test == 4
    with pytest.raises(ValueError, match="2 discordant shares for 3 differences"):
        paired_difference([0.0, 0.1, 0.2], n_test=10, discordant=[0.1, None])


def test_the_gain_is_paired_by_seed_not_pooled():
    # seed effects dominate the spread (±8 points), but DP-SAT is better by about 1 point at every seed
    base = [0.70, 0.80, 0.90, 0.75]
    lift = [0.010, 0.012, 0.009, 0.009]
    runs = [record("dpsgd", 2.0, s, a) for s, a in enumerate(base)]
    runs += [record("dpsat", 2.0, s, a + d) for s, (a, d) in enumerate(zip(base, lift))]
    runs.append(record("dpsat", 2.0, 9, 0.2))  # a seed DP-SGD lacks: not paired
    (c,) = comparisons(group_runs(runs))
    assert c.method == "dpsat" and c.baseline == "dpsgd" and c.accuracy.n_pairs == 4
    assert c.gain_points == pytest.approx(1.0) and c.accuracy.detectable is True
    reference = scipy_stats.ttest_rel([a + d for a, d in zip(base, lift)], base).confidence_interval(0.95)
    assert (c.accuracy.ci_low, c.accuracy.ci_high) == pytest.approx((reference.low, reference.high))
    pooled = scipy_stats.ttest_ind([a + d for a, d in zip(base, lift)], base)
    assert pooled.pvalue > 0.5  # an unpaired comparison would see nothing
    assert verdict(c).startswith("At ε=2, DP-SAT (ρ=0.05) vs DP-SGD: +1.0 points (95% CI ")
    assert verdict(c).endswith("Measurably more accurate.")


def test_a_measured_compute_interval_never_stands_in_for_the_accuracy_interval():
    from dpsat_core.results import CostProbe, MethodCost

    base, lift = [0.80, 0.82, 0.79, 0.81], [0.012, 0.008, 0.011, 0.009]
    runs = [record("dpsgd", 2.0, s, a) for s, a in enumerate(base)]
    runs += [record("dpsat", 2.0, s, a + d) for s, (a, d) in enumerate(zip(base, lift))]
    dpsat = MethodCost(
        method="dpsat", reference="dpsgd", seconds_per_step=0.01, ratio=1.05, ratio_low=1.03, ratio_high=1.07,
        backward_passes_per_step=1, releases_per_step=1, backward_passes_ratio=1.0, ratio_ci_low=1.02,
        ratio_ci_high=1.08,
    )  # fmt: skip
    probe = CostProbe(
        setting="", device="cpu", threads=1, clock="thread CPU time", batch_size=64, rounds=300, warmup=10,
        spread="IQR", costs=(dpsat,), seconds=1.0, created=0.0,
    )  # fmt: skip
    (c,) = comparisons(group_runs(runs), cost=probe)
    low, high = c.ci_points
    assert f"+1.0 points (95% CI {low:+.1f} to {high:+.1f}, 4 seed pairs" in verdict(c)  # the accuracy's own
    assert "1.05× compute per step (measured; 95% CI 1.02–1.08 over this probe's rounds, rounds' IQR" in verdict(c)
    assert verdict(c).count("over this probe's rounds") == 1


def test_duplicate_runs_of_one_config_count_once_the_newest():
    runs = [
        record("dpsgd", 2.0, 0, 0.80, created=1.0),
        record("dpsgd", 2.0, 0, 0.60, created=2.0),  # the same config trained again: replaces, not a second seed
        record("dpsat", 2.0, 0, 0.61, created=3.0),
    ]
    (dpsgd,) = [c for c in group_runs(runs) if c.method == "dpsgd"]
    assert dpsgd.seeds == 1 and dpsgd.accuracy_mean == pytest.approx(0.60) and dpsgd.accuracy_std is None
    (c,) = comparisons(group_runs(runs))
    assert c.accuracy.n_pairs == 1 and c.gain_points == pytest.approx(1.0) and "no interval" in verdict(c)


def test_sigma_runs_are_private_cells_at_their_sigma_with_their_epsilon_spent():
    runs = [
        record("dpsgd", None, 0, 0.7, sigma=1.5, spent=2.4),
        record("dpsat", None, 0, 0.72, sigma=1.5, spent=2.4),
        record("dpsgd", 2.0, 0, 0.75),
    ]
    cells = group_runs(runs)
    sigma_cells = [c for c in cells if c.noise_multiplier is not None]
    assert [(c.method, c.privacy, c.epsilon_axis) for c in sigma_cells] == [
        ("dpsgd", "σ=1.5", 2.4),
        ("dpsat", "σ=1.5", 2.4),
    ]
    assert all(c.private for c in sigma_cells)
    (c,) = comparisons(cells)
    assert c.privacy == "σ=1.5" and c.epsilon_spent == 2.4 and verdict(c).startswith("At σ=1.5, DP-SAT")


def test_cells_that_differ_in_rho_stay_apart_and_share_the_baseline():
    runs = [record("dpsgd", 2.0, s, 0.80 + s / 100) for s in range(2)]
    runs += [record("dpsat", 2.0, s, 0.81 + s / 100, rho=0.05) for s in range(2)]
    runs += [record("dpsat", 2.0, s, 0.70 + s / 100, rho=0.5) for s in range(2)]
    cells = group_runs(runs)
    assert [(c.name, c.seeds) for c in cells] == [("DP-SGD", 2), ("DP-SAT ρ=0.05", 2), ("DP-SAT ρ=0.5", 2)]
    gains = {c.rho: round(c.gain_points, 6) for c in comparisons_at(cells, 2.0)}
    assert gains == {0.05: 1.0, 0.5: -10.0}


def test_the_rho_the_verdict_states_is_picked_by_validation_not_test_accuracy():
    runs = [record("dpsgd", 2.0, s, 0.80 + s / 100, validation=0.7) for s in range(2)]
    # ρ=0.05 wins on test accuracy, ρ=0.5 on validation accuracy: the choice must not look at the test set
    runs += [record("dpsat", 2.0, s, 0.83 + s / 100, rho=0.05, validation=0.70 + s / 100) for s in range(2)]
    runs += [record("dpsat", 2.0, s, 0.79 + s / 100, rho=0.5, validation=0.72 + s / 100) for s in range(2)]
    cells = group_runs(runs)
    assert [c.validation_mean for c in cells] == pytest.approx([0.7, 0.705, 0.725])
    assert validation_picks(cells) == {("dpsat", "ε=2"): {0.5}}
    compared = comparisons_at(cells, 2.0)
    assert {c.rho: c.chosen_by_validation for c in compared} == {0.05: False, 0.5: True}
    (stated,) = headline_comparisons(compared)
    assert stated.rho == 0.5 and "(ρ=0.5, picked by validation accuracy)" in verdict(stated)
    # one ρ only: nothing to pick; no validation split: every ρ is stated and says it was not chosen
    single = comparisons_at(group_runs(runs[:4]), 2.0)
    assert [c.chosen_by_validation for c in single] == [None] and single[0].validation_pick is None
    blind = [record("dpsgd", 2.0, 0, 0.8)] + [record("dpsat", 2.0, 0, 0.8, rho=r) for r in (0.05, 0.5)]
    unpicked = headline_comparisons(comparisons_at(group_runs(blind), 2.0))
    assert len(unpicked) == 2 and all("no validation split to choose by" in verdict(c) for c in unpicked)


def test_validation_picks_compare_shared_seeds_and_keep_ties():
    base = [record("dpsgd", 2.0, s, 0.8) for s in range(3)]
    # ρ=0.05 has seeds 0–2, ρ=0.5 only seed 0 (a lucky 0.9): over the shared seed 0, ρ=0.05 (0.95) wins
    runs = base + [record("dpsat", 2.0, s, 0.8, rho=0.05, validation=[0.95, 0.6, 0.6][s]) for s in range(3)]
    runs += [record("dpsat", 2.0, 0, 0.8, rho=0.5, validation=0.9)]
    assert validation_picks(group_runs(runs)) == {("dpsat", "ε=2"): {0.05}}
    tied = base + [record("dpsat", 2.0, s, 0.8, rho=r, validation=0.7) for s in range(3) for r in (0.05, 0.5)]
    compared = comparisons_at(group_runs(tied), 2.0)
    assert [c.validation_pick for c in compared] == ["tied", "tied"] and len(headline_comparisons(compared)) == 2
    assert all("tied for the best validation accuracy" in verdict(c) for c in compared)


def test_two_settings_never_read_the_same():
    a = record("dpsgd", 2.0, 0, 0.8)
    b = dataclasses.replace(a, config=dataclasses.replace(a.config, validation_fraction=0.0))
    assert setting_key(a) != setting_key(b) and describe_setting(a) != describe_setting(b)
    assert "validation 10%" in describe_setting(a) and setting_key(a) in describe_setting(a)
    fitted = dataclasses.replace(a, config=dataclasses.replace(a.config, preprocessing="fitted"))
    assert "fitted scaling" in describe_setting(fitted) and "fitted scaling" not in describe_setting(a)


def test_lambda_max_ratio_is_paired_by_seed():
    runs = [record("dpsgd", 2.0, 0, 0.80, run_id="a"), record("dpsat", 2.0, 0, 0.85, run_id="b")]
    (c,) = comparisons(group_runs(runs, {"a": spectrum(10.0), "b": spectrum(8.0)}))
    assert c.lambda_max_ratio.ratio == pytest.approx(0.8) and c.lambda_max_ratio.ci_low is None
    assert "λ_max ×0.800 (1 seed pair, no interval)" in verdict(c)
    assert c.backward_passes_ratio == 1 and c.releases_ratio == 1


def test_the_ratio_interval_is_a_t_interval_on_the_log_ratios():
    ratios = [1.31, 0.94, 1.12, 1.05]
    got = paired_ratio(ratios)
    logs = np.log(ratios)
    half = scipy_stats.t.ppf(0.975, len(ratios) - 1) * logs.std(ddof=1) / math.sqrt(len(ratios))
    assert got.n_pairs == 4 and got.ratio == pytest.approx(math.exp(logs.mean()))
    assert (got.ci_low, got.ci_high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert got.ci_low < got.ratio < got.ci_high
    # the log scale makes a ratio and its reciprocal mirror images: ×2 and ×0.5 have reciprocal intervals
    up, down = paired_ratio([2.0, 2.2, 1.8]), paired_ratio([1 / 2.0, 1 / 2.2, 1 / 1.8])
    assert (down.ci_low, down.ci_high) == pytest.approx((1 / up.ci_high, 1 / up.ci_low))
    single = paired_ratio([1.22])
    assert single.ratio == pytest.approx(1.22) and single.ci_low is None and single.ci_high is None
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.1, -0.5])
    with pytest.raises(ValueError, match="no pairs"):
        paired_ratio([])


def _adaptive(lam):
    return AdaptiveSharpness(lambda_max=lam, n_samples=100, n_params=10, seconds=0.1)


def test_sharpness_ratios_in_the_verdict_carry_their_interval_and_pair_count():
    lam = {0: (4.0, 5.0), 1: (3.0, 3.3), 2: (2.0, 2.6)}  # seed: (DP-SGD, DP-SAT)
    runs = [record(m, 2.0, s, 0.8, run_id=f"{m}{s}") for s in lam for m in ("dpsgd", "dpsat")]
    adaptive = {f"{m}{s}": _adaptive(lam[s][i]) for s in lam for i, m in enumerate(("dpsgd", "dpsat"))}
    spectra = {f"dpsgd{s}": spectrum(lam[s][0]) for s in lam} | {f"dpsat{s}": spectrum(2 * lam[s][1]) for s in lam}
    (c,) = comparisons(group_runs(runs, spectra, adaptive))
    expected = paired_ratio([b / a for a, b in lam.values()])
    assert c.sharpness_ratio == expected and c.sharpness_ratio.n_pairs == 3
    assert c.lambda_max_ratio.ratio == pytest.approx(2 * expected.ratio)
    interval = f"95% CI {expected.ci_low:#.3g} to {expected.ci_high:#.3g}, 3 seed pairs"
    shown = f"adaptive sharpness ×{expected.ratio:#.3g} ({interval})"
    assert shown in verdict(c) and ratio_text("adaptive sharpness", expected) == shown
    # a seed not analysed for one method: fewer pairs than the accuracy's, and the count says how many of them
    del adaptive["dpsat2"]
    (c,) = comparisons(group_runs(runs, spectra, adaptive))
    assert c.sharpness_ratio == paired_ratio([b / a for a, b in list(lam.values())[:2]])
    assert "adaptive sharpness ×" in verdict(c) and ", 2 of 3 seed pairs analysed)" in verdict(c)
    # a seed whose analysed curvature is ≤ 0: no ratio at all (a finding, not noise to drop), and why
    adaptive["dpsat2"] = _adaptive(-0.1)
    (c,) = comparisons(group_runs(runs, spectra, adaptive))
    assert c.sharpness_ratio == WithheldRatio(nonpositive_seeds=(2,)) and c.lambda_max_ratio.n_pairs == 3
    assert "adaptive sharpness ratio not shown: a value ≤ 0 at seed 2," in verdict(c)
    assert "adaptive sharpness ×" not in verdict(c)
    adaptive["dpsgd0"] = _adaptive(0.0)
    (c,) = comparisons(group_runs(runs, spectra, adaptive))
    assert "adaptive sharpness ratio not shown: a value ≤ 0 at seeds 0, 2," in verdict(c)


def test_small_ratios_keep_three_significant_figures():
    tiny = paired_ratio([0.003, 0.0031, 0.0033])
    text = ratio_text("λ_max", tiny)
    assert "0.00 " not in text and "0.00)" not in text and f"×{tiny.ratio:#.3g}" in text
    assert float(text.split("×")[1].split(" ")[0]) == pytest.approx(tiny.ratio, rel=5e-3)
    assert ratio_text("λ_max", paired_ratio([0.9997])) == "λ_max ×1.00 (1 seed pair, no interval)"
    assert ratio_text("λ_max", paired_ratio([123.4])) == "λ_max ×123 (1 seed pair, no interval)"


def test_the_caption_says_what_the_ratio_intervals_cover_only_where_a_ratio_is_shown():
    from dpsat_core.caveats import TRAINING_DATA
    from dpsat_core.results import DEFAULT_SAMPLES

    runs = [
        record(m, 2.0, s, 0.8 + 0.01 * s * (m == "dpsat"), run_id=f"{m}{s}") for s in (0, 1) for m in ("dpsgd", "dpsat")
    ]
    spectra = {f"{m}{s}": spectrum(3.0 + s) for s in (0, 1) for m in ("dpsgd", "dpsat")}
    (bare,) = comparisons(group_runs(runs))
    (sharp,) = comparisons(group_runs(runs, spectra))
    assert interval_scope([bare]).startswith("The accuracy intervals") and RATIO_INTERVAL not in interval_scope([bare])
    scope = interval_scope([bare, sharp])
    assert scope.startswith("The accuracy intervals") and scope.endswith(f" {RATIO_INTERVAL}.")
    assert "The 95% intervals" not in scope and interval_scope([sharp], ratios=False) == interval_scope([bare])
    assert TRAINING_DATA in RATIO_INTERVAL and f"fixed {DEFAULT_SAMPLES:,}-row training subset" in RATIO_INTERVAL
    assert "not the choice of rows" in RATIO_INTERVAL


def test_settings_separate_incomparable_runs_and_the_default_epsilon_is_the_best_covered():
    assert setting_key(record("dpsgd", 1.0, 0, 0.8)) == setting_key(record("dpsat", 8.0, 3, 0.8))
    assert setting_key(record("dpsgd", 1.0, 0, 0.8)) != setting_key(record("dpsgd", 1.0, 0, 0.8, epochs=6))
    runs = [
        record("dpsgd", 1.0, 0, 0.8),
        record("dpsgd", 3.0, 0, 0.8),
        record("dpsat", 3.0, 0, 0.8),
        record("dpsgd", 8.0, 0, 0.8),
    ]
    assert best_epsilon(group_runs(runs)) == 3.0
    assert best_epsilon(group_runs([record("sgd", None, 0, 0.9)])) is None


def _diverged(r):
    """`r` as if its training loss had ended 100× above ln(classes)."""
    return dataclasses.replace(r, summary=dataclasses.replace(r.summary, train_loss=100 * math.log(10)))


def test_diverged_runs_are_left_out_of_comparisons_unless_asked():
    runs = [record(m, 3.0, s, acc) for m, s, acc in (("dpsgd", 0, 0.80), ("dpsgd", 1, 0.82), ("dpsat", 0, 0.83))]
    runs.append(_diverged(record("dpsat", 3.0, 1, 0.15)))
    assert [r.diverged for r in runs] == [False, False, False, True]
    kept = {c.method: c.seeds for c in group_runs(runs)}
    assert kept == {"dpsgd": 2, "dpsat": 1}
    assert {c.method: c.seeds for c in group_runs(runs, include_diverged=True)} == {"dpsgd": 2, "dpsat": 2}
    assert diverged_left_out(runs, setting_key(runs[0])) == 1
    assert diverged_note(1).startswith("1 diverged run left out") and diverged_note(0) == ""
    assert diverged_note(2, included=True).startswith("2 diverged runs included")
    # judged against the stored start loss when there is one: 4.6 is over 10× a start of 0.3, not of ln(10)
    start = dataclasses.replace(runs[0].summary, train_loss=4.6)
    assert not start.diverged and dataclasses.replace(start, initial_train_loss=0.3).diverged


def test_the_pure_python_t_quantile_is_scipys_and_refuses_bad_input():
    from dpsat_core.student_t import t_quantile

    for dof in [*range(1, 40), 99, 400]:
        for p in (0.5, 0.8, 0.95, 0.975, 0.995, 0.9995):
            assert t_quantile(dof, p) == pytest.approx(scipy_stats.t.ppf(p, dof), rel=1e-11, abs=1e-12)
    for dof, p in ((0, 0.9), (2.5, 0.9), (3, 1.0), (3, 0.4)):
        with pytest.raises(ValueError):
            t_quantile(dof, p)


def test_a_data_set_is_found_by_the_file_name_the_pages_show_and_a_missing_one_lists_the_stored_ones():
    from dpsat_core.compare import pick_setting
    from dpsat_core.errors import StoreError

    def on(path, r):
        config = dataclasses.replace(r.config, dataset=path, target="label")
        return dataclasses.replace(r, config=config, config_hash=config.config_hash())

    upload = "/srv/dpsat_uploads/10bc4175/my_table.csv"
    runs = [on(upload, record(m, 3.0, s, 0.5, run_id=f"u-{m}-{s}")) for m in ("dpsgd", "dpsat") for s in (0, 1)]
    digits = [record(m, 3.0, s, 0.9) for m in ("dpsgd", "dpsat") for s in range(3)]  # more: the default
    assert pick_setting([*runs, *digits]) == pick_setting(digits)
    assert sorted(r.run_id for r in pick_setting([*runs, *digits], dataset="my_table.csv")) == sorted(
        r.run_id for r in runs
    )
    assert pick_setting([*runs, *digits], dataset=upload) == pick_setting([*runs, *digits], dataset="my_table.csv")
    with pytest.raises(StoreError, match="its data sets: /srv/dpsat_uploads/10bc4175/my_table.csv, digits"):
        pick_setting([*runs, *digits], dataset="other.csv")
    twin = [on("/srv/dpsat_uploads/99aa0000/my_table.csv", record("dpsgd", 3.0, 0, 0.5, run_id="twin"))]
    with pytest.raises(StoreError, match="several stored data sets are named 'my_table.csv'"):
        pick_setting([*runs, *twin], dataset="my_table.csv")


def test_runs_whose_model_predicts_one_class_are_named_as_such():
    runs = [record("dpsgd", e, 0, 0.63) for e in (1.0, 3.0)] + [record("dpsgd", 8.0, 0, 0.91)]
    assert one_class_note(runs) == ""  # not recorded (runs stored before it was kept): nothing claimed
    constant = [dataclasses.replace(r, summary=dataclasses.replace(r.summary, test_classes_predicted=1)) for r in runs]
    several = dataclasses.replace(runs[2].summary, test_classes_predicted=2)
    assert one_class_note([*constant[:2], dataclasses.replace(runs[2], summary=several)]).startswith(
        "2 runs (DP-SGD at ε=1, DP-SGD at ε=3) predict one class for every test example: their accuracy is that "
        "class's share of the test set"
    )
    assert one_class_note(constant[:1]).startswith("1 run (DP-SGD at ε=1) predicts one class for every test example")
    many = [
        dataclasses.replace(constant[0], config=dataclasses.replace(constant[0].config, epsilon=e)) for e in range(1, 7)
    ]
    assert "(DP-SGD at ε=1, DP-SGD at ε=2, DP-SGD at ε=3, DP-SGD at ε=4 and 2 more) predict" in one_class_note(many)
    sgd = record("sgd", None, 0, 0.6)  # no ε to speak of, nor to raise
    sgd = dataclasses.replace(sgd, summary=dataclasses.replace(sgd.summary, test_classes_predicted=1))
    assert one_class_note([sgd]) == (
        "1 run (SGD (non-private)) predicts one class for every test example: its accuracy is that class's share of "
        "the test set (train longer; or lower an lr so large that training collapsed)"
    )
    perfect = record("dpsgd", 1.0, 0, 1.0)  # a test set of one class, all of it right: nothing to explain
    assert (
        one_class_note(
            [dataclasses.replace(perfect, summary=dataclasses.replace(perfect.summary, test_classes_predicted=1))]
        )
        == ""
    )
