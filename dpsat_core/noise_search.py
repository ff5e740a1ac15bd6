"""The search for the smallest noise multiplier σ whose ε stays under a target, in few accountant evaluations.

An accountant's ε(σ) is decreasing in σ and costs ~0.1–0.4 s at each new σ (PRV). Opacus's `get_noise_multiplier`
bisects from σ = 20 (about 12 evaluations); here a cheap model of ε (RDP of the subsampled Gaussian at integer
orders, closed form, numpy) proposes the first σ and, scaled by the accountant's ratio to it there, the second;
then the secant of log ε on log σ, inside a bracket that a bisection step keeps shrinking should a proposal leave
it (typically 2–4 evaluations, up to 7 seen at large ε and tiny q). The acceptance test is nearly Opacus's: the
first evaluated σ with target − tolerance ≤ ε(σ) ≤ target (Opacus asks ε < target), ε from the accountant itself;
the tolerance is absolute, in ε. Should the evaluation bound run out (an accountant far from monotone in σ), the
smallest σ seen under the target is returned, which may lie outside that window but never above the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy.special import gammaln, logsumexp, xlog1py, xlogy

# Releases, as Opacus's accountants keep their `history`: ((noise multiplier, sample rate, count), ...).
Releases = tuple[tuple[float, float, int], ...]
MODEL_ORDERS = np.array([*range(2, 65), 80, 96, 128, 192, 256], dtype=float)
SMALLEST_NOISE_MULTIPLIER = 1e-3  # where the model's root search starts: ε is astronomically large below it
MAX_EVALUATIONS = 60  # a bound for an accountant whose ε is not monotone in σ; never reached otherwise


def signature() -> str:
    """The search's own settings that change which σ it accepts (the model's orders, its evaluation bound), for
    the key of a stored calibration."""
    orders = ",".join(f"{a:g}" for a in MODEL_ORDERS)
    return f"orders={orders} max_evaluations={MAX_EVALUATIONS} floor={SMALLEST_NOISE_MULTIPLIER!r}"


# The σ-free parts of the binomial sum's log terms, orders × k (terms with k > α are -inf, so they drop out).
_K = np.arange(MODEL_ORDERS.max() + 1)[None, :]
_REST = np.maximum(MODEL_ORDERS[:, None] - _K, 0)
_LOG_BINOMIAL = np.where(
    _K <= MODEL_ORDERS[:, None], gammaln(MODEL_ORDERS[:, None] + 1) - gammaln(_K + 1) - gammaln(_REST + 1), -np.inf
)
_K_SQUARED_MINUS_K = _K * _K - _K


@dataclass(frozen=True, kw_only=True)
class Found:
    """The accepted σ, the accountant's ε there, and how many accountant evaluations the search took."""

    noise_multiplier: float
    epsilon: float
    evaluations: int


class BudgetTooLow(ValueError):
    """No σ up to the search's ceiling keeps ε under the target."""


def model_epsilon(releases: Releases, *, delta: float) -> float:
    """ε of `releases` by RDP at integer orders (Mironov et al. 2019's binomial sum, Balle et al. 2020's
    conversion): an upper bound close to the accountants' ε, cheap enough to solve for σ many times over."""
    rdp = np.zeros(len(MODEL_ORDERS))
    for sigma, q, count in releases:
        if count:
            log_terms = _LOG_BINOMIAL + xlog1py(_REST, -q) + xlogy(_K, q) + _K_SQUARED_MINUS_K / (2 * sigma**2)
            rdp += count * logsumexp(log_terms, axis=1) / (MODEL_ORDERS - 1)
    orders = MODEL_ORDERS
    eps = rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.min(eps))


