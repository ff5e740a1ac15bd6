"""The Hessian tools against the exact Hessian of tiny models, and against PyHessian."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import dpsat_core.hessian as hessian_module
from dpsat_core import ModelSpec, TrainConfig, build_model, train
from dpsat_core.data import load_dataset
from dpsat_core.errors import ConfigError
from dpsat_core.hessian import (
    FlatOperator,
    HessianOperator,
    adaptive_sharpness,
    hessian_spectrum,
    hutchinson_trace,
    lanczos_top,
    top_eigenvalues,
)


def tiny_mlp():
    """Seed 1 gives eigenvalues 1.48, 0.996, 0.508, … −0.512: magnitude ranking would pick −0.512 third."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model, torch.randn(40, 3), torch.randint(0, 3, (40,))


def tiny_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.GroupNorm(1, 2), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    )
    return model, torch.randn(30, 1, 4, 4), torch.randint(0, 3, (30,))


def exact_hessian(model, x, y):
    """The Hessian as a dense matrix (float64) and the flat weights, in `model.parameters()` order."""
    names = [n for n, _ in model.named_parameters()]
    shapes, sizes = [p.shape for p in model.parameters()], [p.numel() for p in model.parameters()]

    def loss(flat):
        params = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        return F.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat).double(), flat.double()


def exact_eigenvalues(model, x, y):
    matrix, _ = exact_hessian(model, x, y)
    return torch.linalg.eigvalsh(matrix).flip(0).numpy(), torch.trace(matrix).item()


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn])
def test_top_eigenvalues_and_trace_match_the_exact_hessian(make):
    model, x, y = make()
    exact, exact_trace = exact_eigenvalues(model, x, y)
    spectrum = hessian_spectrum(model, x, y, k=3, trace_probes=10_000)  # probes ≥ size: exact diagonal
    np.testing.assert_allclose(spectrum.top, exact[:3], rtol=1e-3)
    assert spectrum.top == sorted(spectrum.top, reverse=True)
    assert spectrum.trace == pytest.approx(exact_trace, rel=1e-3) and spectrum.trace_stderr == 0.0


@pytest.mark.parametrize("mode", ["linearize", "vjp"])
def test_both_product_modes_give_the_exact_top_eigenvalues(mode):
    model, x, y = tiny_cnn()
    exact, _ = exact_eigenvalues(model, x, y)
    op = HessianOperator(model, x, y, mode=mode)
    assert op.mode == mode
    np.testing.assert_allclose(top_eigenvalues(op, 3), exact[:3], rtol=1e-3)


def test_auto_mode_takes_linearize_only_when_enough_products_repay_tracing_and_its_memory_fits(monkeypatch):
    model, x, y = tiny_cnn()
    many = hessian_module.LINEARIZE_MIN_PRODUCTS
    assert HessianOperator(model, x, y).mode == "vjp"
    assert HessianOperator(model, x, y, expected_products=many - 1).mode == "vjp"
    assert HessianOperator(model, x, y, expected_products=many).mode == "linearize"
    monkeypatch.setattr(hessian_module, "LINEARIZE_BUDGET_BYTES", 0)
    assert HessianOperator(model, x, y, expected_products=many).mode == "vjp"


