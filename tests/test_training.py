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


def test_a_run_keeps_which_test_examples_its_final_model_got_right(quick):
    from dpsat_core import build_model, evaluate_examples
    from dpsat_core.correctness import unpack_correct
    from dpsat_core.data import load_config_dataset

    result = train(TrainConfig(**{**quick.to_dict(), "epochs": 2}))
    correct = unpack_correct(result.summary().test_correct, result.n_test)
    assert len(correct) == result.n_test > 0 and 0 < sum(correct) < result.n_test
    assert sum(correct) / result.n_test == result.test_accuracy == result.summary().test_accuracy  # exactly
    data = load_config_dataset(result.config)  # the same examples, scored again by the stored weights
    model = build_model(result.model, seed=0)
    model.load_state_dict(result.state_dict)
    _, again = evaluate_examples(model, torch.tensor(data.x_test), torch.tensor(data.y_test))
    assert again.tolist() == correct
    with torch.no_grad():  # and how many classes it predicts there, counted again from the stored weights
        classes = model.eval()(torch.tensor(data.x_test)).argmax(1).unique().numel()
    assert result.summary().test_classes_predicted == classes == 2


def test_a_model_that_predicts_one_class_is_recorded_and_named(quick, store, monkeypatch):
    # as a tiny or over-noised run ends: every test example gets the same class, so its accuracy is that class's share
    from dpsat_core import run, training
    from dpsat_core.compare import one_class_note

    real = training.predict

    def constant(model, x, y):
        loss, predicted = real(model, x, y)
        return loss, torch.zeros_like(predicted)

    monkeypatch.setattr(training, "predict", constant)
    record = run(quick, store).record
    assert record.summary.test_classes_predicted == 1
    share = (torch.tensor(store_dataset(record).y_test) == 0).float().mean().item()
    assert record.test_accuracy == pytest.approx(share)
    assert one_class_note([store.get(record.run_id)]).startswith(
        "1 run (DP-SGD at ε=4) predicts one class for every test example"
    )


def store_dataset(record):
    from dpsat_core.data import load_run_dataset

    return load_run_dataset(record.config, record.summary.released_scaling)


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
    from dpsat_core.data import load_config_dataset
    from dpsat_core.planning import plan_run

    dataset = load_config_dataset(quick)
    plan = plan_run(quick, dataset)  # σ found first: the stop function below is asked between steps only
    calls = []
    result = train(quick, dataset=dataset, plan=plan, should_stop=lambda: calls.append(1) or len(calls) > 3)
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
    result = train(TrainConfig(dataset="breast_cancer", method="sam", epochs=5))  # bounds-scaled: slower start
    s = result.summary()
    assert s.epsilon_spent is None and s.releases == 0 and s.noise_multiplier is None
    assert result.test_accuracy > 0.85


def test_a_crash_mid_run_is_stored_failed_with_the_epsilon_of_the_releases_made(quick, store, monkeypatch):
    from dpsat_core import epsilon_spent, run
    from dpsat_core.training import Trainer

    real_draw = Trainer.draw

    def draw_then_crash(self):
        if self.steps == 8:  # a step into epoch 2 (6 steps an epoch): no release in the crashing step
            raise RuntimeError("device lost")
        return real_draw(self)

    monkeypatch.setattr(Trainer, "draw", draw_then_crash)
    record = run(TrainConfig(**{**quick.to_dict(), "epochs": 3}), store).record
    assert record.status == "failed" and record.reason == "crashed after 8 steps: RuntimeError: device lost"
    s = record.summary
    assert (s.steps, s.releases, s.epochs_done, len(record.epochs)) == (8, 8, 1, 1)
    expected = epsilon_spent(
        noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate, releases=8, delta=s.delta, accountant="prv"
    )
    assert record.epsilon_spent == pytest.approx(expected.epsilon) and 0 < record.epsilon_spent < 4.0
    assert record.epsilon_spent > record.epochs[0].epsilon_spent  # two releases after the last epoch count too


def test_a_run_whose_loss_ends_far_above_its_start_is_flagged_diverged_with_the_reason(store):
    from dpsat_core import build_model, evaluate, run
    from dpsat_core.data import load_config_dataset

    blown = run(TrainConfig(dataset="breast_cancer", method="dpsgd", lr=1e6, epochs=1, batch_size=64), store).record
    s = blown.summary
    assert blown.status == "done" and blown.diverged  # every release was made and charged: it finished
    assert blown.reason.startswith("diverged: training loss ended at") and "lower lr, now 1e+06" in blown.reason
    assert s.train_loss > 10 * s.initial_train_loss
    # the start loss is the fresh model's (same seed) on the first training rows, evaluated independently
    data = load_config_dataset(blown.config)
    fresh = build_model(s.model, seed=blown.config.seed)
    x, y = torch.tensor(data.x_train[:4096]), torch.tensor(data.y_train[:4096])
    assert math.isclose(evaluate(fresh, x, y)[0], s.initial_train_loss, rel_tol=1e-6)
    calm = run(TrainConfig(dataset="breast_cancer", method="dpsgd", epochs=1, batch_size=64), store).record
    assert not calm.diverged and calm.reason == "" and calm.summary.initial_train_loss == s.initial_train_loss


