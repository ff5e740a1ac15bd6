"""ε must equal an accountant's ε for (σ, q, releases); calibration must land just under the target."""

import dataclasses
import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

import dpsat_core.accounting as accounting
import dpsat_core.noise_search as noise_search
from dpsat_core import Calibration, ConfigError, RunStore, TrainConfig, calibrate_noise, epsilon_spent, prepare, train
from dpsat_core.accounting import epsilon_curve
from tests.factories import store_finished


@pytest.fixture(autouse=True)
def fresh_caches():
    """ε and σ are cached per process; tests that swap the accountant must not see earlier answers."""
    for cached in (epsilon_spent, epsilon_curve, calibrate_noise):
        cached.cache_clear()
    yield
    for cached in (epsilon_spent, epsilon_curve, calibrate_noise):
        cached.cache_clear()


def rdp_subsampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """Mironov, Talwar & Zhang (2019), integer α: log Σₖ C(α,k)(1−q)^(α−k) qᵏ exp((k²−k)/2σ²) / (α−1)."""
    log_terms = np.array(
        [
            math.log(math.comb(alpha, k))
            + (alpha - k) * math.log1p(-q)
            + k * math.log(q)
            + (k * k - k) / (2 * sigma**2)
            for k in range(alpha + 1)
        ]
    )
    top = log_terms.max()
    return float(top + math.log(np.exp(log_terms - top).sum())) / (alpha - 1)


@pytest.mark.parametrize("q, sigma", [(0.05, 1.0), (0.1, 1.5), (0.01, 0.8), (0.2, 3.0)])
def test_opacus_rdp_matches_the_binomial_formula(q, sigma):
    orders = list(range(2, 33))
    ours = np.array([rdp_subsampled_gaussian(q, sigma, a) for a in orders]) * 100
    np.testing.assert_allclose(compute_rdp(q=q, noise_multiplier=sigma, steps=100, orders=orders), ours, rtol=1e-9)


def test_epsilon_from_integer_orders_bounds_opacus_rdp_from_above():
    q, sigma, releases, delta = 0.05, 1.0, 300, 1e-5
    orders = np.arange(2, 129)
    rdp = np.array([rdp_subsampled_gaussian(q, sigma, int(a)) for a in orders]) * releases
    # Balle et al. (2020) conversion, as Opacus uses it
    ours = np.min(rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders))
    theirs = epsilon_spent(
        noise_multiplier=sigma, sample_rate=q, releases=releases, delta=delta, accountant="rdp"
    ).epsilon
    assert theirs <= ours + 1e-9 and theirs == pytest.approx(ours, rel=0.02)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("method, per_step", [("dpsgd", 1), ("dpsam", 2), ("dpsat", 1)])
def test_reported_epsilon_is_the_accountants_for_sigma_q_releases(method, per_step, accountant, quick):
    cfg = TrainConfig(**{**quick.to_dict(), "method": method, "accountant": accountant, "epochs": 2})
    result = train(cfg)
    summary = result.summary()
    assert summary.releases == per_step * summary.steps == per_step * result.plan.steps
    reference = (PRVAccountant if accountant == "prv" else RDPAccountant)()
    reference.history = [(summary.noise_multiplier, summary.sample_rate, summary.releases)]
    assert summary.epsilon_spent == pytest.approx(reference.get_epsilon(delta=summary.delta), rel=1e-9)
    assert summary.target_epsilon - 0.05 <= summary.epsilon_spent <= summary.target_epsilon
    epsilons = [e.epsilon_spent for e in result.epochs]
    assert epsilons == sorted(epsilons) and epsilons[-1] == summary.epsilon_spent
    question = dict(noise_multiplier=summary.noise_multiplier, sample_rate=summary.sample_rate, delta=summary.delta)
    curve = epsilon_curve(releases=tuple(e.releases for e in result.epochs), accountant=accountant, **question)
    assert epsilons == [spent.epsilon for spent in curve]  # each epoch's ε from the one domain of the whole run
    assert result.privacy == epsilon_spent(releases=summary.releases, accountant=accountant, **question)


