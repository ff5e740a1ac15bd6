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
import importlib.metadata
import json
import math
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

import numpy as np

from .config import ACCOUNTANTS, MAX_EPSILON
from .errors import ConfigError
from .noise_search import BudgetTooLow, Found, model_epsilon, search_noise_multiplier, signature
from .progress import StopFn, check_stop

# Earlier releases composed before the training's: ((noise multiplier, sample rate, count), ...), as Opacus's
# accountants keep their `history`.
History = tuple[tuple[float, float, int], ...]
EPSILON_TOLERANCE = 0.01  # how far below the target a calibrated σ may leave ε
MAX_NOISE_MULTIPLIER = 1e6  # where Opacus's search gives up too
RDP_MEMO_SIZE = 1 << 16
DISCRETISED_MEMO_SIZE = 4  # histories whose discretised PRVs are kept (1–10 MB each)
# Where the σ search looks first for PRV: its ε is typically 8–14% under RDP's (shared/NOTES.md), and the search's
# model is RDP at integer orders. Only a starting point: it changes how many evaluations a search takes, never σ's
# acceptance test.
PRV_OVER_MODEL = 0.87


_opacus_lock = threading.Lock()


def _opacus_rdp() -> Any:
    """Opacus's RDP analysis module, imported on first use (Opacus takes seconds to import: a refused config or a
    stored answer needs none of it), with its per-order RDP of the subsampled Gaussian, a pure function of
    (q, σ, α), memoised once per process.

    Every PRV `get_epsilon` computes it at ~60 fractional orders in Python, twice, to size its domain (92% of the
    call); the same (q, σ) comes back at every epoch of a run and in both of those passes. Memoised, the answers
    are the same floats (tests/test_accounting.py compares them with an untouched Opacus) at 7× fewer seconds
    for a run's per-epoch ε.
    """
    from opacus.accountants.analysis import rdp

    with _opacus_lock:
        if not hasattr(rdp._compute_rdp, "cache_info"):
            rdp._compute_rdp = functools.lru_cache(maxsize=RDP_MEMO_SIZE)(rdp._compute_rdp)
    return rdp


# Past this many points PRV's FFT needs gigabytes and minutes, and then fails anyway (σ = 0.1 at q = 0.18 over 180
# releases: 5.8e7 points, 124 s, "Floating point errors will dominate"); RDP answers at once (looser, still valid).
MAX_PRV_POINTS = 1 << 24
PRV_FALLBACK_NOTE = (
    "PRV accountant cannot answer at this budget (it failed, or its domain would be too large to try); ε computed "
    "with RDP (looser, still valid)"
)
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
    400-epoch run's per-epoch ε: seconds), after importing the accountant, which loads scipy's OpenBLAS beside
    numpy's."""
    from threadpoolctl import ThreadpoolController

    _opacus_rdp()
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
    """The accountant's ε for the history (PRV: Opacus's `get_epsilon`, the same float, through `_prv_curve`)."""
    if accountant == "prv" and releases:
        (eps,) = _prv_curve(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, releases=(releases,), delta=delta, prior=prior
        )
        return eps
    from opacus.accountants import create_accountant

    _opacus_rdp()
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


# Opacus's `PRVAccountant.get_epsilon` defaults: its ε error, and its δ error as a share of δ.
PRV_EPS_ERROR = 0.01
PRV_DELTA_ERROR_SHARE = 1e-3


# How far above the smallest ε found an order's lower bound must lie to be skipped (`_rdp_epsilon`): far above the
# rounding of Opacus's RDP series (terms dropped below e^-30), so a skipped order could never have been the minimum.
RDP_SKIP_MARGIN = 1e-6


