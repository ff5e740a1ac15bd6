"""The σ search: Opacus's acceptance window, few evaluations, a bracket that survives a poor model, clear limits."""

import math

import numpy as np
import pytest

from dpsat_core.noise_search import BudgetTooLow, model_epsilon, search_noise_multiplier
from tests.test_accounting import rdp_subsampled_gaussian


@pytest.mark.parametrize("history", [((1.0, 0.089, 55),), ((0.7, 0.05, 200),), ((3.0, 0.5, 2), (1.0, 0.05, 300))])
def test_the_model_is_rdp_at_integer_orders_composed_and_converted_as_opacus_does(history):
    delta = 1e-5
    orders = np.array([*range(2, 65), 80, 96, 128, 192, 256])
    rdp = sum(count * np.array([rdp_subsampled_gaussian(q, s, int(a)) for a in orders]) for s, q, count in history)
    converted = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    assert model_epsilon(history, delta=delta) == pytest.approx(converted.min(), rel=1e-9)


def test_the_model_at_sample_rate_1_is_the_gaussian_mechanisms_rdp():
    sigma, count, delta = 4.0, 3, 1e-6
    orders = np.array([*range(2, 65), 80, 96, 128, 192, 256])
    rdp = count * orders / (2 * sigma**2)
    converted = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    assert model_epsilon(((sigma, 1.0, count),), delta=delta) == pytest.approx(converted.min(), rel=1e-9)


def counting(epsilon_at):
    calls = []

    def counted(sigma):
        calls.append(sigma)
        return epsilon_at(sigma)

    return counted, calls


@pytest.mark.parametrize("target", [0.3, 1.0, 3.0, 20.0])
@pytest.mark.parametrize("bias", [0.5, 1.0, 3.0])  # how far the model is from the accountant, as a factor
def test_the_accepted_sigma_is_in_the_window_and_found_in_few_evaluations(target, bias):
    exact = lambda sigma: 2.0 / sigma**1.3 + 0.05 / sigma  # decreasing, not a power law  # noqa: E731
    epsilon_at, calls = counting(exact)
    found = search_noise_multiplier(
        epsilon_at, lambda s: bias * 2.0 / s**1.1, target_epsilon=target, tolerance=0.01, ceiling=1e6
    )
    assert target - 0.01 <= found.epsilon == exact(found.noise_multiplier) <= target
    assert found.evaluations == len(calls) <= 6


def test_a_model_with_a_kink_does_not_derail_the_search():
    kinked = lambda s: 2.0 / s if s > 0.5 else 40.0 / s  # noqa: E731
    epsilon_at, calls = counting(lambda s: 1.5 / s**2)
    found = search_noise_multiplier(epsilon_at, kinked, target_epsilon=8.0, tolerance=0.01, ceiling=1e6)
    assert 7.99 <= found.epsilon <= 8.0 and len(calls) <= 8


def test_a_target_no_sigma_reaches_raises_budget_too_low_at_the_ceiling():
    epsilon_at, calls = counting(lambda s: 0.5 + 1.0 / s)  # never below 0.5
    with pytest.raises(BudgetTooLow, match="above the target"):
        search_noise_multiplier(epsilon_at, lambda s: 1.0 / s, target_epsilon=0.3, tolerance=0.01, ceiling=1e6)
    assert calls[-1] == 1e6 and len(calls) <= 30


def test_an_infinite_epsilon_is_a_step_up_not_a_ratio():
    epsilon_at, _ = counting(lambda s: math.inf if s < 1.0 else 3.0 / s)
    found = search_noise_multiplier(epsilon_at, lambda s: 0.1 / s, target_epsilon=1.0, tolerance=0.01, ceiling=1e6)
    assert 0.99 <= found.epsilon <= 1.0