def test_dpsat_spends_what_dpsgd_spends_and_dpsam_needs_more_noise(quick):
    plans = {m: prepare(TrainConfig(**{**quick.to_dict(), "method": m})).plan for m in ("dpsgd", "dpsat", "dpsam")}
    assert plans["dpsat"] == plans["dpsgd"]
    assert plans["dpsam"].planned_releases == 2 * plans["dpsgd"].planned_releases
    assert plans["dpsam"].noise_multiplier > plans["dpsgd"].noise_multiplier


def test_dpsam_draws_an_independent_batch_for_each_release():
    trainer = prepare(TrainConfig(method="dpsam", dataset="breast_cancer", epsilon=2.0))
    draws = []
    batch = (trainer.x_train[:32], trainer.y_train[:32])
    trainer.step_fn(lambda: draws.append(1) or batch)
    assert len(draws) == 2 and trainer.releases == 2


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target", [0.5, 1.0, 3.0, 8.0])
def test_calibration_lands_within_0_05_under_the_target(target, accountant):
    q, releases, delta = 128 / 1437, 165, 1e-4
    cal = calibrate_noise(target_epsilon=target, delta=delta, sample_rate=q, releases=releases, accountant=accountant)
    spent = epsilon_spent(
        noise_multiplier=cal.noise_multiplier, sample_rate=q, releases=releases, delta=delta, accountant=cal.accountant
    )
    assert target - 0.05 <= spent.epsilon <= target


def test_prv_failure_falls_back_to_rdp_with_a_note_and_other_errors_surface(monkeypatch):
    real = accounting._epsilon_with
    raised = {"prv": RuntimeError("Discrete mean differs significantly from continuous mean.")}

    def failing_prv(mechanism, **kwargs):
        if mechanism == "prv":
            raise raised["prv"]
        return real(mechanism, **kwargs)

    monkeypatch.setattr(accounting, "_epsilon_with", failing_prv)
    spent = epsilon_spent(noise_multiplier=1.0, sample_rate=0.05, releases=100, delta=1e-5, accountant="prv")
    assert spent.accountant == "rdp" and "RDP" in spent.note
    assert spent.epsilon == pytest.approx(real("rdp", noise_multiplier=1.0, sample_rate=0.05, releases=100, delta=1e-5))
    raised["prv"] = ValueError("Floating point errors will dominate for such small values of delta.")
    epsilon_spent.cache_clear()
    assert epsilon_spent(noise_multiplier=1.0, sample_rate=0.05, releases=100, delta=1e-5).accountant == "rdp"
    raised["prv"] = TypeError("a bug, not a PRV limitation")
    epsilon_spent.cache_clear()
    with pytest.raises(TypeError, match="a bug"):
        epsilon_spent(noise_multiplier=1.0, sample_rate=0.05, releases=100, delta=1e-5, accountant="prv")


def test_a_target_above_100_is_refused_by_calibration_yet_stored_runs_with_one_still_load(tmp_path):
    with pytest.raises(ConfigError, match=r"epsilon must be ≤ 100, got 1000000000.0: a larger ε protects nothing"):
        calibrate_noise(target_epsilon=1e9, delta=1e-5, sample_rate=0.1, releases=100)
    store = RunStore(tmp_path / "runs.db")  # a run stored before the cap, with target 200
    run_id = store_finished(store, TrainConfig(method="dpsgd", dataset="digits", epsilon=200.0))
    assert [r.run_id for r in store.list_runs()] == [run_id] and store.get(run_id).config.epsilon == 200.0