def _rdp_epsilon(history: History, delta: float) -> float:
    """Opacus's RDP ε of `history` at δ (`RDPAccountant.get_epsilon`, its default orders), the same float, with
    RDP computed only at the orders that can hold the minimum: every integer order (closed form, cheap), then a
    fractional one (a Python series, ~98% of the time) only where a lower bound of its ε comes within
    `RDP_SKIP_MARGIN` of the smallest ε found. The bound holds because RDP is a Rényi divergence, which grows with
    the order: RDP at α is at least RDP at the largest order below α already computed (0 below the first). Skipped
    orders enter Opacus's own conversion as ∞, so the minimum, its order and its float are Opacus's. Had a skip
    been wrong, ε would only be larger (a minimum over fewer orders): a larger PRV domain, never an unsafe one."""
    from opacus.accountants import RDPAccountant

    opacus_rdp = _opacus_rdp()
    alphas = RDPAccountant.DEFAULT_ALPHAS
    orders = np.asarray(alphas, dtype=float)
    conversion = -(math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    exact: dict[int, list[float]] = {}

    def compute(i: int) -> float:
        exact[i] = [opacus_rdp._compute_rdp(q, sigma, alphas[i]) for sigma, q, _ in history]
        return total(i) + conversion[i]

    def total(i: int) -> float:
        return sum(count * rdp for (_, _, count), rdp in zip(history, exact[i]))

    best = min(compute(i) for i, alpha in enumerate(alphas) if float(alpha).is_integer())
    for i in sorted((i for i in range(len(alphas)) if i not in exact), key=lambda i: orders[i]):
        below = [j for j in exact if orders[j] < orders[i]]
        bound = (total(max(below, key=lambda j: orders[j])) if below else 0.0) + conversion[i]
        if bound <= best + RDP_SKIP_MARGIN * max(1.0, abs(best)):
            best = min(best, compute(i))
    rdp = sum(  # as Opacus's `compute_rdp` per entry, summed as its `get_privacy_spent` sums them
        [
            np.array([exact[i][k] if i in exact else np.inf for i in range(len(alphas))]) * count
            for k, (_, _, count) in enumerate(history)
        ]
    )
    return float(opacus_rdp.get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)[0])


def _prv_domain(history: History, eps_error: float, delta_error: float) -> Any:
    """The domain Opacus's `PRVAccountant._get_domain` builds for `history` (its `compute_safe_domain_size`, then its
    mesh), the same floats, its RDP ε's from `_rdp_epsilon`."""
    from opacus.accountants.analysis.prv import Domain

    total = sum(count for _, _, count in history)
    L_max = _rdp_epsilon(history, delta_error / 4)
    for sigma, q, _ in history:
        L_max = max(L_max, _rdp_epsilon(((sigma, q, 1),), delta_error / (8 * total)))
    L = max(L_max, eps_error) + 3
    mesh_size = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
    if 2 * L / mesh_size > MAX_PRV_POINTS:
        raise RuntimeError(f"the PRV domain would need {2 * L / mesh_size:.3g} points (at most {MAX_PRV_POINTS})")
    return Domain.create_aligned(-L, L, mesh_size)


