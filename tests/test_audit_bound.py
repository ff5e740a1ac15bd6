"""The one-run ε lower bound against independent binomial computations, and the membership AUC against sklearn."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from dpsat_core.audit_bound import (
    CONFIDENCE,
    audit_bound,
    epsilon_lower_bound,
    guess_grid,
    membership_auc,
    p_value,
)


def pure_dp_bound(guesses: int, correct: int, significance: float) -> float:
    """At δ = 0: the ε where P[Bin(r, e^ε/(1+e^ε)) ≥ v] reaches the significance level (0 if ε = 0 does)."""
    tail = lambda eps: binom.sf(correct - 1, guesses, expit(eps)) - significance  # noqa: E731
    return 0.0 if tail(0.0) >= 0 else brentq(tail, 0.0, 60.0, xtol=1e-12)


@pytest.mark.parametrize("guesses, correct", [(10, 10), (50, 45), (100, 70), (500, 300), (200, 100)])
def test_the_bound_at_delta_zero_is_the_binomial_tail(guesses, correct):
    ours = epsilon_lower_bound(canaries=1000, guesses=guesses, correct=correct, delta=0.0, significance=0.05)
    assert ours == pytest.approx(pure_dp_bound(guesses, correct, 0.05), abs=1e-6)


def test_hand_made_guesses_give_the_best_bonferroni_bound_of_the_grid():
    rng = np.random.default_rng(1)
    included = rng.random(400) < 0.5
    scores = np.where(included, 1.0, 0.0) + rng.normal(0, 0.6, 400)  # distinct scores: no ties
    result = audit_bound(scores, included, delta=0.0)
    order = np.argsort(-scores)
    grid = guess_grid(400)
    significance = (1 - CONFIDENCE) / len(grid)
    expected = []
    for k_in, k_out in grid:
        right = included[order[:k_in]].sum() + (~included[order[400 - k_out :]]).sum() * (k_out > 0)
        expected.append((pure_dp_bound(k_in + k_out, int(right), significance), k_in + k_out, int(right)))
    best = max(expected)
    assert result.grid_points == len(grid) == 12 and result.confidence == 0.95
    assert result.epsilon_lower_bound == pytest.approx(best[0], abs=1e-6) and best[0] > 0.5
    assert (result.guesses, result.correct) == best[1:]


def test_delta_only_weakens_the_bound():
    kwargs = dict(canaries=1000, guesses=200, correct=180, significance=0.05)
    bounds = [epsilon_lower_bound(delta=d, **kwargs) for d in (0.0, 1e-6, 1e-4, 1e-3)]
    assert bounds == sorted(bounds, reverse=True) and bounds[-1] < bounds[0]
    p0 = p_value(canaries=1000, guesses=200, correct=180, epsilon=1.0, delta=0.0)
    p1 = p_value(canaries=1000, guesses=200, correct=180, epsilon=1.0, delta=1e-4)
    assert p1 > p0 == pytest.approx(binom.sf(179, 200, expit(1.0)))


def test_chance_guesses_bound_nothing():
    assert epsilon_lower_bound(canaries=100, guesses=100, correct=50, delta=1e-5, significance=0.05) == 0.0
    assert p_value(canaries=10, guesses=10, correct=0, epsilon=3.0, delta=0.0) == 1.0


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="correct ≤ guesses ≤ canaries"):
        p_value(canaries=10, guesses=11, correct=5, epsilon=1.0, delta=0.0)


def test_the_auc_is_sklearns_and_its_standard_error_shrinks_with_more_canaries():
    rng = np.random.default_rng(0)
    errors = []
    for m in (100, 2000):
        included = rng.random(m) < 0.5
        scores = np.round(included * 0.5 + rng.normal(0, 1, m), 1)  # rounded: ties count one half
        auc, stderr = membership_auc(scores, included)
        assert auc == pytest.approx(roc_auc_score(included, scores), abs=1e-12)
        errors.append(stderr)
    assert errors[1] < errors[0] / 3 and all(math.isfinite(e) for e in errors)
