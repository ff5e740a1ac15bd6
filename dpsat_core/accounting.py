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
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as opacus_rdp

from .config import ACCOUNTANTS
from .errors import ConfigError
from .noise_search import BudgetTooLow, Found, model_epsilon, search_noise_multiplier, signature

# Earlier releases composed before the training's: ((noise multiplier, sample rate, count), ...), as Opacus's
# accountants keep their `history`.
History = tuple[tuple[float, float, int], ...]
EPSILON_TOLERANCE = 0.01  # how far below the target a calibrated σ may leave ε
MAX_NOISE_MULTIPLIER = 1e6  # where Opacus's search gives up too
RDP_MEMO_SIZE = 1 << 16
# Where the σ search looks first for PRV: its ε is typically 8–14% under RDP's (shared/NOTES.md), and the search's
# model is RDP at integer orders. Only a starting point: it changes how many evaluations a search takes, never σ's
# acceptance test.
PRV_OVER_MODEL = 0.87


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


@functools.lru_cache(maxsize=1)
def _blas_pools() -> Any:
    """The BLAS thread pools loaded in this process, found once: scanning the loaded libraries cost ~8 ms an ε (a
    400-epoch run's per-epoch ε: seconds). The accountant's (numpy's and scipy's OpenBLAS) came with the import of
    `opacus.accountants` above, before any call."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def _quiet_one_blas_thread() -> Iterator[None]:
    """Accountant work on one BLAS thread, its numerical warnings silenced: OpenBLAS threads it would start
    keep spinning against torch's threads and slow the next training steps 2–3×."""
    with _blas_pools().limit(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _epsilon_with(
    accountant: str, *, noise_multiplier: float, sample_rate: float, releases: int, delta: float, prior: History = ()
) -> float:
    acc = create_accountant(mechanism=accountant)
    acc.history = [*prior, *([(noise_multiplier, sample_rate, releases)] if releases else [])]
    with _quiet_one_blas_thread():
        return float(acc.get_epsilon(delta=delta))


def _check_accountant(accountant: str) -> None:
    """One clear error for an accountant name this package does not know."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")


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
    _check_accountant(accountant)
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


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """The σ that keeps `releases` releases under the target ε, the accountant that certified it, and the ε it
    computed there (after any prior releases): the run's own final ε when it makes every planned release."""

    noise_multiplier: float
    accountant: str
    epsilon: float
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
    """Smallest σ (to 0.01 in ε, as Opacus's `get_noise_multiplier` accepts it) whose ε after the `prior` releases
    and `releases` releases at σ stays ≤ target, found in a few accountant evaluations (`noise_search`); cached:
    it is pure."""
    _check_accountant(accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon!r}")
    if releases < 1:
        raise ConfigError(f"calibration needs at least one release, got {releases}")

    def solve(mechanism: str) -> Found:
        try:
            return search_noise_multiplier(
                lambda sigma: _epsilon_with(
                    mechanism,
                    noise_multiplier=sigma,
                    sample_rate=sample_rate,
                    releases=releases,
                    delta=delta,
                    prior=prior,
                ),
                lambda sigma: model_epsilon((*prior, (sigma, sample_rate, releases)), delta=delta),
                target_epsilon=target_epsilon,
                tolerance=EPSILON_TOLERANCE,
                ceiling=MAX_NOISE_MULTIPLIER,
                first_ratio=PRV_OVER_MODEL if mechanism == "prv" else 1.0,
            )
        except BudgetTooLow:  # from either accountant
            raise ConfigError(
                f"epsilon={target_epsilon:g} is too small to reach with {releases} releases at "
                f"sample rate {sample_rate:.3g}: raise epsilon or train fewer epochs"
            ) from None

    try:
        found = solve(accountant)
        return Calibration(noise_multiplier=found.noise_multiplier, accountant=accountant, epsilon=found.epsilon)
    except ConfigError:
        raise
    except PRV_FAILURES as exc:
        if accountant != "prv" or not _is_prv_failure(exc):
            raise
    found = solve("rdp")
    return Calibration(
        noise_multiplier=found.noise_multiplier, accountant="rdp", epsilon=found.epsilon, note=PRV_FALLBACK_NOTE
    )


class AnswerBook(Protocol):
    """Where accountant answers are kept between runs and processes (the run store implements it)."""

    def find_accounting(self, question: str) -> Optional[dict[str, Any]]: ...

    def save_accounting(self, question: str, answer: dict[str, Any]) -> None: ...

    def find_accounting_many(self, questions: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    def save_accounting_many(self, answers: dict[str, dict[str, Any]]) -> None: ...


def _opacus_version() -> str:
    """The version of the Opacus loaded here, not the one on disk: a long-lived fork server keeps the code it loaded
    after an upgrade, and its answers must be keyed by that code."""
    import opacus

    return opacus.__version__


# How each kind of question is answered: part of its key, so answers of an earlier algorithm (the bisection of
# Opacus's `get_noise_multiplier` before "search-1") are never read as this one's; they are asked afresh.
ALGORITHMS = {"epsilon": "get_epsilon-1", "calibration": "search-2"}


def _settings(kind: str) -> str:
    """The settings that change which σ a calibration accepts (so retuning one asks afresh); '' for ε questions."""
    if kind != "calibration":
        return ""
    return (
        f"tolerance={EPSILON_TOLERANCE!r} ceiling={MAX_NOISE_MULTIPLIER!r} prv/model={PRV_OVER_MODEL!r} {signature()}"
    )


def _question(kind: str, **fields: Any) -> str:
    """The book's key for one question: its kind, every input, the algorithm that answers it and the Opacus version
    (a newer Opacus may answer differently, so its answers are asked afresh)."""
    return json.dumps(
        {
            "kind": kind,
            "algorithm": ALGORITHMS[kind],
            "settings": _settings(kind),
            "opacus": _opacus_version(),
            **fields,
        },
        sort_keys=True,
    )


def _recorded(
    book: Optional[AnswerBook],
    kind: str,
    compute: Callable[..., Any],
    decode: Callable[..., Any],
    also: Callable[[Any], None] = lambda answer: None,
    **question: Any,
) -> Any:
    """`compute(**question)`, read from `book` when it holds the answer (`decode` rebuilds it from JSON), else
    computed and written there (`also` then records what the computation answered on the way)."""
    if book is None:
        return compute(**question)
    key = _question(kind, **question)
    found = book.find_accounting(key)
    if found is not None:
        return decode(found)
    answer = compute(**question)
    book.save_accounting(key, dataclasses.asdict(answer))
    also(answer)
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


def record_epsilons(book: AnswerBook, questions: Sequence[dict[str, Any]]) -> None:
    """Put in `book` the `epsilon_spent` answers to `questions` (keyword arguments) that it lacks, read in one
    connection and written in one transaction (a run's every epoch at once)."""
    keys = {_question("epsilon", **question): question for question in questions}
    found = book.find_accounting_many(keys)
    missing = {key: dataclasses.asdict(epsilon_spent(**q)) for key, q in keys.items() if key not in found}
    if missing:
        book.save_accounting_many(missing)


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
    """`calibrate_noise`, read from `book` when it holds the answer, else computed and written there, with the ε
    its accountant computed at σ as the answer to that ε question (the run's final one)."""

    def record_epsilon(calibration: Calibration) -> None:
        question = dict(
            noise_multiplier=calibration.noise_multiplier,
            sample_rate=sample_rate,
            releases=releases,
            delta=delta,
            accountant=calibration.accountant,
            prior=prior,
        )
        spent = PrivacySpent(epsilon=calibration.epsilon, **question)
        book.save_accounting(_question("epsilon", **question), dataclasses.asdict(spent))  # type: ignore[union-attr]

    return _recorded(
        book,
        "calibration",
        calibrate_noise,
        lambda found: Calibration(**found),
        record_epsilon,
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        releases=releases,
        accountant=accountant,
        prior=prior,
    )