def _same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_research_mode_seeds_noise_and_batches_from_the_run_seed(quick):
    from dpsat_core import prepare
    from dpsat_core.training import NOISE_SEED_OFFSET, SAMPLING_SEED_OFFSET

    trainer = prepare(TrainConfig(**{**quick.to_dict(), "seed": 5}))
    assert trainer.step_fn.optimizer.generator.initial_seed() == 5 + NOISE_SEED_OFFSET
    reference = torch.Generator().manual_seed(5 + SAMPLING_SEED_OFFSET)  # an independent draw of the same batch
    expected = torch.nonzero(torch.rand(trainer.dataset.n_train, generator=reference) < trainer.plan.sample_rate)
    assert torch.equal(trainer.sampler.indices(), expected.flatten())


def test_a_release_generator_is_not_one_of_2_to_the_32_seeded_streams():
    from dpsat_core.training import os_entropy_generator

    a, b = os_entropy_generator(), os_entropy_generator()
    draws = torch.randn(50_000, generator=a)
    assert not torch.equal(draws[:8], torch.randn(8, generator=b))
    assert a.initial_seed() == 0 and draws.mean().abs() < 0.03 and abs(draws.std().item() - 1) < 0.02
    # torch's manual_seed keeps 32 bits of a seed (these two streams are equal), so a seeded stream could be
    # searched for: the release generator is none of them, not the one its reported seed would give
    same = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5 + 2**32)
    assert torch.equal(torch.randn(8, generator=same[0]), torch.randn(8, generator=same[1]))
    assert not torch.equal(draws[:8], torch.randn(8, generator=torch.Generator().manual_seed(a.initial_seed())))


def test_release_runs_of_one_config_differ(quick):
    release = TrainConfig(**{**quick.to_dict(), "randomness": "release"})
    a, b = train(release), train(release)
    assert a.status == b.status == "done" and not _same_weights(a.state_dict, b.state_dict)
    assert a.plan.noise_multiplier == b.plan.noise_multiplier  # the same mechanism, independent draws


def test_release_noise_has_the_calibrated_scale():
    from dpsat_core import prepare
    from dpsat_core.gradients import private_gradient

    trainer = prepare(TrainConfig(dataset="breast_cancer", method="dpsgd", noise_multiplier=3.0, randomness="release"))
    optimizer = trainer.step_fn.optimizer
    assert optimizer.secure_mode  # Opacus's draw that resists floating-point attacks
    empty = (trainer.x_train[:0], trainer.y_train[:0])
    private_gradient(trainer.model, optimizer, empty, chunk_size=64)  # an empty batch releases pure noise
    noise = torch.cat([p.grad.flatten() for p in optimizer.params]) * trainer.config.batch_size
    assert noise.numel() > 3000 and noise.mean().abs() < 0.2 and noise.std().item() == pytest.approx(3.0, rel=0.05)


def test_no_stored_value_reproduces_the_noise_of_a_release_run(quick, store, monkeypatch, caplog):
    import dataclasses
    import secrets

    from dpsat_core import run

    drawn: list[bytes] = []
    seeds: list[int] = []
    real_bytes, real_bits = secrets.token_bytes, secrets.randbits

    def recorded(k: int) -> bytes:
        drawn.append(real_bytes(k))
        return drawn[-1]

    def recorded_bits(k: int) -> int:
        seeds.append(real_bits(k))
        return seeds[-1]

    monkeypatch.setattr(secrets, "token_bytes", recorded)
    monkeypatch.setattr(secrets, "randbits", recorded_bits)
    caplog.set_level("DEBUG")
    record = run(TrainConfig(**{**quick.to_dict(), "randomness": "release"}), store).record
    # the sampling generator, and on the CPU the noise generator: all 624 state words from the OS, not a 32-bit
    # seed; on CUDA the noise generator (Philox) takes its whole 64-bit seed from the OS
    on_cuda = record.summary.device.startswith("cuda")
    assert record.status == "done" and record.config.randomness == "release"
    assert [len(d) for d in drawn] == [2496] * (1 if on_cuda else 2) and len(seeds) == (1 if on_cuda else 0)
    # the OS-drawn state appears nowhere in the store's files (text or binary) nor in the logs
    stored = b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))
    for state in drawn + [seed.to_bytes(8, "little") for seed in seeds]:
        for at in range(0, len(state), 16):
            chunk = state[at : at + 16]
            assert chunk not in stored and chunk.hex() not in caplog.text
    assert not any(str(seed).encode() in stored or str(seed) in caplog.text for seed in seeds)
    # retraining in research mode with everything the record holds gives other weights: the seed it stores
    # initialises the model only
    research = dataclasses.replace(record.config, randomness="research")
    assert not _same_weights(train(research).state_dict, store.load_weights(record.run_id))