def test_a_tiny_sigma_goes_to_rdp_at_once_instead_of_a_prv_domain_of_gigabytes(monkeypatch):
    """σ = 0.02 at q 0.18 over 180 releases: PRV's domain would need ~10⁹ points (minutes, then memory or a float
    failure); the size is known before anything is allocated, so RDP answers, with the fallback's note."""
    spent = epsilon_spent(noise_multiplier=0.02, sample_rate=256 / 1437, releases=180, delta=1e-5)
    rdp = RDPAccountant()
    rdp.history = [(0.02, 256 / 1437, 180)]
    assert spent.accountant == "rdp" and spent.note == accounting.PRV_FALLBACK_NOTE
    assert spent.epsilon == pytest.approx(rdp.get_epsilon(delta=1e-5), rel=1e-12)
    monkeypatch.setattr(accounting, "MAX_PRV_POINTS", 1000)  # a small domain is refused the same way
    with pytest.raises(RuntimeError, match="would need .* points"):
        accounting._prv_domain(((1.0, 0.05, 100),), 0.01, 1e-8)


def _failing_prv(monkeypatch, raised: dict) -> None:
    """Make the PRV accountant raise `raised["prv"]`, as Opacus's does where its discretisation breaks."""
    real = accounting._epsilon_with

    def failing_prv(mechanism, **kwargs):
        if mechanism == "prv":
            raise raised["prv"]
        return real(mechanism, **kwargs)

    monkeypatch.setattr(accounting, "_epsilon_with", failing_prv)


def test_calibration_falls_back_only_on_prv_failures(monkeypatch):
    raised = {"prv": RuntimeError("Cannot compute epsilon")}
    _failing_prv(monkeypatch, raised)
    calibration = calibrate_noise(target_epsilon=3.1, delta=1e-5, sample_rate=0.05, releases=123, accountant="prv")
    assert calibration.accountant == "rdp" and "RDP" in calibration.note
    raised["prv"] = ValueError("Floating point errors will dominate for such small values of delta.")
    assert calibrate_noise(target_epsilon=3.3, delta=1e-5, sample_rate=0.05, releases=123).accountant == "rdp"
    raised["prv"] = ValueError("Can only compose evenly sized discrete PRVs")
    with pytest.raises(ValueError, match="evenly sized"):
        calibrate_noise(target_epsilon=3.2, delta=1e-5, sample_rate=0.05, releases=123, accountant="prv")


def _epsilon_of(accountant: str, history, delta: float) -> float:
    """ε from an Opacus accountant built here, independently of dpsat_core."""
    reference = (PRVAccountant if accountant == "prv" else RDPAccountant)()
    reference.history = list(history)
    return reference.get_epsilon(delta=delta)


@pytest.mark.parametrize(
    "accountant, target, q, releases, delta",
    [
        ("prv", 1.0, 128 / 1437, 165, 1e-4),
        ("prv", 8.0, 0.01, 55, 1e-5),  # small σ, where the integer-order model is poorest
        ("prv", 0.5, 0.3, 2000, 1e-5),
        ("rdp", 3.0, 0.01, 330, 1e-5),
        ("rdp", 8.0, 0.089, 330, 1e-6),
    ],
)
def test_calibration_lands_in_the_window_opacus_bisection_accepts_in_a_few_evaluations(
    accountant, target, q, releases, delta, monkeypatch
):
    from opacus.accountants.utils import get_noise_multiplier

    real, evaluations = accounting._epsilon_with, []
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: evaluations.append(1) or real(*a, **k))
    ours = calibrate_noise(target_epsilon=target, delta=delta, sample_rate=q, releases=releases, accountant=accountant)
    theirs = get_noise_multiplier(
        target_epsilon=target, target_delta=delta, sample_rate=q, steps=releases, accountant=accountant
    )
    assert ours.accountant == accountant and 1 <= len(evaluations) <= 5  # Opacus's bisection: ~12
    for sigma in (ours.noise_multiplier, theirs):  # ε is decreasing in σ: both lie in [σ(target), σ(target − 0.01)]
        assert target - 0.01 <= _epsilon_of(accountant, [(sigma, q, releases)], delta) <= target
    monkeypatch.undo()
    final = epsilon_spent(
        noise_multiplier=ours.noise_multiplier, sample_rate=q, releases=releases, delta=delta, accountant=accountant
    )
    assert ours.epsilon == final.epsilon  # bit for bit: the run's final ε at σ (threads as the run's: one BLAS thread)
    assert ours.noise_multiplier == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibration_after_prior_releases_lands_in_the_window_of_the_composed_history(accountant):
    prior, q, releases, delta, target = ((4.0, 1.0, 2),), 0.05, 300, 1e-5, 3.0
    alone = calibrate_noise(target_epsilon=target, delta=delta, sample_rate=q, releases=releases, accountant=accountant)
    after = calibrate_noise(
        target_epsilon=target, delta=delta, sample_rate=q, releases=releases, accountant=accountant, prior=prior
    )
    composed = _epsilon_of(accountant, [*prior, (after.noise_multiplier, q, releases)], delta)
    assert target - 0.01 <= composed <= target and composed == pytest.approx(after.epsilon, rel=1e-12)
    assert after.noise_multiplier > alone.noise_multiplier  # the prior spends part of the budget


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_target_that_is_not_a_positive_number_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="target epsilon must be > 0"):
        calibrate_noise(target_epsilon=bad, delta=1e-5, sample_rate=0.05, releases=100)


