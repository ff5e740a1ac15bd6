"""ε lower bounds from membership guesses: the one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023).

m canaries are each included independently with probability 1/2; an auditor guesses IN or OUT on r of
them (abstaining on the rest) and gets v right. Under (ε, δ)-DP (their Theorem 5.2, approximate DP),

    P[≥ v correct] ≤ β + 2·m·δ·α,   β = P[Bin(r, p) ≥ v],   α = max_{1≤i≤v} P[v−i ≤ Bin(r, p) < v] / i,

with p = e^ε/(1+e^ε), the accuracy of ε-DP randomised response. The largest ε whose bound is below the
significance level is a lower bound on the mechanism's ε at that confidence. Pure numbers: no torch.

Choosing the guesses: the auditor tries a small fixed grid of (k₊, k₋) — IN for the k₊ highest scores,
OUT for the k₋ lowest — and reports the largest bound. Each grid point is tested at 5%/G (Bonferroni, G
grid points), so all G bounds hold together with probability ≥ 95% and so does their maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom, rankdata

CONFIDENCE = 0.95
# k₊ as a share of the canaries; each share is tried with k₋ = 0 and with k₋ = k₊ (G = 12 grid points).
GUESS_SHARES = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
_BISECTIONS = 60
_EPSILON_CAP = 64.0  # e^64: randomised response that is right with probability 1 − 1.6e-28


@dataclass(frozen=True, kw_only=True)
class AuditBound:
    """The best grid point's guesses and the ε lower bound they give, at `confidence` over the whole grid."""

    guesses: int
    correct: int
    guessed_in: int  # k₊
    guessed_out: int  # k₋
    epsilon_lower_bound: float
    confidence: float
    grid_points: int


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability of ≥ `correct` right guesses out of `guesses` under (ε, δ)-DP (the bound above)."""
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 ≤ correct ≤ guesses ≤ canaries, got {correct}, {guesses}, {canaries}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need ε ≥ 0 and 0 ≤ δ ≤ 1, got ε={epsilon}, δ={delta}")
    if correct == 0:
        return 1.0
    p = float(expit(epsilon))
    beta = float(binom.sf(correct - 1, guesses, p))
    below = binom.pmf(np.arange(correct - 1, -1, -1), guesses, p)  # P[Bin = v−1], P[Bin = v−2], …, P[Bin = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(1.0, beta + 2 * canaries * delta * alpha)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float, significance: float) -> float:
    """The largest ε (to ~1e-9) whose p-value is below `significance`; 0 when even ε = 0 is not rejected."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")

    def rejected(eps: float) -> bool:
        return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta) < significance

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        if high >= _EPSILON_CAP:
            return _EPSILON_CAP
        low, high = high, min(2 * high, _EPSILON_CAP)
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if rejected(middle) else (low, middle)
    return low


def guess_grid(canaries: int) -> list[tuple[int, int]]:
    """The fixed (k₊, k₋) grid for m canaries: each share of `GUESS_SHARES` (at least one guess) with k₋ = 0
    and with k₋ = k₊, duplicates removed, never more than m guesses."""
    grid: list[tuple[int, int]] = []
    for share in GUESS_SHARES:
        k = max(1, round(share * canaries))
        for pair in ((k, 0), (k, k)):
            if sum(pair) <= canaries and pair not in grid:
                grid.append(pair)
    return grid


def score_order(scores: np.ndarray, *, seed: int) -> np.ndarray:
    """Canary indices from the highest score to the lowest; ties in a seeded random order (never by index,
    which would leak nothing but could bias the count)."""
    shuffle = np.random.default_rng(seed).permutation(len(scores))
    return shuffle[np.argsort(-np.asarray(scores, dtype=float)[shuffle], kind="stable")]


def audit_bound(scores: np.ndarray, included: np.ndarray, *, delta: float, seed: int = 0) -> AuditBound:
    """Guess IN for the top k₊ scores and OUT for the bottom k₋ over the grid; the best Bonferroni-corrected
    lower bound on ε at 95% confidence (a higher score must mean "more likely included")."""
    included = np.asarray(included, dtype=bool)
    m = len(included)
    order = score_order(scores, seed=seed)
    grid = guess_grid(m)
    significance = (1 - CONFIDENCE) / len(grid)
    best = None
    for k_in, k_out in grid:
        correct = int(included[order[:k_in]].sum()) + (int((~included[order[m - k_out :]]).sum()) if k_out else 0)
        eps = epsilon_lower_bound(
            canaries=m, guesses=k_in + k_out, correct=correct, delta=delta, significance=significance
        )
        if best is None or eps > best.epsilon_lower_bound:
            best = AuditBound(
                guesses=k_in + k_out,
                correct=correct,
                guessed_in=k_in,
                guessed_out=k_out,
                epsilon_lower_bound=eps,
                confidence=CONFIDENCE,
                grid_points=len(grid),
            )
    assert best is not None  # the grid is never empty for m ≥ 1
    return best


def membership_auc(scores: np.ndarray, included: np.ndarray) -> tuple[float, float]:
    """ROC AUC of the threshold attack "IN when the score is high" (ties count one half), and its standard
    error (Hanley & McNeil 1982)."""
    included = np.asarray(included, dtype=bool)
    n_in, n_out = int(included.sum()), int((~included).sum())
    if n_in == 0 or n_out == 0:
        return float("nan"), float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    auc = (ranks[included].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_in - 1) * (q1 - auc**2) + (n_out - 1) * (q2 - auc**2)) / (n_in * n_out)
    return float(auc), float(np.sqrt(max(var, 0.0)))