class DenseOperator(FlatOperator):
    """A float64 symmetric matrix as a flat operator (a known spectrum for Lanczos)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.size, self.device, self.dtype = matrix, matrix.shape[0], matrix.device, matrix.dtype
        self.products = 0

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.matrix @ flat


def clustered_operator(n: int = 300) -> tuple[DenseOperator, np.ndarray]:
    """Top five 10, 9.9, 9.85, 9.0, 8.99 (two tight clusters) over a bulk in [−3, 8.9], random eigenbasis."""
    rng = np.random.default_rng(0)
    spectrum = np.concatenate([[10, 9.9, 9.85, 9.0, 8.99], rng.uniform(-3, 8.9, n - 5)])
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return DenseOperator(torch.tensor(basis @ np.diag(spectrum) @ basis.T)), np.sort(spectrum)[::-1]


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-8])
def test_lanczos_errors_stay_within_the_bounds_it_reports(tol):
    op, exact = clustered_operator()
    estimate = lanczos_top(op, 5, tol=tol)
    errors, bounds = np.abs(np.array(estimate.values) - exact[:5]), np.array(estimate.error_bounds)
    assert estimate.converged and estimate.products == op.products
    assert np.all(bounds <= tol * np.abs(estimate.values)) and np.all(errors <= bounds)
    assert estimate.values == sorted(estimate.values, reverse=True)


def test_error_bounds_hold_on_any_rayleigh_ritz_subspace_where_the_gap_assumption_holds():
    """Rayleigh–Ritz on near-invariant subspaces of a known spectrum (not only Krylov ones): θᵢ ≤ λᵢ and
    λᵢ − θᵢ ≤ bound wherever λₖ₊₁ ≤ θₖ₊₁ + ρₖ₊₁ (the assumption the bounds share)."""
    rng = np.random.default_rng(0)
    spectrum = np.array([10.0, 9.0, 8.5, 8.0] + list(rng.uniform(-2, 7, 46)))
    eigvecs, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    matrix, exact, k = eigvecs @ np.diag(spectrum) @ eigvecs.T, np.sort(spectrum)[::-1], 3
    checked = 0
    for scale in np.geomspace(1e-3, 3e-1, 40):
        subspace, _ = np.linalg.qr(eigvecs[:, :5] + scale * rng.standard_normal((50, 5)))
        theta, vectors = np.linalg.eigh(subspace.T @ matrix @ subspace)
        theta, ritz = theta[::-1], subspace @ vectors[:, ::-1]
        residuals = np.linalg.norm(matrix @ ritz - ritz * theta, axis=0)
        bounds = hessian_module._error_bounds(theta, residuals, k)
        assert np.all(theta[:k] <= exact[:k] + 1e-12)
        if exact[k] <= theta[k] + residuals[k]:
            checked += 1
            assert np.all(exact[:k] - theta[:k] <= bounds + 1e-12)
    assert checked >= 20


def test_temple_bound_is_attained_and_needs_only_its_own_residual():
    """Eigenvalues 12, 10, 8, 8, 8; Ritz vectors x₁ = c₁e₁ + s₁e₃, x₂ = c₂e₂ + s₂e₄, x₃ = e₅ (an exact
    Rayleigh–Ritz triple). Temple's bound on θ₂ is its error 2s₂² exactly, however large ρ₁ is; the cluster
    bound (ρ₁² + ρ₂²)/δ is not."""
    (c1, s1), (c2, s2) = (np.cos(0.4), np.sin(0.4)), (np.cos(0.01), np.sin(0.01))
    theta = np.array([12 * c1**2 + 8 * s1**2, 10 * c2**2 + 8 * s2**2, 8.0])
    residuals = np.array([4 * c1 * s1, 2 * c2 * s2, 0.0])  # ‖Ax − θx‖ for each
    bounds = hessian_module._error_bounds(theta, residuals, 2)
    assert bounds[1] == pytest.approx(2 * s2**2, rel=1e-9)
    assert 12 - theta[0] <= bounds[0] <= residuals[0]
    assert bounds[1] < 1e-3 * np.sum(residuals[:2] ** 2) / (theta[1] - theta[2])


def test_lanczos_spends_fewer_products_at_a_coarser_tolerance_and_no_more_than_arpack():
    from scipy.sparse.linalg import eigsh

    op, _ = clustered_operator()
    coarse, fine = lanczos_top(op, 5, tol=1e-2).products, lanczos_top(op, 5, tol=1e-8).products
    assert coarse < fine
    op.products = 0
    eigsh(op.as_scipy(), k=5, which="LA", tol=1e-3, v0=np.ones(op.size), ncv=20)  # ARPACK, residual tol 1e-3
    arpack = op.products
    assert lanczos_top(op, 5, tol=1e-3).products <= arpack


def test_lanczos_finds_an_invariant_subspace_and_continues_past_it():
    """A rank-3 matrix: the Krylov space closes after 3 products; the next eigenvalues (0) need a fresh start."""
    op = DenseOperator(torch.diag(torch.tensor([3.0, 2.0, 1.0] + [0.0] * 20, dtype=torch.float64)))
    estimate = lanczos_top(op, 4, tol=1e-6)
    np.testing.assert_allclose(estimate.values, [3, 2, 1, 0], atol=1e-12)
    assert estimate.converged


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn])
@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_lanczos_on_the_exact_hessian_stays_within_its_bounds(make, tol):
    model, x, y = make()
    exact, _ = exact_eigenvalues(model, x, y)
    estimate = lanczos_top(HessianOperator(model, x, y, mode="vjp"), 3, tol=tol)
    errors = np.abs(np.array(estimate.values) - exact[:3])
    assert estimate.converged and np.all(errors <= np.array(estimate.error_bounds) + 1e-5 * np.abs(exact[:3]))
    assert np.all(errors <= tol * np.abs(exact[:3]))


@pytest.mark.parametrize("tol", [0.0, 1.0, -1e-3])
def test_lanczos_refuses_a_tolerance_outside_0_1(tol):
    op, _ = clustered_operator(20)
    with pytest.raises(ConfigError, match="tol"):
        lanczos_top(op, 2, tol=tol)


def test_eigenvalues_are_the_algebraically_largest_not_the_largest_in_magnitude():
    model, x, y = tiny_mlp()
    exact, _ = exact_eigenvalues(model, x, y)
    assert abs(exact[-1]) > exact[2]  # the premise: a magnitude ranking would differ
    top = top_eigenvalues(HessianOperator(model, x, y), 3)
    assert min(top) > 0 and top[2] == pytest.approx(exact[2], rel=1e-3)


def test_hutchinson_is_unbiased_within_its_standard_error():
    model, x, y = tiny_cnn()
    _, exact_trace = exact_eigenvalues(model, x, y)
    estimate, stderr, probes = hutchinson_trace(HessianOperator(model, x, y), 40, seed=3)
    assert probes == 40 and stderr > 0
    assert abs(estimate - exact_trace) < 4 * stderr


def test_a_model_linearize_cannot_trace_falls_back_to_vjp(monkeypatch):
    model, x, y = tiny_cnn()
    fast = HessianOperator(model, x, y, mode="linearize")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated linearize failure")

    monkeypatch.setattr(hessian_module, "linearize", broken)
    fallback = HessianOperator(model, x, y, mode="linearize")
    assert fallback.mode == "vjp"
    v = torch.randn(fast.size)
    torch.testing.assert_close(fast(v), fallback(v), rtol=1e-4, atol=1e-6)


def test_density_integrates_to_one_and_covers_the_top_eigenvalue():
    model, x, y = tiny_mlp()
    spectrum = hessian_spectrum(model, x, y, k=2, trace_probes=10, density_steps=30)
    grid, density = np.array(spectrum.density_grid), np.array(spectrum.density)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.02)
    assert grid.min() < 0 < spectrum.top[0] <= grid.max()


def test_the_callers_model_and_global_rng_are_left_alone():
    model, x, y = tiny_cnn()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    for backend in ("lanczos", "pyhessian"):
        hessian_spectrum(model, x, y, k=2, trace_probes=5, backend=backend)
    adaptive_sharpness(model, x, y)
    assert torch.rand(1) == expected
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_pyhessian_backend_agrees_with_lanczos_within_one_percent():
    result = train(TrainConfig(dataset="digits", method="sgd", epochs=2))
    model = build_model(result.model, seed=0)
    model.load_state_dict(result.state_dict)
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train[:256]), torch.tensor(data.y_train[:256])
    fast = hessian_spectrum(model, x, y, k=3, trace_probes=100, seed=0)
    slow = hessian_spectrum(model, x, y, k=3, trace_probes=100, seed=0, backend="pyhessian")
    np.testing.assert_allclose(slow.top, fast.top, rtol=0.01)
    assert abs(slow.trace - fast.trace) < 4 * np.hypot(slow.trace_stderr, fast.trace_stderr)


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn])
def test_adaptive_sharpness_is_the_top_eigenvalue_of_the_exactly_scaled_hessian(make):
    model, x, y = make()
    matrix, weights = exact_hessian(model, x, y)
    scale = weights.abs()
    exact = torch.linalg.eigvalsh(scale[:, None] * matrix * scale[None, :])[-1].item()
    result = adaptive_sharpness(model, x, y)
    assert result.lambda_max == pytest.approx(exact, rel=1e-3)
    assert result.n_params == len(weights) and result.n_samples == len(x)


def test_adaptive_sharpness_survives_rescaling_the_weights_a_group_norm_undoes():
    """Conv weight and bias × 0.25 before GroupNorm: same loss, λ_max moves, adaptive λ_max does not."""
    model = build_model(ModelSpec(architecture="cnn", input_shape=(1, 8, 8), n_classes=10), seed=0)
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train[:256]), torch.tensor(data.y_train[:256])
    rescaled = build_model(ModelSpec(architecture="cnn", input_shape=(1, 8, 8), n_classes=10), seed=0)
    with torch.no_grad():
        rescaled.features[0].weight.mul_(0.25)
        rescaled.features[0].bias.mul_(0.25)
        assert F.cross_entropy(rescaled(x), y).item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-4)
    plain = [top_eigenvalues(HessianOperator(m, x, y, mode="vjp"), 1)[0] for m in (model, rescaled)]
    adaptive = [adaptive_sharpness(m, x, y).lambda_max for m in (model, rescaled)]
    assert abs(plain[1] / plain[0] - 1) > 0.1
    assert adaptive[1] == pytest.approx(adaptive[0], rel=0.01)


def test_bad_settings_are_refused():
    from dpsat_core import ConfigError

    model, x, y = tiny_mlp()
    with pytest.raises(ConfigError, match="unknown Hessian backend"):
        hessian_spectrum(model, x, y, backend="power")
    with pytest.raises(ConfigError, match="k must be between 1 and"):
        top_eigenvalues(HessianOperator(model, x, y), 0)
    with pytest.raises(ConfigError, match="unknown HVP mode"):
        HessianOperator(model, x, y, mode="forward")


@pytest.mark.parametrize("backend", ["lanczos", "pyhessian"])
def test_an_empty_evaluation_set_is_refused_before_lanczos(backend):
    from dpsat_core import ConfigError

    model, x, y = tiny_mlp()
    with pytest.raises(ConfigError, match="the Hessian needs at least one example"):  # not scipy's ArpackError
        hessian_spectrum(model, x[:0], y[:0], backend=backend)
    with pytest.raises(ConfigError, match="got 40 examples and 39 labels"):
        adaptive_sharpness(model, x, y[:-1])