def test_edge_cases_of_epsilon_spent():
    assert epsilon_spent(noise_multiplier=1.0, sample_rate=0.1, releases=0, delta=1e-5).epsilon == 0.0
    assert math.isinf(epsilon_spent(noise_multiplier=0.0, sample_rate=0.1, releases=5, delta=1e-5).epsilon)
    prv = epsilon_spent(noise_multiplier=1.0, sample_rate=0.05, releases=300, delta=1e-5, accountant="prv").epsilon
    rdp = epsilon_spent(noise_multiplier=1.0, sample_rate=0.05, releases=300, delta=1e-5, accountant="rdp").epsilon
    assert prv < rdp  # PRV is the tighter of the two


def test_an_unreachable_budget_is_a_clear_error():
    from dpsat_core import ConfigError

    with pytest.raises(ConfigError, match="too small"):
        calibrate_noise(target_epsilon=1e-9, delta=1e-5, sample_rate=1.0, releases=10_000, accountant="rdp")


def test_an_unreachable_budget_is_a_clear_error_after_a_prv_failure_too(monkeypatch):
    # what PRV does where its discretisation breaks (tiny δ, Opacus #604)
    _failing_prv(
        monkeypatch, {"prv": ValueError("Floating point errors will dominate for such small values of delta.")}
    )
    with pytest.raises(ConfigError, match="epsilon=1e-09 is too small to reach with 77 releases"):  # RDP's verdict
        calibrate_noise(target_epsilon=1e-9, delta=1e-14, sample_rate=0.089, releases=77, accountant="prv")


def test_a_prior_that_spends_the_budget_alone_is_a_clear_error():
    with pytest.raises(ConfigError, match="too small to reach"):
        calibrate_noise(target_epsilon=1.0, delta=1e-5, sample_rate=0.05, releases=10, prior=((0.5, 1.0, 2),))


def test_a_tiny_delta_that_breaks_prv_falls_back_to_rdp_instead_of_crashing():
    # Opacus's PRV raises "Floating point errors will dominate…" here (found by review: δ = 1e-14)
    spent = epsilon_spent(noise_multiplier=1.0, sample_rate=0.089, releases=44, delta=1e-14, accountant="prv")
    assert spent.accountant == "rdp" and "RDP" in spent.note and math.isfinite(spent.epsilon)


def test_the_accountant_runs_once_per_question_on_one_blas_thread(monkeypatch):
    from threadpoolctl import threadpool_info

    real, calls = accounting._epsilon_with, []

    def counted(mechanism, **kwargs):
        calls.append(mechanism)
        return real(mechanism, **kwargs)

    monkeypatch.setattr(accounting, "_epsilon_with", counted)
    question = dict(noise_multiplier=1.1, sample_rate=0.05, releases=200, delta=1e-5)
    first = epsilon_spent(**question)
    assert epsilon_spent(**question) == first and len(calls) == 1  # the seeds of one ε ask the same question
    assert epsilon_spent(**{**question, "releases": 201}).epsilon > first.epsilon and len(calls) == 2
    with accounting._quiet_one_blas_thread():
        inside = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert inside and all(n == 1 for n in inside)


