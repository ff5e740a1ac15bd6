"""The fast clipping engine against Opacus's per-sample hooks: per layer, end to end, chunked, empty, noised."""

import copy
import dataclasses
import hashlib
import json

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from dpsat_core import ConfigError, ModelSpec, TrainConfig, build_model, prepare
from dpsat_core.cli import main
from dpsat_core.clipping import FastDPOptimizer
from dpsat_core.config import ADDED_LATER
from dpsat_core.gradients import private_gradient

torch.set_num_threads(1)
RTOL = 1e-5


class Project(nn.Module):
    """A fixed random map to 5 logits with no parameters: only the layer under test is clipped."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("matrix", torch.randn(features, 5, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1)) @ self.matrix


def _optimizer(model: nn.Module, clipping: str, *, clip: float, batch_size: int, sigma: float = 0.0, seed: int = 0):
    """The module the step runs and the DP optimizer, as `training.prepare` builds them for `clipping`."""
    options = dict(
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    if clipping == "hooks":
        return GradSampleModule(model, loss_reduction="mean"), DPOptimizer(base, **options)
    return model, FastDPOptimizer(base, module=model, **options)


def _release(model: nn.Module, clipping: str, batch, *, clip: float, chunk_size: int = 1024, **options):
    """One release (clipped mean, noise if σ > 0) of a fresh copy of `model`, by either engine."""
    module, optimizer = _optimizer(copy.deepcopy(model), clipping, clip=clip, batch_size=len(batch[0]), **options)
    optimizer.zero_grad(set_to_none=True)
    private_gradient(module, optimizer, batch, chunk_size=chunk_size)
    return [p.grad.clone() for p in optimizer.params]


def _per_example_norms(model: nn.Module, batch) -> torch.Tensor:
    """Per-example gradient norms from Opacus's per-sample gradients (to place C between them)."""
    module, optimizer = _optimizer(copy.deepcopy(model), "hooks", clip=1.0, batch_size=len(batch[0]))
    nn.functional.cross_entropy(module(batch[0]), batch[1]).backward()
    flat = [p.grad_sample.reshape(len(batch[0]), -1) for p in optimizer.params]
    return torch.cat(flat, 1).norm(dim=1)


def _assert_close(fast, hooks) -> None:
    assert len(fast) == len(hooks)
    for a, b in zip(fast, hooks):
        assert a.shape == b.shape
        assert ((a - b).norm() / b.norm()).item() <= RTOL


def _layer_case(layer: nn.Module, input_shape: tuple[int, ...], n: int = 24):
    """The layer, a parameter-free head and a batch whose C clips about half of the examples."""
    torch.manual_seed(0)
    x = torch.randn(n, *input_shape)
    with torch.no_grad():
        features = layer(x[:1]).numel()
    model = nn.Sequential(layer, Project(features))
    batch = (x, torch.randint(0, 5, (n,)))
    norms = _per_example_norms(model, batch)
    clip = norms.median().item()
    assert (norms > clip * 1.01).any() and (norms < clip * 0.99).any()  # some clipped, some not
    return model, batch, clip


