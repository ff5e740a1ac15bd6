"""Method invariants and cross-checks against independent torch.func implementations."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from dpsat_core import TrainConfig, build_model, prepare
from dpsat_core.flat import flat_views
from dpsat_core.gradients import private_gradient
from dpsat_core.steps import Perturbation

torch.set_num_threads(1)


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def _fixed_batch(trainer, n=64, offset=0):
    return trainer.x_train[offset : offset + n], trainer.y_train[offset : offset + n]


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])  # CNN and MLP
def test_dpsat_with_rho_zero_is_dpsgd_step_for_step(dataset):
    common = dict(dataset=dataset, epsilon=2.0, seed=3, epochs=2)
    sgd, sat = prepare(TrainConfig(method="dpsgd", **common)), prepare(TrainConfig(method="dpsat", rho=0.0, **common))
    for _ in range(15):
        sgd.step(), sat.step()
        for a, b in zip(sgd.model.parameters(), sat.model.parameters()):
            assert torch.equal(a, b)
    assert sgd.releases == sat.releases == 15


def test_dpsat_with_rho_positive_differs_from_dpsgd_after_the_first_step():
    common = dict(dataset="breast_cancer", epsilon=2.0, seed=0)
    sgd, sat = prepare(TrainConfig(method="dpsgd", **common)), prepare(TrainConfig(method="dpsat", rho=0.5, **common))
    sgd.step(), sat.step()  # step 0: g̃₋₁ = 0, so no perturbation yet
    assert all(torch.equal(a, b) for a, b in zip(sgd.model.parameters(), sat.model.parameters()))
    sgd.step(), sat.step()
    assert not all(torch.equal(a, b) for a, b in zip(sgd.model.parameters(), sat.model.parameters()))


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_zero_noise_and_huge_clip_is_plain_sgd(dataset):
    common = dict(dataset=dataset, seed=1, batch_size=64, momentum=0.9, lr=0.1)
    dp = prepare(TrainConfig(method="dpsgd", noise_multiplier=0.0, clip_norm=1e9, **common))
    sgd = prepare(TrainConfig(method="sgd", **common))
    batch = _fixed_batch(dp)  # sampling aside: both see the same batch of exactly the expected size
    for _ in range(10):
        dp.step_fn(lambda: batch), sgd.step_fn(lambda: batch)
    for a, b in zip(dp.model.parameters(), sgd.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _clean(trainer):
    """A hook-free module of the same architecture, for reference computations."""
    return build_model(trainer.spec, seed=0)


def _noiseless(method, *, rho, lr):
    """σ = 0 and a huge C: the private step reduces to its non-private algorithm, plain SGD without momentum."""
    return TrainConfig(
        method=method,
        dataset="breast_cancer",
        noise_multiplier=0.0,
        clip_norm=1e9,
        rho=rho,
        lr=lr,
        momentum=0.0,
        batch_size=64,
        seed=2,
    )


def _mean_grad(model, params, x, y):
    names = [n for n, _ in model.named_parameters()]
    loss = F.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)
    return list(torch.autograd.grad(loss, params))


def test_dpsat_matches_an_independent_implementation_without_noise():
    """w ← w − lr·∇L(w + ρ·g_prev/‖g_prev‖), g_prev the previous step's gradient, none at step 0."""
    rho, lr = 0.3, 0.2
    sat = prepare(_noiseless("dpsat", rho=rho, lr=lr))
    model = _clean(sat)
    ref = [p.detach().clone().requires_grad_(True) for p in sat.model.parameters()]
    batches = [_fixed_batch(sat, offset=64 * i) for i in range(5)]
    prev = None
    for batch in batches:
        sat.step_fn(lambda b=batch: b)
        if prev is None:
            point = ref
        else:
            norm = torch.sqrt(sum((g**2).sum() for g in prev))
            point = [w + rho * g / norm for w, g in zip(ref, prev)]
        g = _mean_grad(model, point, *batch)
        with torch.no_grad():
            ref = [(w - lr * gi).requires_grad_(True) for w, gi in zip(ref, g)]
        prev = g
    for a, b in zip(sat.model.parameters(), ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dpsam_matches_an_independent_implementation_without_noise():
    """Ascent on its own batch A, descent on batch B at w + ρ·g_A/‖g_A‖."""
    rho, lr = 0.3, 0.2
    sam = prepare(_noiseless("dpsam", rho=rho, lr=lr))
    model = _clean(sam)
    ref = [p.detach().clone().requires_grad_(True) for p in sam.model.parameters()]
    batches = [_fixed_batch(sam, offset=64 * i) for i in range(6)]
    for i in range(0, 6, 2):
        feed = iter(batches[i : i + 2])
        sam.step_fn(lambda: next(feed))
        g_a = _mean_grad(model, ref, *batches[i])
        norm = torch.sqrt(sum((g**2).sum() for g in g_a))
        g_b = _mean_grad(model, [w + rho * g / norm for w, g in zip(ref, g_a)], *batches[i + 1])
        with torch.no_grad():
            ref = [(w - lr * g).requires_grad_(True) for w, g in zip(ref, g_b)]
    assert sam.releases == 6
    for a, b in zip(sam.model.parameters(), ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_private_gradient_is_the_mean_of_clipped_per_example_gradients():
    clip = 0.05
    dp = prepare(TrainConfig(method="dpsgd", dataset="digits", noise_multiplier=0.0, clip_norm=clip, batch_size=50))
    x, y = _fixed_batch(dp, n=40)  # fewer than the expected 50: scaling must use the expected size
    model = _clean(dp)
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in dp.model.named_parameters()}

    def one(xi, yi):
        return grad(lambda ps: F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None]))(params)

    per_example = vmap(one)(x, y)
    norms = torch.sqrt(sum((per_example[n].reshape(len(x), -1) ** 2).sum(1) for n in names))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("i,i...->...", factor, per_example[n]) / 50 for n in names]
    dp.step_fn.optimizer.zero_grad(set_to_none=True)
    private_gradient(dp.step_fn.model, dp.step_fn.optimizer, (x, y), chunk_size=16)
    for p, e in zip(dp.step_fn.optimizer.params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)
    assert (norms > clip).all()  # the test exercises clipping, not the identity