def test_a_recorded_answer_is_the_accountants_and_is_read_back_without_asking_again(tmp_path, monkeypatch):
    from dpsat_core import RunStore
    from dpsat_core.accounting import recorded_calibration, recorded_epsilon

    store = RunStore(tmp_path / "runs.db")
    question = dict(noise_multiplier=1.3, sample_rate=0.05, releases=60, delta=1e-5, accountant="prv")
    fresh = epsilon_spent(**question)
    assert recorded_epsilon(store, **question) == fresh
    epsilon_spent.cache_clear()
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: pytest.fail("the accountant was asked again"))
    assert recorded_epsilon(RunStore(store.path), **question) == fresh  # another process: the same file
    assert math.isinf(recorded_epsilon(store, **{**question, "noise_multiplier": 0.0}).epsilon)  # ∞ survives JSON
    target = dict(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, releases=60, accountant="rdp")
    monkeypatch.undo()
    calibration = recorded_calibration(store, **target)
    calibrate_noise.cache_clear()
    final = dict(noise_multiplier=calibration.noise_multiplier, sample_rate=0.05, releases=60, delta=1e-5)
    fresh = epsilon_spent(**final, accountant="rdp")
    epsilon_spent.cache_clear()
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: pytest.fail("the accountant was asked again"))
    assert recorded_calibration(store, **target) == calibration
    assert calibration == Calibration(
        noise_multiplier=calibration.noise_multiplier, accountant="rdp", epsilon=fresh.epsilon
    )
    assert recorded_epsilon(store, **final, accountant="rdp") == fresh  # the run's final ε, kept by the calibration
    with pytest.raises(ConfigError, match="unknown accountant"):  # bad questions are not stored answers
        recorded_epsilon(store, **{**question, "accountant": "gdp"})


