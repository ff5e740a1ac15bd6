import pytest

from dpsat_core.compare import best_epsilon, compare_at, group_runs, setting_key
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


def test_the_verdict_gives_gain_flatness_cost_and_the_honest_caveat():
    runs = [
        record("dpsgd", 2.0, 0, 0.80),
        record("dpsgd", 2.0, 1, 0.82),
        record("dpsat", 2.0, 0, 0.85, seconds=1.1),
        record("dpsat", 2.0, 1, 0.87, seconds=1.1),
    ]
    spectra = {"dpsgd2.00": spectrum(10.0), "dpsat2.00": spectrum(8.0)}
    result = compare_at(group_runs(runs, spectra), 2.0, "dpsat")
    assert result.accuracy_gain_points == pytest.approx(5.0) and result.lambda_max_change == pytest.approx(-0.2)
    assert result.within_seed_spread is False
    assert result.text == "At ε=2, DP-SAT: +5.0 points over DP-SGD, λ_max -20.0%, 1.1× time; within the seed spread: no"
    close = [
        record("dpsgd", 2.0, 0, 0.80),
        record("dpsgd", 2.0, 1, 0.84),
        record("dpsat", 2.0, 0, 0.81),
        record("dpsat", 2.0, 1, 0.83),
    ]
    assert compare_at(group_runs(close), 2.0, "dpsat").within_seed_spread is True
    single = compare_at(group_runs([record("dpsgd", 2.0, 0, 0.8), record("dpsat", 2.0, 0, 0.9)]), 2.0, "dpsat")
    assert single.within_seed_spread is None and "one seed only" in single.text
    assert compare_at(group_runs(runs), 4.0, "dpsat") is None


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
