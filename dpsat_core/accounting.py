"""Privacy accounting as values: (σ, q, releases, δ) in, ε out, and the inverse.

A run's privacy is the composition of `releases` Poisson-subsampled Gaussian
mechanisms at noise multiplier σ and sample rate q (DP-SAM makes two releases a
step, on independent batches), after any `prior` releases (the private scaling
statistics of a user table: full-data Gaussian releases, sample rate 1), composed by
the same accountant as one heterogeneous history, never by adding ε's. Opacus's PRV accountant is the default; it can
fail for large ε (Opacus issue 604), where we fall back to RDP and say so.

Answers are cached per process, and (through `recorded_epsilon` and
`recorded_calibration`) in an answer book, the run store, shared by every run and
process that uses it: a stored answer is the accountant's own, as it computed it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable, Iterator, Optional, Protocol

from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

from .config import ACCOUNTANTS
from .errors import ConfigError

# Earlier releases composed before the training's: ((noise multiplier, sample rate, count), ...), as Opacus's
# accountants keep their `history`.
History = tuple[tuple[float, float, int], ...]
EPSILON_TOLERANCE = 0.01  # how far below the target a calibrated σ may leave ε
MAX_NOISE_MULTIPLIER = 1e6  # where Opacus's search gives up too
RDP_MEMO_SIZE = 1 << 16


def _memoize_opacus_rdp() -> None:
    """Memoise Opacus's per-order RDP of the subsampled Gaussian, a pure function of (q, σ, α), once per process.

    Every PRV `get_epsilon` computes it at ~60 fractional orders in Python, twice, to size its domain (92% of the
    call); the same (q, σ) comes back at every epoch of a run and in both of those passes. Memoised, the answers
    are the same floats (tests/test_accounting.py compares them with an untouched Opacus) at 7× fewer seconds
    for a run's per-epoch ε.
    """
    if not hasattr(opacus_rdp._compute_rdp, "cache_info"):
        opacus_rdp._compute_rdp = functools.lru_cache(maxsize=RDP_MEMO_SIZE)(opacus_rdp._compute_rdp)


_memoize_opacus_rdp()

PRV_FALLBACK_NOTE = "PRV accountant failed at this budget; ε computed with RDP (looser, still valid)"
# What Opacus 1.6's PRV code raises where its discretisation breaks down (large ε, Opacus #604; tiny δ):
# RuntimeError("Cannot compute epsilon"), RuntimeError("Discrete mean differs significantly from
# continuous mean."), a bare RuntimeError from its domain search, and ValueError("Floating point errors
# will dominate for such small values of delta…"). Anything else is a bug and surfaces.
PRV_FAILURES = (RuntimeError, ValueError)
PRV_VALUE_ERRORS = ("Floating point errors will dominate",)


def _is_prv_failure(exc: Exception) -> bool:
    """True for the PRV limitations above (ValueErrors only with their known message)."""
    return isinstance(exc, RuntimeError) or any(text in str(exc) for text in PRV_VALUE_ERRORS)


@dataclass(frozen=True, kw_only=True)
class PrivacySpent:
    """ε for (σ, q, releases, δ), and which accountant produced it."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    releases: int
    accountant: str
    note: str = ""
    prior: History = ()  # releases composed before training's (the private preprocessing statistics)


@contextmanager
def _quiet_one_blas_thread() -> Iterator[None]:
    """Accountant work on one BLAS thread, its numerical warnings silenced: OpenBLAS threads it would start
    keep spinning against torch's threads and slow the next training steps 2–3×."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _epsilon_with(
    accountant: str, *, noise_multiplier: float, sample_rate: float, releases: int, delta: float, prior: History = ()
) -> float:
    acc = create_accountant(mechanism=accountant)
    acc.history = [*prior, *([(noise_multiplier, sample_rate, releases)] if releases else [])]
    with _quiet_one_blas_thread():
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=4096)
def epsilon_spent(
    *,
    noise_multiplier: float,
    sample_rate: float,
    releases: int,
    delta: float,
    accountant: str = "prv",
    prior: History = (),
) -> PrivacySpent:
    """ε after the `prior` releases and `releases` subsampled Gaussian releases; inf when a σ is 0, 0 before any
    release. Cached (it is pure): the seeds of one ε, and every run's per-epoch ε at one setting, ask for the
    same numbers."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
    common = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, releases=releases, prior=prior)
    if releases == 0 and not prior:
        return PrivacySpent(epsilon=0.0, delta=delta, accountant=accountant, **common)
    if (releases and noise_multiplier == 0) or any(sigma == 0 for sigma, _, _ in prior):
        return PrivacySpent(epsilon=math.inf, delta=delta, accountant=accountant, **common)
    if accountant == "prv":
        try:
            eps = _epsilon_with("prv", delta=delta, **common)
            if math.isfinite(eps):
                return PrivacySpent(epsilon=eps, delta=delta, accountant="prv", **common)
        except PRV_FAILURES as exc:
            if not _is_prv_failure(exc):
                raise
        eps = _epsilon_with("rdp", delta=delta, **common)
        return PrivacySpent(epsilon=eps, delta=delta, accountant="rdp", note=PRV_FALLBACK_NOTE, **common)
    return PrivacySpent(epsilon=_epsilon_with("rdp", delta=delta, **common), delta=delta, accountant="rdp", **common)


