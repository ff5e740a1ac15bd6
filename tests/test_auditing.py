"""Audits: a broken mechanism (σ = 0) is caught, a private one is not over-claimed, canaries go through the
real release path without touching training, bad input stores nothing, audit runs are never compared."""

import dataclasses
import html

import numpy as np
import pytest
import torch

from dpsat_core import ConfigError, RunStore, TrainConfig, audit, run
from dpsat_core.compare import pick_setting, runs_by_setting
from dpsat_core.report import build_report, render_html

# synthetic, 2,000 rows: 1,440 training rows (≥ 1,000 canaries), a 2k-parameter MLP, 10 steps per epoch
SMALL = TrainConfig(dataset="synthetic", dataset_size=2000, epochs=1)


@pytest.mark.parametrize("method", ["dpsgd", "dpsam", "dpsat"])
def test_without_noise_the_whitebox_audit_proves_a_large_epsilon(method, store):
    config = dataclasses.replace(SMALL, method=method, epsilon=None, noise_multiplier=0.0, delta=1e-5)
    outcome = audit(config, store, mode="whitebox", canaries=1000)
    result, summary = outcome.result, outcome.record.summary
    assert result.epsilon_lower_bound >= 2.0 and result.epsilon_spent == float("inf")
    assert result.correct == result.guesses  # nothing hides a canary's gradient without noise
    per_step = 2 if method == "dpsam" else 1  # DP-SAM's two releases per step are both observed
    assert result.releases == summary.releases == per_step * summary.steps


def test_at_epsilon_one_the_lower_bound_stays_below_the_accountants_epsilon(store):
    for mode in ("whitebox", "blackbox"):
        result = audit(dataclasses.replace(SMALL, method="dpsgd", epsilon=1.0), store, mode=mode).result
        assert 0.0 <= result.epsilon_lower_bound <= result.epsilon_spent <= 1.0
        assert result.canaries == 1000 and 0 < result.guesses <= 1000 and 0.0 <= result.auc <= 1.0


def test_whitebox_canaries_go_through_the_runs_own_clipped_sum_scaling_and_noise(store):
    config = dataclasses.replace(SMALL, method="dpsgd", epsilon=None, noise_multiplier=0.0, delta=1e-5)
    from dpsat_core.auditing import GradientCanaries, plan_audit
    from dpsat_core.training import train

    plan = plan_audit(config, mode="whitebox", canaries=50)
    canaries = GradientCanaries(plan.included, clip_norm=1.0, sample_rate=plan.run_plan.privacy.sample_rate, seed=3)
    result = train(plan.config, dataset=plan.dataset, plan=plan.run_plan, instrument=canaries)
    # σ = 0: each release adds C / (expected batch size) per sampled included canary, nothing else (the model's
    # own noise draws come first; with σ > 0 the block's draws shift the next release's, so compare at σ = 0)
    times_sampled = canaries.scores.numpy() * config.batch_size / config.clip_norm
    assert np.allclose(times_sampled, np.round(times_sampled), atol=1e-6)
    assert (times_sampled[~plan.included] == 0).all() and times_sampled[plan.included].sum() > 0
    assert canaries.observed == result.releases
    # the real training is untouched: the same weights as the ordinary run of the same settings
    plain = train(config)
    assert result.state_dict.keys() == plain.state_dict.keys()
    assert all(torch.equal(result.state_dict[k], plain.state_dict[k]) for k in plain.state_dict)


@pytest.mark.parametrize(
    "changes, mode, canaries, message",
    [
        ({}, "whitebox", 9, "canaries must be a whole number ≥ 10, got 9"),
        ({}, "blackbox", 5000, "canaries=5000 exceeds the 1440 training examples of synthetic: use at most 1440"),
        ({"method": "sgd"}, "whitebox", 100, "method 'sgd' makes no noisy releases, so there is no ε to audit"),
        ({}, "greybox", 100, "unknown audit mode 'greybox': choose one of whitebox, blackbox"),
        ({"batch_size": 5000}, "whitebox", 100, "batch_size=5000 exceeds"),
    ],
)
def test_bad_input_is_one_clear_error_and_stores_nothing(store, changes, mode, canaries, message):
    with pytest.raises(ConfigError, match=message):
        audit(dataclasses.replace(SMALL, **changes), store, mode=mode, canaries=canaries)
    assert store.list_runs() == [] and store.audits() == []


def test_audit_runs_are_marked_stored_and_never_compared(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    quick = TrainConfig(dataset="breast_cancer", method="dpsgd", noise_multiplier=1.0, epochs=1, batch_size=64)
    ordinary = run(quick, store).record
    outcome = audit(quick, store, mode="blackbox", canaries=100)
    record, result = outcome.record, outcome.result
    assert record.config.audit and record.config.audit_mode == "blackbox" and record.config.canaries == 100
    assert record.config_hash != ordinary.config_hash and run(quick, store).record.run_id == ordinary.run_id
    assert store.audits() == [result] and result.dataset == "breast_cancer"
    assert [r.run_id for g in runs_by_setting(store.list_runs()) for r in g] == [ordinary.run_id]
    assert [r.run_id for r in pick_setting(store.list_runs())] == [ordinary.run_id]
    report = build_report(store)
    assert report.runs == 1 and report.audits == (result,)
    page = render_html(report, static_images=False)
    assert "Empirical privacy audits" in page and html.escape(result.run_id) in page
    assert f"{result.epsilon_lower_bound:.2f}" in page
    store.delete(record.run_id)  # the audit result goes with its run
    assert store.audits() == []
    assert "Empirical privacy audits" not in render_html(build_report(store), static_images=False)


def test_every_random_stream_has_its_own_seed_offset():
    # canary inclusion must be independent of the mechanism's own randomness (the audit theorem's premise)
    from dpsat_core.auditing import AUDIT_SEED_OFFSET
    from dpsat_core.data import STATISTICS_SEED_OFFSET
    from dpsat_core.training import NOISE_SEED_OFFSET, SAMPLING_SEED_OFFSET

    offsets = (0, NOISE_SEED_OFFSET, SAMPLING_SEED_OFFSET, STATISTICS_SEED_OFFSET, AUDIT_SEED_OFFSET)
    assert len(set(offsets)) == len(offsets)


def test_a_blackbox_audit_plans_the_same_mechanism_whichever_canaries_are_in():
    from dpsat_core import plan_audit

    base = TrainConfig(dataset="breast_cancer", method="dpsgd", epsilon=2.0, epochs=1, batch_size=64)
    plans = [plan_audit(dataclasses.replace(base, seed=s), mode="blackbox", canaries=100) for s in (0, 1)]
    assert plans[0].dataset.n_train != plans[1].dataset.n_train  # different canaries in, so different row counts
    assert plans[0].run_plan.privacy == plans[1].run_plan.privacy  # but one q, one T, one σ