def test_dpsat_applies_its_perturbation_once_per_logical_batch_however_it_is_chunked():
    common = dict(method="dpsat", dataset="digits", epsilon=2.0, rho=0.5, seed=4)
    whole = prepare(TrainConfig(max_physical_batch_size=4096, **common))
    chunked = prepare(TrainConfig(max_physical_batch_size=16, **common))
    for _ in range(8):
        whole.step(), chunked.step()
    for a, b in zip(whole.model.parameters(), chunked.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_perturbation_restores_the_weights_exactly_without_new_tensors():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    before = [p.detach().clone() for p in params]
    perturbation = Perturbation(params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # moved into one flat buffer, values kept
    storages = {p.untyped_storage().data_ptr() for p in params}
    assert storages == {perturbation.weights.untyped_storage().data_ptr()}
    direction = [torch.randn(5, 3), torch.randn(3)]
    perturbation.load(direction)
    buffers = {t.data_ptr() for t in (perturbation.weights, perturbation.saved, perturbation.direction)}
    for _ in range(3):  # every step starts from the same weights and must leave them as they were
        with perturbation.applied(0.7):
            shift = [p.detach() - b for p, b in zip(params, before)]
            assert torch.sqrt(sum((s**2).sum() for s in shift)).item() == pytest.approx(0.7, rel=1e-5)
            norm = torch.sqrt(sum((d**2).sum() for d in direction))
            for s, d in zip(shift, direction):  # along d, independently of the flat layout
                torch.testing.assert_close(s, 0.7 * d / norm, rtol=1e-4, atol=1e-6)
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # bit-for-bit, no rounding residual
    assert {p.untyped_storage().data_ptr() for p in params} == storages
    assert {t.data_ptr() for t in (perturbation.weights, perturbation.saved, perturbation.direction)} == buffers
    with pytest.raises(ValueError, match="laid out like the weights"):
        with perturbation.applied(0.7, torch.zeros(3)):
            pass
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_flat_views_give_each_tensor_an_aligned_view_in_one_shared_layout():
    tensors = [torch.empty(5, 3), torch.empty(3), torch.empty(2, 2, 4)]
    flat, views = flat_views(tensors)
    again, _ = flat_views(tensors)
    assert flat.shape == again.shape == (16 + 16 + 16,) and not flat.any()
    assert [v.shape for v in views] == [t.shape for t in tensors] and all(v.is_contiguous() for v in views)
    assert [v.storage_offset() for v in views] == [0, 16, 32]  # 64-byte starts for float32
    with pytest.raises(ValueError, match="one dtype and device"):
        flat_views([torch.empty(2), torch.empty(2, dtype=torch.float64)])