LAYERS = {
    "linear": (lambda: nn.Linear(12, 7), (12,)),
    "linear without bias": (lambda: nn.Linear(12, 7, bias=False), (12,)),
    "linear over a sequence, Gram form": (lambda: nn.Linear(32, 32), (2, 32)),
    "linear over a sequence, per-example form": (lambda: nn.Linear(4, 3), (16, 4)),
    "conv like the digits CNN": (lambda: nn.Conv2d(1, 16, 3, padding=1), (1, 8, 8)),
    "conv strided, several channels": (lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 9, 9)),
    "conv dilated, rectangular, no bias": (
        lambda: nn.Conv2d(4, 6, (3, 2), dilation=2, padding=(2, 1), bias=False),
        (4, 7, 6),
    ),
    "conv, Gram form": (lambda: nn.Conv2d(16, 32, 3), (16, 4, 4)),
    "group norm": (lambda: nn.GroupNorm(2, 6), (6, 5, 5)),
    "group norm without bias": (lambda: nn.GroupNorm(3, 6, bias=False), (6, 4, 4)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_clipped_sum_equals_the_hooks(name):
    make, shape = LAYERS[name]
    model, batch, clip = _layer_case(make(), shape)
    fast = _release(model, "fast", batch, clip=clip)
    _assert_close(fast, _release(model, "hooks", batch, clip=clip))
    _assert_close(_release(model, "fast", batch, clip=clip, chunk_size=7), fast)


@pytest.mark.parametrize(
    "name, gram",
    [
        ("linear over a sequence, Gram form", True),
        ("linear over a sequence, per-example form", False),
        ("conv, Gram form", True),
        ("conv like the digits CNN", False),
    ],
)
def test_the_engine_picks_the_form_with_fewer_multiply_adds(name, gram):
    make, shape = LAYERS[name]
    model, batch, clip = _layer_case(make(), shape)
    module, optimizer = _optimizer(model, "fast", clip=clip, batch_size=len(batch[0]))
    private_gradient(module, optimizer, batch, chunk_size=64)
    assert optimizer.engine.layers[0].gram is gram  # so the Gram cases above test the Gram code


def _models():
    """Every model the project builds: the CNN on digits-, MNIST- and CIFAR-shaped images, the MLP on tables."""
    specs = {
        "cnn digits": ModelSpec(architecture="cnn", input_shape=(1, 8, 8), n_classes=10),
        "cnn mnist": ModelSpec(architecture="cnn", input_shape=(1, 28, 28), n_classes=10),
        "cnn cifar": ModelSpec(architecture="cnn", input_shape=(3, 32, 32), n_classes=10),
        "mlp table": ModelSpec(architecture="mlp", input_shape=(30,), n_classes=2),
        "mlp mnist1d": ModelSpec(architecture="mlp", input_shape=(40,), n_classes=10),
    }
    return {name: build_model(spec, seed=3) for name, spec in specs.items()}, specs


MODELS, SPECS = _models()


@pytest.mark.parametrize("name", MODELS)
def test_every_project_model_clipped_sum_equals_the_hooks_whole_and_chunked(name):
    spec = SPECS[name]
    torch.manual_seed(1)
    n = 40
    batch = (torch.randn(n, *spec.input_shape), torch.randint(0, spec.n_classes, (n,)))
    clip = _per_example_norms(MODELS[name], batch).median().item()
    hooks = _release(MODELS[name], "hooks", batch, clip=clip)
    _assert_close(_release(MODELS[name], "fast", batch, clip=clip), hooks)
    _assert_close(_release(MODELS[name], "fast", batch, clip=clip, chunk_size=16), hooks)


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])  # CNN on images, MLP on a table
def test_a_noised_release_equals_the_hooks_for_the_same_noise_seed(dataset):
    common = dict(method="dpsgd", dataset=dataset, noise_multiplier=1.0, clip_norm=0.5, batch_size=64, seed=5)
    releases = {}
    for clipping in ("fast", "hooks"):
        trainer = prepare(TrainConfig(clipping=clipping, **common))
        step = trainer.step_fn
        batch = (trainer.x_train[:50], trainer.y_train[:50])
        step.optimizer.zero_grad(set_to_none=True)
        private_gradient(step.model, step.optimizer, batch, chunk_size=32)
        releases[clipping] = [p.grad.clone() for p in step.optimizer.params]
        assert trainer.releases == 1
    _assert_close(releases["fast"], releases["hooks"])
    clean = build_model(trainer.spec, seed=0)
    clean.load_state_dict(trainer.model.state_dict())
    noiseless = _release(clean, "hooks", tuple(t.cpu() for t in batch), clip=0.5)
    for released, clean in zip((r.cpu() for r in releases["fast"]), noiseless):
        assert (released - clean * 50 / 64).norm() > 0.1 * released.norm()  # the noise is there, and equal


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_an_empty_poisson_batch_releases_the_same_pure_noise(dataset):
    common = dict(method="dpsgd", dataset=dataset, noise_multiplier=1.0, batch_size=64, seed=2)
    grads = {}
    for clipping in ("fast", "hooks"):
        trainer = prepare(TrainConfig(clipping=clipping, **common))
        empty = (trainer.x_train[:0], trainer.y_train[:0])
        for _ in range(2):  # the second release checks that the first left nothing behind
            assert trainer.step_fn(lambda: empty) is None
        grads[clipping] = [p.grad.clone() for p in trainer.step_fn.optimizer.params]
        assert trainer.releases == 2
    for a, b in zip(grads["fast"], grads["hooks"]):
        assert torch.equal(a, b) and a.abs().sum() > 0


@pytest.mark.parametrize("method", ["dpsgd", "dpsat", "dpsam"])
def test_training_steps_follow_the_hooks_for_every_private_method(method):
    common = dict(method=method, dataset="digits", noise_multiplier=1.0, rho=0.2, seed=1, max_physical_batch_size=48)
    fast, hooks = (prepare(TrainConfig(clipping=c, **common)) for c in ("fast", "hooks"))
    for _ in range(6):
        fast.step(), hooks.step()
    for a, b in zip(fast.model.parameters(), hooks.model.parameters()):
        assert ((a - b).norm() / b.norm()).item() <= 1e-4
    assert fast.releases == hooks.releases == 6 * (2 if method == "dpsam" else 1)


def assert_dpsat_at_rho_zero_is_dpsgd(steps: int, **common) -> None:
    """DP-SAT with ρ = 0 and DP-SGD, both built from `common`, hold equal weights after every one of `steps`."""
    sgd, sat = prepare(TrainConfig(method="dpsgd", **common)), prepare(TrainConfig(method="dpsat", rho=0.0, **common))
    for _ in range(steps):
        sgd.step(), sat.step()
        assert all(torch.equal(a, b) for a, b in zip(sgd.model.parameters(), sat.model.parameters()))