@pytest.mark.slow
def test_memoised_rdp_orders_give_untouched_opacus_answers_bit_for_bit():
    import json
    import subprocess
    import sys

    questions = [(1.1, 0.18, 30), (1.1, 0.18, 60), (0.7, 0.05, 200)]
    untouched = subprocess.run(  # Opacus as shipped (dpsat_core never loaded), on one BLAS thread as ours runs
        [
            sys.executable,
            "-c",
            "import json, sys, warnings; warnings.simplefilter('ignore')\n"
            "from threadpoolctl import threadpool_limits\n"
            "from opacus.accountants import PRVAccountant, RDPAccountant\n"
            "out = []\n"
            "with threadpool_limits(limits=1, user_api='blas'):\n"
            "    for s, q, t in json.loads(sys.argv[1]):\n"
            "        for acc in (PRVAccountant(), RDPAccountant()):\n"
            "            acc.history = [(s, q, t)]; out.append(acc.get_epsilon(delta=1e-5))\n"
            "print(json.dumps(out))",
            json.dumps(questions),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = [
        epsilon_spent(noise_multiplier=s, sample_rate=q, releases=t, delta=1e-5, accountant=name).epsilon
        for s, q, t in questions
        for name in ("prv", "rdp")
    ]
    assert ours == json.loads(untouched.stdout)
    assert accounting._opacus_rdp()._compute_rdp.cache_info().hits > 0  # the second epoch reused the first's orders


def test_answers_of_another_algorithm_are_never_read_as_this_ones(tmp_path):
    import json

    from dpsat_core import RunStore
    from dpsat_core.accounting import recorded_calibration

    store = RunStore(tmp_path / "runs.db")
    target = dict(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, releases=60, accountant="rdp", prior=())
    bisected = {"noise_multiplier": 99.0, "accountant": "rdp", "note": ""}  # as the bisection's answers were kept
    old_key = json.dumps({"kind": "calibration", "opacus": accounting._opacus_version(), **target}, sort_keys=True)
    store.save_accounting(old_key, bisected)
    other = accounting._question("calibration", **target).replace(accounting.ALGORITHMS["calibration"], "search-0")
    store.save_accounting(other, {**bisected, "epsilon": 0.5})
    calibration = recorded_calibration(store, **target)
    assert calibration.noise_multiplier != 99.0 and calibration == calibrate_noise(**target)
    assert store.find_accounting(old_key) == bisected  # left as it was, readable, never mixed in


def test_retuning_the_search_asks_its_calibrations_afresh(monkeypatch):
    # the search's tuning constants change which σ it accepts: a store must not answer with another tuning's σ
    target = dict(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, releases=60, accountant="prv", prior=())
    keys = {accounting._question("calibration", **target)}
    for name, value in (("PRV_OVER_MODEL", 1.0), ("EPSILON_TOLERANCE", 0.05), ("MAX_NOISE_MULTIPLIER", 1e5)):
        with monkeypatch.context() as m:
            m.setattr(accounting, name, value)
            keys.add(accounting._question("calibration", **target))
    with monkeypatch.context() as m:
        m.setattr(noise_search, "MAX_EVALUATIONS", 30)
        keys.add(accounting._question("calibration", **target))
    assert len(keys) == 5


def test_prv_settings_key_every_kind_of_answer(monkeypatch):
    # PRV's errors, and where it is not tried, change ε answers too: a store must not answer across them
    question = dict(noise_multiplier=1.0, sample_rate=0.05, releases=60, delta=1e-5, accountant="prv", prior=())
    for kind, fields in (("epsilon", {}), ("epsilon_within", {"within": 120}), ("calibration", {})):
        asked = {**question, **fields} if kind != "calibration" else {"target_epsilon": 2.0, **question}
        keys = {accounting._question(kind, **asked)}
        for name, value in (("MAX_PRV_POINTS", 1 << 20), ("PRV_EPS_ERROR", 0.02), ("PRV_DELTA_ERROR_SHARE", 1e-2)):
            with monkeypatch.context() as m:
                m.setattr(accounting, name, value)
                keys.add(accounting._question(kind, **asked))
        assert len(keys) == 4, kind


def _opacus_prv_at(history, delta: float) -> tuple[float, float, float]:
    """Opacus's own PRV (ε lower, estimate, upper) for `history`, on the domain it builds for that history."""
    reference = PRVAccountant()
    reference.history = list(history)
    with accounting._quiet_one_blas_thread():
        composed = reference._get_dprv(eps_error=0.01, delta_error=delta / 1000)
        return composed.compute_epsilon(delta, delta / 1000, 0.01)


@pytest.mark.parametrize(
    "sigma, q, releases, delta, prior",
    [
        (1.0, 0.1, (10, 20, 30, 40), 1e-5, ()),
        (1.2, 0.15, (8, 16, 24), 1e-4, ((3.0, 1.0, 2),)),  # after released scaling statistics
        (1.5, 0.1, (20, 40, 60), 1e-5, ()),  # DP-SAM: 2 releases a step, 10 steps an epoch
    ],
)
def test_the_epsilon_curve_ends_at_get_epsilon_and_bounds_every_earlier_count(sigma, q, releases, delta, prior):
    question = dict(noise_multiplier=sigma, sample_rate=q, delta=delta, prior=prior)
    curve = epsilon_curve(releases=releases, **question)
    assert [spent.releases for spent in curve] == list(releases) and {s.accountant for s in curve} == {"prv"}
    final = epsilon_spent(releases=releases[-1], **question)
    assert curve[-1] == final  # bit for bit, the accountant's own number for the whole history
    assert final.epsilon == _opacus_prv_at([*prior, (sigma, q, releases[-1])], delta)[2]
    epsilons = [spent.epsilon for spent in curve]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == len(epsilons)
    for count, spent in zip(releases[:-1], curve):
        lower, estimate, upper = _opacus_prv_at([*prior, (sigma, q, count)], delta)
        assert abs(spent.epsilon - upper) <= accounting.PRV_EPS_ERROR  # Opacus's own bound for this count
        assert spent.epsilon >= estimate > lower  # never below Opacus's estimate for this count
        rdp = epsilon_spent(releases=count, accountant="rdp", **question).epsilon
        assert spent.epsilon <= rdp  # and tighter than RDP's bound, as PRV is


def test_the_epsilon_curve_with_rdp_or_where_prv_fails_is_each_counts_epsilon(monkeypatch):
    question = dict(noise_multiplier=1.0, sample_rate=0.05, delta=1e-5)
    each = lambda accountant: tuple(  # noqa: E731
        epsilon_spent(releases=count, accountant=accountant, **question) for count in (50, 100)
    )
    assert epsilon_curve(releases=(50, 100), accountant="rdp", **question) == each("rdp")
    assert epsilon_curve(releases=(50, 100), noise_multiplier=0.0, sample_rate=0.05, delta=1e-5)[0].epsilon == math.inf
    raised = {"curve": RuntimeError("Discrete mean differs significantly from continuous mean.")}
    monkeypatch.setattr(accounting, "_prv_curve", lambda **k: (_ for _ in ()).throw(raised["curve"]))
    assert epsilon_curve(releases=(50, 100), **question) == each("prv")  # per count, with today's RDP fallback
    raised["curve"] = TypeError("a bug, not a PRV limitation")
    with pytest.raises(TypeError, match="a bug"):
        epsilon_curve(releases=(50, 101), **question)
    for bad in ((), (0, 10), (20, 10), (10, 10)):
        with pytest.raises(ValueError, match="increasing counts"):
            epsilon_curve(releases=bad, **question)


def test_a_recorded_curve_keeps_earlier_counts_apart_from_per_count_answers(tmp_path, monkeypatch):
    from dpsat_core import RunStore
    from dpsat_core.accounting import recorded_epsilon, recorded_epsilon_curve

    store = RunStore(tmp_path / "runs.db")
    question = dict(noise_multiplier=1.1, sample_rate=0.1, delta=1e-5, accountant="prv", prior=())
    stale = dataclasses.asdict(epsilon_spent(releases=15, **question))
    store.save_accounting(accounting._question("epsilon", releases=15, **question), {**stale, "epsilon": 99.0})
    curve = recorded_epsilon_curve(store, releases=(15, 30), **question)
    assert curve == epsilon_curve(releases=(15, 30), **question) and curve[0].epsilon != 99.0  # not read as the curve's
    assert recorded_epsilon(store, releases=15, **question).epsilon == 99.0  # nor the curve's read as a per-count one
    for cached in (epsilon_spent, epsilon_curve):
        cached.cache_clear()
    monkeypatch.setattr(accounting, "_prv_curve", lambda **k: pytest.fail("the accountant was asked again"))
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: pytest.fail("the accountant was asked again"))
    assert recorded_epsilon_curve(RunStore(store.path), releases=(15, 30), **question) == curve  # read back
    assert recorded_epsilon(store, releases=30, **question) == curve[-1]  # the last count: the run's final ε


@pytest.mark.parametrize(
    "history, delta",
    [
        (((1.1, 0.18, 30),), 1e-5),
        (((0.5, 0.3, 3000),), 1e-3),  # ε in the tens: small optimal orders, fractional ones needed
        (((12.0, 0.001, 5),), 1e-11),  # a tiny ε: the largest order
        (((3.0, 1.0, 2), (0.8, 0.05, 300)), 1e-8),  # a prior release of the statistics, sample rate 1
    ],
)
def test_domain_sizing_skips_only_orders_that_cannot_hold_the_minimum(history, delta, monkeypatch):
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    # the second history's domain is past the usual cap (RDP ε ≈ 1,200; Opacus's PRV takes ~50 s to answer inf)
    monkeypatch.setattr(accounting, "MAX_PRV_POINTS", 1 << 30)

    accounting._opacus_rdp()._compute_rdp.cache_clear()
    ours = accounting._rdp_epsilon(history, delta)
    computed = accounting._opacus_rdp()._compute_rdp.cache_info().currsize
    reference = RDPAccountant()
    reference.history = list(history)
    assert ours == reference.get_epsilon(delta)  # the same float as every order computed
    assert computed < len(RDPAccountant.DEFAULT_ALPHAS) * len(history)  # fewer orders were
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    counts = [count for _, _, count in history]
    opacus_domain = PRVAccountant()._get_domain(
        prvs=prvs, num_self_compositions=counts, eps_error=0.01, delta_error=delta / 1000
    )
    assert accounting._prv_domain(history, 0.01, delta / 1000) == opacus_domain


def test_a_curve_asked_right_after_its_calibration_reuses_its_last_discretisation():
    target = dict(target_epsilon=3.0, delta=1e-5, sample_rate=0.1, releases=40)
    calibration = calibrate_noise(**target)
    before = accounting._discretised_prvs.cache_info()
    question = dict(noise_multiplier=calibration.noise_multiplier, sample_rate=0.1, delta=1e-5)
    curve = epsilon_curve(releases=(10, 20, 30, 40), **question)
    after = accounting._discretised_prvs.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)  # no domain or discretisation again
    assert curve[-1].epsilon == calibration.epsilon  # the calibration's ε at σ is the run's final ε


