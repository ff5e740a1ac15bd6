"""Typed results: JSON round trips, and stores written before the typed results still open and are reused."""

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import pytest

from dpsat_core import EpochMetrics, RunStore, RunSummary, TrainConfig, cached_analyses, default_delta, run
from tests.factories import record

# Written by the wave-1 code (commit 7ab3b8c): a DP-SGD run (ε=3, 2 epochs, breast_cancer, batch 64) with a
# default 1D slice and a small Hessian, and an SGD run; summaries and epochs still say "epsilon".
WAVE1_STORE = Path(__file__).parent / "data" / "store_wave1.db"


def test_summaries_and_epochs_round_trip_through_json():
    summary = record("dpsat", 3.0, 0, 0.9).summary
    assert RunSummary.from_dict(summary.to_dict()) == summary
    epoch = EpochMetrics(
        epoch=1, train_loss=0.5, test_loss=0.6, test_accuracy=0.8, epsilon_spent=1.2, seconds=3.0, steps=7, releases=7
    )
    assert EpochMetrics.from_dict(epoch.to_dict()) == epoch
    with pytest.raises(TypeError):
        RunSummary(**{**summary.to_dict(), "surprise": 1})


def test_a_store_written_by_the_wave1_code_opens_typed_and_its_runs_are_reused(tmp_path):
    path = tmp_path / "old.db"
    shutil.copy(WAVE1_STORE, path)
    with sqlite3.connect(path) as db:  # the file really is the old format
        assert '"epsilon":' in db.execute("SELECT summary FROM runs WHERE method='dpsgd'").fetchone()[0]
    store = RunStore(path)
    dpsgd, sgd = sorted(store.list_runs(with_epochs=True), key=lambda r: r.method)
    assert isinstance(dpsgd.summary, RunSummary) and dpsgd.summary.model.architecture == "mlp"
    assert dpsgd.epsilon_spent == pytest.approx(2.993407259380761) and dpsgd.target_epsilon == 3.0
    assert [type(e) for e in dpsgd.epochs] == [EpochMetrics, EpochMetrics]
    assert dpsgd.epochs[-1].epsilon_spent == pytest.approx(dpsgd.epsilon_spent)
    assert sgd.epsilon_spent is None and sgd.summary.releases == 0
    # hashes are unchanged since then, so the same config is reused instead of retrained; the old run
    # had no validation split and clipped with Opacus's hooks, so it is that config (not today's
    # default, which trains on fewer rows with the fast clipping engine)
    assert dpsgd.config.validation_fraction == 0.0 and TrainConfig().validation_fraction > 0
    assert dpsgd.config.clipping == "hooks" and TrainConfig().clipping == "fast"
    assert dpsgd.config.preprocessing == "fitted" and TrainConfig().preprocessing == "private"
    # its δ came from the old default rule (1/n rounded down), and it keeps reporting that δ
    assert dpsgd.config.delta is None and dpsgd.config.delta_rule == "1/n" and TrainConfig().delta_rule == "1/(10n)"
    assert dpsgd.summary.delta == default_delta(dpsgd.summary.n_train, "1/n") == 1e-3  # n = 455
    config = TrainConfig(
        dataset="breast_cancer",
        method="dpsgd",
        epsilon=3.0,
        epochs=2,
        batch_size=64,
        validation_fraction=0.0,
        clipping="hooks",
        preprocessing="fitted",
        delta_rule="1/n",
    )
    outcome = run(config, store)
    assert outcome.reused and outcome.record.run_id == dpsgd.run_id
    assert config.config_hash() != dataclasses.replace(config, validation_fraction=0.1).config_hash()
    assert config.config_hash() != dataclasses.replace(config, clipping="fast").config_hash()
    assert config.config_hash() != dataclasses.replace(config, preprocessing="private").config_hash()
    assert config.config_hash() != dataclasses.replace(config, delta_rule="1/(10n)").config_hash()  # δ 1e-4
    # analyses cached by the old code are found under the same settings
    assert set(cached_analyses(store, [dpsgd.run_id, sgd.run_id], "slice")) == {dpsgd.run_id}
    hessian = cached_analyses(store, [dpsgd.run_id], "hessian", k=2, trace_probes=4, n_samples=64)
    assert len(hessian[dpsgd.run_id].top) == 2
