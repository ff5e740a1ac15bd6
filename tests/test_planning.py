"""One validation point: every data-dependent check runs before a row is written, in `run` and in sweeps."""

import pytest
import torch

from dpsat_core import ConfigError, RunStore, SweepSpec, TrainConfig, load_dataset, plan_run, run
from dpsat_core.sweeps import check_sweep

TABLE = dict(dataset="breast_cancer", epochs=1, batch_size=64)


def test_the_plan_fixes_privacy_model_and_device():
    plan = plan_run(TrainConfig(method="dpsam", epsilon=3.0, **TABLE), load_dataset("breast_cancer"))
    assert plan.model.architecture == "mlp" and plan.device in ("cpu", "cuda")
    assert plan.privacy.planned_releases == 2 * plan.privacy.steps and plan.privacy.target_epsilon == 3.0
    assert plan.privacy.noise_multiplier > 0 and plan.privacy.delta < 1 / 455


def test_a_sigma_run_is_accounted_in_full_before_it_starts():
    from dpsat_core import epsilon_spent

    plan = plan_run(TrainConfig(method="dpsgd", noise_multiplier=1.3, **TABLE), load_dataset("breast_cancer"))
    privacy = plan.privacy
    expected = epsilon_spent(
        noise_multiplier=1.3, sample_rate=privacy.sample_rate, releases=privacy.planned_releases, delta=privacy.delta
    )
    assert privacy.target_epsilon is None and privacy.planned_epsilon == pytest.approx(expected.epsilon)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "cnn"}, "needs image data"),
        ({"device": "tpu9"}, "unknown device 'tpu9'"),
        ({"epsilon": 1e-9}, "too small to reach"),
        ({"batch_size": 5000}, "exceeds the 409 training examples"),
    ],
)
def test_bad_input_writes_no_row(changes, message, store):
    with pytest.raises(ConfigError, match=message):
        run(TrainConfig(**{**TABLE, "method": "dpsgd", **changes}), store)
    assert store.list_runs() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_writes_no_row_from_the_cli(tmp_path, capsys):
    from dpsat_core.cli import main

    db = tmp_path / "r.db"
    code = main(["train", "--dataset", "breast_cancer", "--device", "cuda", "--store", str(db)])
    assert code == 2 and "asked for CUDA but none is available" in capsys.readouterr().err
    assert RunStore(db).list_runs() == []


def test_a_sweep_with_an_unreachable_epsilon_is_refused_before_any_cell(store):
    spec = SweepSpec(base=TrainConfig(**TABLE), methods=("dpsgd", "dpsat"), epsilons=(2.0, 1e-9), seeds=(0,))
    with pytest.raises(ConfigError, match=r"DP-SGD, ε = 1e-09, seed 0: epsilon=1e-09 is too small"):
        check_sweep(spec)
    assert store.list_runs() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_even_when_a_finished_run_could_be_reused(store):
    config = TrainConfig(method="sgd", **TABLE)
    run(config, store)
    with pytest.raises(ConfigError, match="asked for CUDA but none is available"):
        run(TrainConfig(method="sgd", device="cuda", **TABLE), store)