def _root(fn: Callable[[float], float], level: float, low: float, high: float) -> float:
    """The u in [low, high] where the decreasing `fn` falls to `level` (an end when `level` lies outside its range
    there), by Brent's method to 1e-9: u is log σ."""
    if fn(high) > level:
        return high
    if fn(low) <= level:
        return low
    from scipy.optimize import brentq  # 0.3–0.6 s to import: only when σ is searched, not to refuse a config

    return float(brentq(lambda u: fn(u) - level, low, high, xtol=1e-9))


def search_noise_multiplier(
    epsilon_at: Callable[[float], float],
    model: Callable[[float], float],
    *,
    target_epsilon: float,
    tolerance: float,
    ceiling: float,
    first_ratio: float = 1.0,
) -> Found:
    """The first σ with target − tolerance ≤ `epsilon_at`(σ) ≤ target, aiming at the window's middle on log σ:
    first where the model times `first_ratio` (the accountant's usual ratio to it) says, then where the model
    scaled by the accountant's ratio to it there says, then along the secant of log ε through the last two σ's;
    a proposal outside the bracket known so far is replaced by its middle (or by a factor 2 while one end is
    unknown). Raises `BudgetTooLow` when even σ = `ceiling` spends more than the target."""
    log_aim = math.log(max(target_epsilon - tolerance / 2, target_epsilon / 2))  # the window's middle, or above 0
    log_floor, log_ceiling = math.log(SMALLEST_NOISE_MULTIPLIER), math.log(ceiling)

    def log_model(u: float) -> float:  # RDP's conversion can go below 0 at large δ: the model is only a guide
        return math.log(max(model(math.exp(u)), 1e-300))

    low, high = -math.inf, math.inf  # log σ's with ε(low) > target ≥ ε(high), once evaluated
    best: Optional[Found] = None
    seen: list[tuple[float, float]] = []  # (log σ, log ε) evaluated, finite and positive
    u = _root(log_model, log_aim - math.log(first_ratio), log_floor, log_ceiling)
    for evaluations in range(1, MAX_EVALUATIONS + 1):
        sigma = ceiling if u >= log_ceiling else math.exp(u)
        eps = epsilon_at(sigma)
        if eps <= target_epsilon:
            best = Found(noise_multiplier=sigma, epsilon=eps, evaluations=evaluations)
            if target_epsilon - eps <= tolerance:
                return best
            high = u
        elif u >= log_ceiling:
            raise BudgetTooLow(f"ε at σ = {ceiling:g} is {eps:g}, above the target {target_epsilon:g}")
        else:
            low = u
        if 0 < eps < math.inf:
            seen.append((u, math.log(eps)))
        u = _propose(seen, log_model, log_aim, low, high, log_floor, log_ceiling)
    if best is None:
        raise BudgetTooLow(f"no σ found under the target {target_epsilon:g} in {MAX_EVALUATIONS} evaluations")
    return best  # as Opacus's bisection would: the smallest σ known to keep the target


def _propose(
    seen: list[tuple[float, float]],
    log_model: Callable[[float], float],
    log_aim: float,
    low: float,
    high: float,
    log_floor: float,
    log_ceiling: float,
) -> float:
    """The next log σ to evaluate (see `search_noise_multiplier`)."""
    proposal = math.nan
    if len(seen) == 1:
        ((u, log_eps),) = seen
        shift = log_eps - log_model(u)
        proposal = _root(lambda v: log_model(v) + shift, log_aim, max(low, log_floor), min(high, log_ceiling))
    elif len(seen) > 1:
        (u0, y0), (u1, y1) = seen[-2:]
        slope = (y1 - y0) / (u1 - u0) if u1 != u0 else 0.0
        if slope < 0:
            proposal = u1 + (log_aim - y1) / slope
    if not math.isnan(proposal):
        proposal = min(max(proposal, log_floor), log_ceiling)
    if low < proposal < high:
        return proposal
    if math.isfinite(low) and math.isfinite(high):
        return (low + high) / 2
    return min(low + math.log(2), log_ceiling) if math.isfinite(low) else high - math.log(2)
