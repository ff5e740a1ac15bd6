import math

import pytest
import torch

from dpsat_core import ConfigError, DataError, TrainConfig, train
from dpsat_core.progress import Progress


def test_a_run_reports_per_epoch_metrics_and_weights(quick):
    seen: list[Progress] = []
    result = train(TrainConfig(**{**quick.to_dict(), "epochs": 3}), on_progress=seen.append)
    assert result.status == "done" and [e.epoch for e in result.epochs] == [1, 2, 3]
    assert result.steps == result.plan.steps == 3 * round(409 / 64)
    assert all(0 <= e.test_accuracy <= 1 and math.isfinite(e.train_loss) for e in result.epochs)
    assert [e.seconds for e in result.epochs] == sorted(e.seconds for e in result.epochs)
    assert result.test_accuracy > 0.8  # far above the 63% majority class
    assert seen[-1].done == seen[-1].total == result.steps
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in result.state_dict.values())


def test_same_seed_same_run_different_seed_different_run(quick):
    a, b = train(quick), train(quick)
    c = train(TrainConfig(**{**quick.to_dict(), "seed": 1}))
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


@pytest.mark.parametrize("method", ["sgd", "dpsgd"])
def test_a_diverging_run_fails_with_the_reason(method):
    cfg = TrainConfig(dataset="breast_cancer", method=method, lr=1e38, epochs=2)
    result = train(cfg)
    assert result.status == "failed" and "diverged" in result.reason and "lower lr" in result.reason
    assert result.epochs == []


def test_cancel_stops_between_steps(quick):
    calls = []
    result = train(quick, should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert result.status == "cancelled" and result.steps == 3 and result.releases == 3
    assert result.privacy.releases == 3  # ε charged for what was released, no more


def test_bad_settings_against_the_data_are_clear_errors():
    with pytest.raises(ConfigError, match="exceeds the 409 training examples"):
        train(TrainConfig(dataset="breast_cancer", batch_size=1000))
    with pytest.raises(ConfigError, match="must be < 1/n"):
        train(TrainConfig(dataset="breast_cancer", method="dpsgd", delta=0.01))
    with pytest.raises(ConfigError, match="needs image data"):
        train(TrainConfig(dataset="breast_cancer", model="cnn"))
    with pytest.raises(DataError, match="unknown dataset"):
        train(TrainConfig(dataset="imagenet"))


def test_validation_accuracy_is_measured_each_epoch_on_held_out_rows(quick):
    result = train(TrainConfig(**{**quick.to_dict(), "epochs": 2}))
    summary = result.summary()
    assert (summary.n_train, summary.n_validation) == (409, 46)
    assert all(e.validation_accuracy is not None and 0.5 < e.validation_accuracy <= 1 for e in result.epochs)
    assert summary.validation_accuracy == result.epochs[-1].validation_accuracy
    assert summary.validation_accuracy != summary.test_accuracy  # a different set of rows
    none = train(TrainConfig(**{**quick.to_dict(), "validation_fraction": 0.0})).summary()
    assert (none.n_train, none.n_validation, none.validation_accuracy) == (455, 0, None)
    with pytest.raises(ConfigError, match="validation_fraction must be ≤ 0.5"):
        TrainConfig(validation_fraction=0.6)


def test_non_private_runs_report_no_privacy():
    result = train(TrainConfig(dataset="breast_cancer", method="sam", epochs=1))
    s = result.summary()
    assert s.epsilon_spent is None and s.releases == 0 and s.noise_multiplier is None
    assert result.test_accuracy > 0.85