@dataclass(frozen=True)
class Calibration:
    """The σ that keeps `releases` releases under the target ε, and the accountant that certified it."""

    noise_multiplier: float
    accountant: str
    note: str = ""


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    releases: int,
    accountant: str = "prv",
    prior: History = (),
) -> Calibration:
    """Smallest σ (to 0.01 in ε) whose ε after the `prior` releases and `releases` releases at σ stays ≤ target
    (cached: it is pure)."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon!r}")
    if releases < 1:
        raise ConfigError(f"calibration needs at least one release, got {releases}")

    def solve(mechanism: str) -> float:
        try:
            with _quiet_one_blas_thread():
                alone = get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=releases,
                    accountant=mechanism,
                    epsilon_tolerance=EPSILON_TOLERANCE,
                )
            if not prior:
                return alone
            return _solve_after(
                mechanism,
                prior,
                start=alone,
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                releases=releases,
            )
        except ValueError as exc:  # Opacus's "The privacy budget is too low.", from either accountant
            if "too low" in str(exc):
                raise ConfigError(
                    f"epsilon={target_epsilon:g} is too small to reach with {releases} releases at "
                    f"sample rate {sample_rate:.3g}: raise epsilon or train fewer epochs"
                ) from None
            raise

    try:
        return Calibration(solve(accountant), accountant)
    except ConfigError:
        raise
    except PRV_FAILURES as exc:
        if accountant != "prv" or not _is_prv_failure(exc):
            raise
    return Calibration(solve("rdp"), "rdp", PRV_FALLBACK_NOTE)


def _solve_after(
    mechanism: str,
    prior: History,
    *,
    start: float,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    releases: int,
) -> float:
    """The smallest σ (to `EPSILON_TOLERANCE` below the target, as Opacus's `get_noise_multiplier` searches) for the
    composed history `prior` + (σ, q, releases), which Opacus's function cannot take. `start` is the σ of the
    releases alone: composing more releases only raises ε, so the answer is at least `start`."""

    def epsilon(sigma: float) -> float:
        return _epsilon_with(
            mechanism, noise_multiplier=sigma, sample_rate=sample_rate, releases=releases, delta=delta, prior=prior
        )

    alone = _epsilon_with(mechanism, noise_multiplier=1.0, sample_rate=1.0, releases=0, delta=delta, prior=prior)
    if alone >= target_epsilon:
        raise ValueError("The privacy budget is too low.")  # the prior alone spends it: no σ is enough
    low, high, step = start, start, 0.05 * start
    eps_high = epsilon(high)
    if eps_high <= target_epsilon:  # σ is at least `start`, so `start` is the smallest that keeps the target
        return high
    while eps_high > target_epsilon:
        low, high, step = high, high + step, 2 * step
        eps_high = epsilon(high)
        if high > MAX_NOISE_MULTIPLIER:
            raise ValueError("The privacy budget is too low.")
    for _ in range(60):  # halvings: far below any tolerance, and never an endless loop
        if target_epsilon - eps_high <= EPSILON_TOLERANCE:
            break
        sigma = (low + high) / 2
        eps = epsilon(sigma)
        if eps < target_epsilon:
            high, eps_high = sigma, eps
        else:
            low = sigma
    return high


class AnswerBook(Protocol):
    """Where accountant answers are kept between runs and processes (the run store implements it)."""

    def find_accounting(self, question: str) -> Optional[dict[str, Any]]: ...

    def save_accounting(self, question: str, answer: dict[str, Any]) -> None: ...


@functools.lru_cache(maxsize=1)
def _opacus_version() -> str:
    return version("opacus")


def _question(kind: str, **fields: Any) -> str:
    """The book's key for one question: its kind, every input, and the Opacus version that answers it (a newer
    Opacus may answer differently, so its answers are asked afresh)."""
    return json.dumps({"kind": kind, "opacus": _opacus_version(), **fields}, sort_keys=True)


def _recorded(
    book: Optional[AnswerBook], kind: str, compute: Callable[..., Any], decode: Callable[..., Any], **question: Any
) -> Any:
    """`compute(**question)`, read from `book` when it holds the answer (`decode` rebuilds it from JSON), else
    computed and written there."""
    if book is None:
        return compute(**question)
    key = _question(kind, **question)
    found = book.find_accounting(key)
    if found is not None:
        return decode(found)
    answer = compute(**question)
    book.save_accounting(key, dataclasses.asdict(answer))
    return answer


def _spent_from_json(found: dict[str, Any]) -> PrivacySpent:
    """A stored `PrivacySpent` (JSON gives the prior back as lists)."""
    return PrivacySpent(**{**found, "prior": tuple(tuple(release) for release in found.get("prior", ()))})


def recorded_epsilon(
    book: Optional[AnswerBook],
    *,
    noise_multiplier: float,
    sample_rate: float,
    releases: int,
    delta: float,
    accountant: str,
    prior: History = (),
) -> PrivacySpent:
    """`epsilon_spent`, read from `book` when it holds the answer, else computed and written there."""
    return _recorded(
        book,
        "epsilon",
        epsilon_spent,
        _spent_from_json,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        releases=releases,
        delta=delta,
        accountant=accountant,
        prior=prior,
    )


def recorded_calibration(
    book: Optional[AnswerBook],
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    releases: int,
    accountant: str,
    prior: History = (),
) -> Calibration:
    """`calibrate_noise`, read from `book` when it holds the answer, else computed and written there."""
    return _recorded(
        book,
        "calibration",
        calibrate_noise,
        lambda found: Calibration(**found),
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        releases=releases,
        accountant=accountant,
        prior=prior,
    )
