"""CUDA: private steps, the clipping engines, sweeps in worker processes, the Hessian and the landscape on a GPU,
each against the same computation on the CPU or the hooks reference. Skipped where torch sees no CUDA (CI has
none): run `python -m pytest tests/test_gpu.py` on a GPU machine (bench/RESULTS.md lists the last such run)."""

import copy

import numpy as np
import pytest
import torch

from dpsat_core import RunStore, SweepSpec, TrainConfig, build_model, prepare, sweep, train
from dpsat_core.data import load_dataset
from dpsat_core.gradients import private_gradient
from dpsat_core.hessian import hessian_spectrum
from dpsat_core.landscape import LossEvaluator, iter_surface, random_direction
from tests.test_clipping import MODELS, SPECS, _optimizer, _per_example_norms, assert_dpsat_at_rho_zero_is_dpsgd
from tests.test_hessian import exact_eigenvalues, tiny_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here: run on a GPU machine")


def _parameters(trainer) -> list[torch.Tensor]:
    return [p.detach().cpu() for p in trainer.model.parameters()]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float) -> None:
    for x, y in zip(a, b):
        assert ((x - y).norm() / y.norm()).item() <= rtol


def test_auto_picks_cuda_and_the_run_says_so():
    result = train(TrainConfig(dataset="breast_cancer", method="dpsat", epsilon=3.0, epochs=1))
    assert result.device.startswith("cuda") and result.status == "done"
    assert 0 < result.privacy.epsilon <= 3.0


@pytest.mark.parametrize("clipping", ["fast", "hooks"])
@pytest.mark.parametrize("method", ["dpsgd", "dpsat", "dpsam"])
def test_noiseless_private_steps_on_cuda_follow_the_cpu(method, clipping):
    """σ = 0 takes the noise generators (which differ by device) out: what is left is clipping and the method."""
    common = dict(method=method, dataset="digits", noise_multiplier=0.0, rho=0.2, seed=4, clipping=clipping)
    gpu, cpu = prepare(TrainConfig(device="cuda", **common)), prepare(TrainConfig(device="cpu", **common))
    for _ in range(5):  # both take the GPU run's Poisson batches
        batch = gpu.draw()
        gpu.step_fn(lambda: batch), cpu.step_fn(lambda: tuple(t.cpu() for t in batch))
    _close(_parameters(gpu), _parameters(cpu), 1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_fast_clipping_equals_the_hooks_on_cuda_for_every_project_model(name):
    spec, model = SPECS[name], copy.deepcopy(MODELS[name])
    torch.manual_seed(1)
    batch = (torch.randn(40, *spec.input_shape), torch.randint(0, spec.n_classes, (40,)))
    clip = _per_example_norms(model, batch).median().item()
    gpu_batch = tuple(t.cuda() for t in batch)
    released = {}
    for clipping in ("fast", "hooks"):
        module, optimizer = _optimizer(copy.deepcopy(model).cuda(), clipping, clip=clip, batch_size=40)
        optimizer.zero_grad(set_to_none=True)
        private_gradient(module, optimizer, gpu_batch, chunk_size=16)
        released[clipping] = [p.grad.cpu() for p in optimizer.params]
    _close(released["fast"], released["hooks"], 1e-5)


def test_dpsat_with_rho_zero_is_dpsgd_step_for_step_on_cuda():
    assert_dpsat_at_rho_zero_is_dpsgd(6, dataset="digits", noise_multiplier=1.0, seed=3, device="cuda")


def test_release_mode_noise_on_cuda_differs_between_runs_of_one_seed():
    common = dict(method="dpsgd", dataset="digits", noise_multiplier=1.0, seed=0, randomness="release", device="cuda")
    a, b = prepare(TrainConfig(**common)), prepare(TrainConfig(**common))
    a.step(), b.step()
    assert not all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))


def test_a_sweep_trains_every_cell_on_cuda_in_forked_workers(tmp_path):
    """Workers fork from a fork server that never touched CUDA, so each can start its own CUDA context."""
    store = RunStore(tmp_path / "runs.sqlite")
    spec = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=1), methods=("dpsgd", "dpsat"), epsilons=(2.0,), seeds=(0,)
    )
    result = sweep(spec, store, workers=2)
    assert not result.errors and not result.failed and len(result.trained) == 2
    records = [store.get(h) for h in result.trained]
    assert all(r.status == "done" and r.summary.device.startswith("cuda") for r in records)


def test_the_hessian_on_cuda_matches_the_exact_one():
    model, x, y = tiny_cnn()
    exact, _ = exact_eigenvalues(model, x, y)
    spectrum = hessian_spectrum(model.cuda(), x.cuda(), y.cuda(), k=3, trace_probes=8)
    np.testing.assert_allclose(spectrum.top, exact[:3], rtol=1e-3)


def test_the_batched_surface_on_cuda_equals_the_point_loop_and_the_cpu():
    data = load_dataset("digits")
    model = build_model(prepare(TrainConfig(dataset="digits", method="sgd")).spec, seed=0)
    x, y = torch.tensor(data.x_train[:128]), torch.tensor(data.y_train[:128])
    surfaces = {}
    for name, device, batched in (("vmap", "cuda", True), ("loop", "cuda", False), ("cpu", "cpu", False)):
        evaluator = LossEvaluator(copy.deepcopy(model).to(device), x.to(device), y.to(device), batch_points=batched)
        d1, d2 = random_direction(evaluator.weights, seed=0), random_direction(evaluator.weights, seed=1)
        *_, surfaces[name] = iter_surface(evaluator, d1, d2, steps=9)
    assert LossEvaluator(model.cuda(), x.cuda(), y.cuda()).batch_points  # CUDA batches by default
    for name in ("loop", "cpu"):
        np.testing.assert_allclose(surfaces["vmap"].loss, surfaces[name].loss, rtol=1e-4)