@functools.lru_cache(maxsize=DISCRETISED_MEMO_SIZE)
def _discretised_prvs(history: History, eps_error: float, delta_error: float) -> tuple[Any, ...]:
    """Each release's PRV of `history`, truncated to and discretised on its domain, as `PRVAccountant._get_dprv`
    builds them; memoised (Opacus's composition only reads them): a run's per-epoch curve, asked right after its σ's
    calibration, reuses that calibration's last evaluation (the same history)."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable, discretize

    domain = _prv_domain(history, eps_error, delta_error)
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    return tuple(discretize(TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max), domain) for prv in prvs)


def _prv_curve(
    *,
    noise_multiplier: float,
    sample_rate: float,
    releases: tuple[int, ...],
    delta: float,
    prior: History,
    should_stop: Optional[StopFn] = None,
) -> list[Optional[float]]:
    """Opacus's PRV `eps_upper` after each count in `releases` of the training's releases (after `prior`), all on
    the domain and mesh Opacus builds for the last count: its PRVs discretised once, each count one FFT power of
    them. The last value is Opacus's `get_epsilon` for it, bit for bit (its domain from `_prv_domain`, the same
    floats; then Opacus's own calls in its order); an earlier count's is None where Opacus cannot read ε off its
    composition.

    Why an earlier count's value bounds ε with Opacus's own errors (ε error 0.01, δ error δ/1000), checked against
    Opacus 1.6's code: its domain half-width L is 3 + the larger of the RDP ε of the whole history at δ_err/4 and of
    each single release at δ_err/(8·n) (n releases in all); for fewer releases the first is no larger (each order's
    RDP is ≥ 0, so ε by RDP grows with the count) and the second no larger (a larger δ), so the last count's L is
    at least the L Opacus would build for an earlier one, and truncation and the FFT's wrap-around lose no more
    mass. Its mesh ε_err/√(n·log(12/δ_err)/2) enters only the Hoeffding bound on the rounding error of n
    compositions, exp(−2ε_err²/(n·h²)), which with the last count's finer h is smaller for fewer releases. ε is read
    off the composition by the same `compute_epsilon` with the same errors.
    """
    from opacus.accountants.analysis.prv import compose_heterogeneous

    eps_error, delta_error = PRV_EPS_ERROR, delta * PRV_DELTA_ERROR_SHARE
    history = (*prior, (noise_multiplier, sample_rate, releases[-1]))
    counts = [count for _, _, count in history]
    with _quiet_one_blas_thread():
        dprvs = list(_discretised_prvs(history, eps_error, delta_error))
        values: list[Optional[float]] = []
        for count in releases:
            check_stop(should_stop)  # between compositions: each is one FFT power on the whole domain
            composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=[*counts[:-1], count])
            try:
                values.append(float(composed.compute_epsilon(delta, delta_error, eps_error)[2]))
            except PRV_FAILURES as exc:
                if count == releases[-1] or not _is_prv_failure(exc):
                    raise
                values.append(None)
    return values


class _Memo:
    """Answers remembered per process by their question (the computations are pure), at most `kept`, the oldest
    dropped first; unlike `lru_cache`, the stop function passed beside a question is not part of it."""

    def __init__(self, kept: int):
        self._kept = kept
        self._answers: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, question: tuple) -> Any:
        with self._lock:
            return self._answers.get(question)

    def put(self, question: tuple, answer: Any) -> Any:
        with self._lock:
            if len(self._answers) >= self._kept:
                del self._answers[next(iter(self._answers))]  # the oldest question
            self._answers[question] = answer
        return answer

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()


def epsilon_curve(
    *,
    noise_multiplier: float,
    sample_rate: float,
    releases: tuple[int, ...],
    delta: float,
    accountant: str = "prv",
    prior: History = (),
    should_stop: Optional[StopFn] = None,
) -> tuple[PrivacySpent, ...]:
    """ε after each count in `releases` (increasing, ≥ 1) of one history: a run's ε after each epoch, its last
    count the run's whole. The last is `epsilon_spent`'s answer, bit for bit; with PRV an earlier one is Opacus's
    PRV upper bound on the last count's domain and mesh (`_prv_curve`: a valid bound with the same errors), so
    one domain and one discretisation serve every epoch. RDP, σ = 0, and where PRV fails: `epsilon_spent` for
    each count, as today. Remembered per process by its question (pure). `should_stop()` is asked before each
    count (a 400-epoch curve takes about a minute here): a stop raises `Cancelled` and remembers nothing."""
    question = (noise_multiplier, sample_rate, releases, delta, accountant, prior)
    known = _curves.get(question)
    if known is not None:
        return known
    return _curves.put(question, _epsilon_curve(*question, should_stop=should_stop))


def _epsilon_curve(
    noise_multiplier: float,
    sample_rate: float,
    releases: tuple[int, ...],
    delta: float,
    accountant: str,
    prior: History,
    *,
    should_stop: Optional[StopFn],
) -> tuple[PrivacySpent, ...]:
    _check_accountant(accountant)
    if not releases or releases[0] < 1 or any(a >= b for a, b in zip(releases, releases[1:])):
        raise ValueError(f"releases must be increasing counts ≥ 1, got {releases!r}")
    common = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta, prior=prior)

    def spent(count: int) -> PrivacySpent:
        check_stop(should_stop)
        return epsilon_spent(releases=count, accountant=accountant, **common)

    def each() -> tuple[PrivacySpent, ...]:
        return tuple(spent(count) for count in releases)

    if accountant != "prv" or noise_multiplier == 0 or any(sigma == 0 for sigma, _, _ in prior):
        return each()
    try:
        values = _prv_curve(releases=releases, should_stop=should_stop, **common)
    except PRV_FAILURES as exc:
        if not _is_prv_failure(exc):
            raise
        return each()
    if not math.isfinite(values[-1]):
        return each()
    return tuple(
        PrivacySpent(epsilon=eps, releases=count, accountant="prv", **common)
        if eps is not None and math.isfinite(eps)
        else spent(count)
        for count, eps in zip(releases, values)
    )


_curves = _Memo(1024)
epsilon_curve.cache_clear = _curves.clear  # type: ignore[attr-defined]  # cleared like the lru-cached answers


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """The σ that keeps `releases` releases under the target ε, the accountant that certified it, and the ε it
    computed there (after any prior releases): the run's own final ε when it makes every planned release."""

    noise_multiplier: float
    accountant: str
    epsilon: float
    note: str = ""


