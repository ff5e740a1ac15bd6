"""Student's t quantile for whole degrees of freedom in pure Python, so confidence intervals on a page need no
scipy import (its first import costs about 0.2 s on this machine)."""

from __future__ import annotations

import math


def _central_probability(theta: float, dof: int) -> float:
    """P(|T| ≤ √dof·tan θ) for T ~ t(dof): the closed forms of Abramowitz & Stegun 26.7.3–26.7.4."""
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 0:  # sin θ·(1 + ½cos²θ + (1·3)/(2·4)cos⁴θ + …), dof/2 terms
        term = total = 1.0
        for k in range(1, dof // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return sin * total
    if dof == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)  # (2/π)(θ + sin θ·(cos θ + ⅔cos³θ + …)), (dof−1)/2 terms
    for k in range(1, (dof - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + sin * total)


def t_quantile(dof: int, p: float) -> float:
    """The p-quantile of Student's t with `dof` (a whole number ≥ 1) degrees of freedom, for 0.5 ≤ p < 1, to
    double precision (bisection on the closed-form distribution function)."""
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"degrees of freedom must be a whole number ≥ 1, got {dof!r}")
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p!r}")
    central = 2 * p - 1
    low, high = 0.0, math.pi / 2
    for _ in range(200):  # θ = atan(t/√dof) in [0, π/2); 200 halvings pass double precision
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if _central_probability(mid, int(dof)) < central else (low, mid)
    return math.sqrt(dof) * math.tan((low + high) / 2)