@pytest.mark.parametrize("stop_after", [0, 1])
def test_a_stop_ends_the_sigma_search_between_evaluations_and_keeps_nothing(tmp_path, monkeypatch, stop_after):
    from dpsat_core import Cancelled, RunStore
    from dpsat_core.accounting import recorded_calibration

    target = dict(target_epsilon=0.3, delta=1e-5, sample_rate=0.05, releases=300, accountant="prv")
    evaluations: list[float] = []
    real = accounting._epsilon_with
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: evaluations.append(1) or real(*a, **k))
    whole = calibrate_noise(**target)
    needed = len(evaluations)
    assert needed > stop_after  # else the stop would come after the search and test nothing
    calibrate_noise.cache_clear()
    evaluations.clear()
    store = RunStore(tmp_path / "runs.db")
    with pytest.raises(Cancelled):
        recorded_calibration(store, **target, should_stop=lambda: len(evaluations) >= stop_after)
    assert len(evaluations) == stop_after  # stopped between evaluations, not after the search
    assert store.find_accounting(accounting._question("calibration", **target)) is None  # nothing half-done stored
    assert calibrate_noise(**target, should_stop=lambda: False) == whole  # nor remembered: searched again in full
    assert len(evaluations) == stop_after + needed


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_a_stop_ends_the_epsilon_curve_between_counts_and_remembers_nothing(accountant):
    # a 400-epoch curve takes about a minute: a Ctrl-C or Cancel must not wait for all of it
    from dpsat_core.progress import Cancelled

    question = dict(noise_multiplier=1.1, sample_rate=0.1, delta=1e-5, accountant=accountant)
    epsilon_curve.cache_clear()
    asked = []
    with pytest.raises(Cancelled):
        epsilon_curve(releases=(10, 20, 30, 40), should_stop=lambda: asked.append(1) or len(asked) > 2, **question)
    assert len(asked) == 3  # stopped before the third count
    whole = epsilon_curve(releases=(10, 20, 30, 40), **question)  # computed afresh: the stopped one was not kept
    assert [s.releases for s in whole] == [10, 20, 30, 40]
    assert whole[-1] == epsilon_spent(releases=40, **question)


def test_answers_are_keyed_by_the_loaded_opacus_else_the_one_on_disk_even_while_it_imports(monkeypatch):
    # a fork server keeps the Opacus it loaded; a process that has not imported it (or whose other thread is still
    # importing it: the module exists before its last line sets __version__) asks with the version on disk
    import importlib.metadata
    import sys
    import types

    on_disk = importlib.metadata.version("opacus")
    monkeypatch.setitem(sys.modules, "opacus", types.ModuleType("opacus"))  # half imported: no __version__ yet
    assert accounting._opacus_version() == on_disk
    loaded = types.ModuleType("opacus")
    loaded.__version__ = "0.0-loaded-before-an-upgrade"
    monkeypatch.setitem(sys.modules, "opacus", loaded)
    assert accounting._opacus_version() == "0.0-loaded-before-an-upgrade"
    monkeypatch.delitem(sys.modules, "opacus")
    assert accounting._opacus_version() == on_disk