def test_dpsat_with_rho_zero_is_dpsgd_under_fast_clipping():
    assert_dpsat_at_rho_zero_is_dpsgd(8, dataset="digits", noise_multiplier=1.0, seed=3, clipping="fast")


def test_evaluation_between_steps_is_harmless_but_a_forward_without_backward_is_refused():
    trainer = prepare(TrainConfig(method="dpsgd", dataset="breast_cancer", noise_multiplier=1.0, clipping="fast"))
    trainer.step()
    with torch.no_grad():
        trainer.model(trainer.x_train[:10])  # records nothing
    trainer.step()
    trainer.model(trainer.x_train[:10])  # a graph nobody backpropagates through
    with pytest.raises(RuntimeError, match="exactly one forward pass per backward"):
        trainer.step()
    trainer.step()  # the stale records were dropped with the error


def test_a_layer_output_changed_in_place_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    module, optimizer = _optimizer(model, "fast", clip=1.0, batch_size=8)
    loss = nn.functional.cross_entropy(module(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
    with pytest.raises(RuntimeError, match="modified in place"):
        optimizer.backward(loss)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten()),
        nn.Sequential(nn.Embedding(10, 4), nn.Flatten()),
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
    ],
)
def test_layers_the_engine_does_not_cover_are_refused_with_the_fix(model):
    with pytest.raises(ConfigError, match="use clipping='hooks'"):
        _optimizer(model, "fast", clip=1.0, batch_size=8)


def test_frozen_parameters_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    with pytest.raises(ConfigError, match="exactly the model's parameters"):
        _optimizer(model, "fast", clip=1.0, batch_size=8)


def test_clipping_is_part_of_the_hash_and_hooks_keeps_stored_hashes():
    config = TrainConfig(method="dpsat", epsilon=2.0, clipping="hooks")
    # fields added later stay out of the hash while at their introduction values (clipping "hooks" is one)
    at_introduction = [k for k, v in ADDED_LATER.items() if config.to_dict()[k] == v]
    before = {
        k: v for k, v in config.to_dict().items() if k not in ("device", "max_physical_batch_size", *at_introduction)
    }
    assert config.config_hash() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert dataclasses.replace(config, clipping="fast").config_hash() != config.config_hash()
    assert TrainConfig().clipping == "fast"
    stored = {k: v for k, v in config.to_dict().items() if k != "clipping"}  # a run stored before the field
    assert TrainConfig.from_stored(stored).clipping == "hooks"
    with pytest.raises(ConfigError, match="unknown clipping 'ghost': choose one of fast, hooks"):
        TrainConfig(clipping="ghost")


def test_cli_selects_the_clipping_engine(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    args = ["train", "--dataset", "breast_cancer", "--method", "dpsgd", "--sigma", "1", "--epochs", "1", "--json"]
    assert main([*args, "--clipping", "hooks", "--store", db]) == 0
    hooks = json.loads(capsys.readouterr().out)
    assert main([*args, "--store", db]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert hooks["run_id"] != fast["run_id"] and not fast["reused"]
    assert main(["show", hooks["run_id"], "--json", "--store", db]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["clipping"] == "hooks"
    with pytest.raises(SystemExit):
        main([*args, "--clipping", "ghost", "--store", db])


@pytest.mark.parametrize("randomness", ["research", "release"])
def test_the_fast_release_is_kept_in_one_flat_buffer_that_dpsat_reads(randomness):
    """DP-SAT and DP-SAM read the last release in place from `released`: `p.grad` must be views of it,
    with Opacus's secure noise too (else DP-SAT would silently perturb along zeros)."""
    common = dict(
        dataset="breast_cancer", noise_multiplier=1.0, rho=0.5, seed=0, clipping="fast", randomness=randomness
    )
    sat, sgd = prepare(TrainConfig(method="dpsat", **common)), prepare(TrainConfig(method="dpsgd", **common))
    optimizer = sat.step_fn.optimizer
    assert sat.step_fn.released is optimizer.released and not optimizer.released.any()  # g̃₋₁ = 0
    for _ in range(2):
        sat.step(), sgd.step()
        grads = [p.grad for p in optimizer.params]
        assert {g.untyped_storage().data_ptr() for g in grads} == {optimizer.released.untyped_storage().data_ptr()}
        assert torch.linalg.vector_norm(optimizer.released).item() == pytest.approx(
            torch.sqrt(sum((g**2).sum() for g in grads)).item(), rel=1e-6
        )
    if randomness == "research":  # same noise stream: step 0 equal, step 1 moved by the perturbation
        assert not all(torch.equal(a, b) for a, b in zip(sat.model.parameters(), sgd.model.parameters()))