CALIBRATIONS_KEPT = 256  # calibrations remembered per process (each a few accountant evaluations)


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    releases: int,
    accountant: str = "prv",
    prior: History = (),
    should_stop: Optional[StopFn] = None,
) -> Calibration:
    """Smallest σ (to 0.01 in ε, as Opacus's `get_noise_multiplier` accepts it) whose ε after the `prior` releases
    and `releases` releases at σ stays ≤ target, found in a few accountant evaluations (`noise_search`);
    remembered per process by its question (pure). `should_stop()` is asked before each evaluation: a stop raises
    `Cancelled` between two of them (seconds at small ε) and remembers nothing."""
    question = (target_epsilon, delta, sample_rate, releases, accountant, prior)
    known = _calibrations.get(question)
    if known is not None:
        return known
    return _calibrations.put(question, _calibrate(*question, should_stop=should_stop))


_calibrations = _Memo(CALIBRATIONS_KEPT)
calibrate_noise.cache_clear = _calibrations.clear  # type: ignore[attr-defined]  # cleared like the lru-cached answers


def _calibrate(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    releases: int,
    accountant: str,
    prior: History,
    *,
    should_stop: Optional[StopFn],
) -> Calibration:
    """`calibrate_noise` computed: the search with `accountant`, or RDP where PRV cannot answer."""
    _check_accountant(accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon!r}")
    if target_epsilon > MAX_EPSILON:
        raise ConfigError(
            f"epsilon must be ≤ {MAX_EPSILON:g}, got {target_epsilon!r}: a larger ε protects nothing; for a "
            "non-private reference train method sgd (or sam)"
        )
    if releases < 1:
        raise ConfigError(f"calibration needs at least one release, got {releases}")

    def solve(mechanism: str) -> Found:
        def epsilon_at(sigma: float) -> float:
            check_stop(should_stop)  # between evaluations: each one is a whole accountant call
            return _epsilon_with(
                mechanism, noise_multiplier=sigma, sample_rate=sample_rate, releases=releases, delta=delta, prior=prior
            )

        try:
            return search_noise_multiplier(
                epsilon_at,
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
    after an upgrade, and its answers must be keyed by that code. Where none is loaded yet (or another thread is
    still importing it, before it sets `__version__`), the one on disk, which is what answers here: read without
    importing Opacus, so a stored answer costs no import."""
    loaded = getattr(sys.modules.get("opacus"), "__version__", None)
    return loaded if loaded is not None else _installed_opacus_version()


@functools.cache
def _installed_opacus_version() -> str:
    """The version of the Opacus on disk, read once (~0.6 ms a read, and every stored answer's key asks for it)."""
    return importlib.metadata.version("opacus")


# How each kind of question is answered: part of its key, so answers of an earlier algorithm (the bisection of
# Opacus's `get_noise_multiplier` before "search-1") are never read as this one's; they are asked afresh.
# "epsilon_within": ε after an earlier count of a history, on the domain of its last count (`epsilon_curve`): a
# bound close to, but not the same number as, `get_epsilon` for that count, so it is kept under its own kind.
ALGORITHMS = {"epsilon": "get_epsilon-1", "calibration": "search-2", "epsilon_within": "prv-curve-1"}


def _settings(kind: str) -> str:
    """The settings that change an answer (so retuning one asks afresh): PRV's errors and where it is not tried
    for every kind; a calibration's search settings too."""
    prv = f"prv_eps_error={PRV_EPS_ERROR!r} prv_delta_share={PRV_DELTA_ERROR_SHARE!r} prv_points={MAX_PRV_POINTS!r}"
    if kind != "calibration":
        return prv
    return (
        f"{prv} tolerance={EPSILON_TOLERANCE!r} ceiling={MAX_NOISE_MULTIPLIER!r} prv/model={PRV_OVER_MODEL!r} "
        f"{signature()}"
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


def recorded_epsilon_curve(
    book: Optional[AnswerBook],
    *,
    noise_multiplier: float,
    sample_rate: float,
    releases: tuple[int, ...],
    delta: float,
    accountant: str,
    prior: History = (),
    should_stop: Optional[StopFn] = None,
) -> tuple[PrivacySpent, ...]:
    """`epsilon_curve`, read from `book` when it holds every answer, else computed and the missing ones written:
    the last count's (and every RDP answer, the same numbers) under `recorded_epsilon`'s question, an earlier
    PRV count's under "epsilon_within" with the last count, so the two kinds of number never stand for each other."""
    common = dict(
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta, accountant=accountant, prior=prior
    )
    if book is None:
        return epsilon_curve(releases=releases, should_stop=should_stop, **common)
    final = releases[-1]
    keys = [
        _question("epsilon", releases=count, **common)
        if count == final or accountant != "prv"
        else _question("epsilon_within", releases=count, within=final, **common)
        for count in releases
    ]
    stored = book.find_accounting_many(keys)  # one connection, and below one transaction: a run's every epoch
    found = [stored.get(key) for key in keys]
    if all(answer is not None for answer in found):
        return tuple(_spent_from_json(answer) for answer in found)
    answers = epsilon_curve(releases=releases, should_stop=should_stop, **common)
    book.save_accounting_many(
        {key: dataclasses.asdict(spent) for key, answer, spent in zip(keys, found, answers) if answer is None}
    )
    return tuple(spent if answer is None else _spent_from_json(answer) for answer, spent in zip(found, answers))


def recorded_calibration(
    book: Optional[AnswerBook],
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    releases: int,
    accountant: str,
    prior: History = (),
    should_stop: Optional[StopFn] = None,
) -> Calibration:
    """`calibrate_noise`, read from `book` when it holds the answer, else computed and written there, with the ε
    its accountant computed at σ as the answer to that ε question (the run's final one). A stop (`should_stop`)
    while computing raises `Cancelled` and writes nothing."""

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
        functools.partial(calibrate_noise, should_stop=should_stop),
        lambda found: Calibration(**found),
        record_epsilon,
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        releases=releases,
        accountant=accountant,
        prior=prior,
    )
