"""Hessian of the training loss: top eigenvalues (Lanczos), trace (Hutchinson), density (SLQ),
and the scale-invariant adaptive λ_max.

Hessian-vector products come from `torch.func`: a cached vjp of the gradient, or
its linearisation traced once and reused (`HessianOperator`). Nothing here mutates the
caller's model: the loss is evaluated with `functional_call` on detached copies
of its parameters. PyHessian is the second backend, for cross-checks only.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import functional_call, grad, linearize, vjp

from .config import HESSIAN_BACKENDS
from .errors import ConfigError
from .models import plain_copy
from .progress import Progress, ProgressFn, StopFn, check_stop, no_progress
from .results import AdaptiveSharpness, HessianSpectrum

# linearize keeps about this many times the forward activations alive (measured on the tanh CNNs).
LINEARIZE_MEMORY_FACTOR = 20
LINEARIZE_BUDGET_BYTES = 1.5 * 1024**3
# Tracing costs what this many products save: measured (2-core CPU, 2026-11-25) on the 407k CNN at 64 samples
# (10 s to trace, 0.72 vs 0.85 s a product: ~77) and the digits CNN at 1,024 (2.6 s, 0.059 vs 0.065 s: ~450).
LINEARIZE_MIN_PRODUCTS = 500
HVP_MODES = ("auto", "linearize", "vjp")


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of all leaf-module outputs in one forward pass over x (a proxy for autograd memory)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def check_examples(x: torch.Tensor, y: torch.Tensor) -> None:
    """The Hessian of a mean loss needs ≥ 1 example with one label each (an empty batch's loss is NaN, and
    Lanczos would then fail deep inside ARPACK)."""
    if len(x) < 1 or len(x) != len(y):
        raise ConfigError(
            f"the Hessian needs at least one example and one label per example, got {len(x)} examples and "
            f"{len(y)} labels: use n_samples ≥ 1"
        )


class FlatOperator:
    """A symmetric linear map on flat parameter vectors (torch in, torch out), with `size`, `device` and `dtype`."""

    size: int
    device: torch.device
    dtype: torch.dtype

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def as_scipy(self) -> LinearOperator:
        def matvec(v: np.ndarray) -> np.ndarray:
            vector = torch.as_tensor(np.ravel(v), dtype=self.dtype, device=self.device)
            return self(vector).double().cpu().numpy()

        return LinearOperator((self.size, self.size), matvec=matvec, dtype=np.float64)


class HessianOperator(FlatOperator):
    """v ↦ H v for the mean cross-entropy of `model` on (x, y), on flat vectors.

    `linearize` traces the gradient's linearisation once: each product then
    costs less than a gradient, but it holds ≈20× the activations. `vjp` keeps
    a vjp of the gradient (≈1.5–2× a gradient per product, far less memory).
    Tracing costs tens to hundreds of products, so `auto` takes linearize only
    when `expected_products` ≥ `LINEARIZE_MIN_PRODUCTS` and its memory fits
    `LINEARIZE_BUDGET_BYTES`; linearize falls back to vjp if it cannot trace the model. `mode` says which ran;
    `weights` is the flat point w where H is taken, in the products' order.
    """

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, mode: str = "auto", expected_products: int = 0
    ):
        if mode not in HVP_MODES:
            raise ConfigError(f"unknown HVP mode {mode!r}: choose one of {', '.join(HVP_MODES)}")
        check_examples(x, y)
        native = plain_copy(model)
        if mode == "auto":
            worth = expected_products >= LINEARIZE_MIN_PRODUCTS
            fits = worth and LINEARIZE_MEMORY_FACTOR * activation_bytes(native, x) <= LINEARIZE_BUDGET_BYTES
            mode = "linearize" if fits else "vjp"
        self.mode = mode
        if mode == "linearize":
            try:
                self._product = self._linearized(plain_copy(model, elementary_group_norm=True), x, y)
                return
            except RuntimeError:  # an op linearize cannot trace: fall back
                self.mode = "vjp"
        self._product = self._vjp(native, x, y)

    def _setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        primals = tuple(p.detach().clone() for n, p in model.named_parameters() if p.requires_grad)
        self.shapes = [p.shape for p in primals]
        self.sizes = [p.numel() for p in primals]
        self.size = sum(self.sizes)
        self.weights = torch.cat([p.reshape(-1) for p in primals])
        self.device, self.dtype = primals[0].device, primals[0].dtype
        self.products = 0

        def loss(*params: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, dict(zip(names, params)), (x,)), y)

        return grad(loss, argnums=tuple(range(len(primals)))), primals

    def _linearized(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        gradient, primals = self._setup(model, x, y)
        with warnings.catch_warnings():
            # torch 2.13's linearize warns while constant-folding its traced graph; products are checked in tests.
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
            _, product = linearize(gradient, *primals)
            product(*primals)  # probe: some ops fail only when the traced graph runs
        return product

    def _vjp(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        gradient, primals = self._setup(model, x, y)
        _, vjp_fn = vjp(gradient, *primals)
        return lambda *v: vjp_fn(v)  # H is symmetric: vᵀH = (Hv)ᵀ

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.view(s) for t, s in zip(torch.split(flat, self.sizes), self.shapes))

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return torch.cat([t.reshape(-1) for t in self._product(*self.split(flat))])


class ScaledOperator(FlatOperator):
    """v ↦ s ⊙ H(s ⊙ v): the Hessian in coordinates measured in units of s (s = |w| for adaptive sharpness)."""

    def __init__(self, op: HessianOperator, scale: torch.Tensor):
        if scale.shape != (op.size,):
            raise ConfigError(f"scale must have one entry per parameter ({op.size}), got shape {tuple(scale.shape)}")
        self.op, self.scale = op, scale.to(op.device, op.dtype)
        self.size, self.device, self.dtype = op.size, op.device, op.dtype

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op(self.scale * flat)


@dataclass(frozen=True)
class RitzEstimate:
    """Top-k eigenvalue estimates (descending), a bound on each one's absolute error, and the products spent."""

    values: list[float]
    error_bounds: list[float]
    products: int
    converged: bool


def _error_bounds(theta: np.ndarray, residuals: np.ndarray, k: int) -> np.ndarray:
    """Per wanted Ritz value: the least of its residual, the cluster bound ‖R‖²/δ and Temple's bound.

    The residual ρᵢ puts an eigenvalue within ρᵢ of θᵢ; the cluster bound ‖R‖²/δ (Rayleigh–Ritz,
    quadratic in the residuals) is far smaller once the wanted pairs converge. δ is θₖ − θₖ₊₁ − ρₖ₊₁:
    the next Ritz value pushed up by its own residual, so an unconverged θₖ₊₁ shrinks the gap.
    Temple: if no eigenvalue lies in (a, λᵢ) and a < θᵢ, then λᵢ ≤ θᵢ + ρᵢ²/(θᵢ − a); θᵢ ≤ λᵢ (interlacing),
    so that is an error bound with ρᵢ² alone where the cluster bound sums all k. It runs from the bottom:
    a = θₖ₊₁ + ρₖ₊₁ for θₖ (the cluster bound's assumption), then a = θᵢ₊₁ + its bound for θᵢ.
    """
    wanted = residuals[:k]
    gap = theta[k - 1] - theta[k] - residuals[k] if len(theta) > k else np.inf
    cluster = float(np.sum(wanted**2)) / gap if gap > 0 else np.inf
    bounds = np.minimum(wanted, cluster)
    ceiling = theta[k] + residuals[k] if len(theta) > k else -np.inf  # an upper bound on λᵢ₊₁
    for i in reversed(range(k)):
        if theta[i] > ceiling:
            bounds[i] = min(bounds[i], wanted[i] ** 2 / (theta[i] - ceiling))
        ceiling = theta[i] + bounds[i]
    return bounds


def lanczos_top(
    op: FlatOperator, k: int, *, tol: float = 1e-3, seed: int = 0, max_products: Optional[int] = None
) -> RitzEstimate:
    """The k algebraically largest eigenvalues by Lanczos with full re-orthogonalisation (float64 basis and
    recurrences, products in the operator's dtype), stopped as soon as every one's error bound is ≤ tol·|θ|
    (or at the products' roundoff, for an eigenvalue at 0).

    Stopping on the eigenvalues' own (quadratic) bound instead of the Ritz residuals saves the
    products a residual test spends on accuracy nobody asked for; no restart discards any
    (407k CNN, 64 samples: 33 products at tol 1e-3, error 4.5e-5, against eigsh's 35).
    A bound says θᵢ is that close to *an* eigenvalue: like any Krylov or power method, Lanczos
    can miss an eigenvalue its start barely touches, which no bound sees (same CNN at tol 1e-2:
    stopped after 25 products before λ₅ appeared, 5.8% off); at tol ≤ 1e-3 it had appeared.
    """
    if not 1 <= k < op.size:
        raise ConfigError(f"k must be between 1 and {op.size - 1} (the number of parameters − 1), got {k}")
    if not 0 < tol < 1:
        raise ConfigError(f"tol is a relative eigenvalue error and must be in (0, 1), got {tol}")
    limit = min(op.size, max(max_products or op.size, k + 1))
    roundoff = 10 * torch.finfo(op.dtype).eps  # products carry this relative error; no bound goes below it
    rng = np.random.default_rng(seed)
    fresh = lambda: torch.as_tensor(rng.standard_normal(op.size), device=op.device)  # noqa: E731
    basis = torch.empty(min(limit + 1, 64), op.size, dtype=torch.float64, device=op.device)
    basis[0] = (start := fresh()) / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(limit):
        w = op(basis[j].to(op.dtype)).double()
        alphas.append(torch.dot(w, basis[j]).item())
        for _ in range(2):  # classical Gram–Schmidt twice: orthogonal to working precision
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = w.norm().item()
        theta, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        theta, last = theta[::-1], vectors[-1, ::-1]
        if j + 1 > k:
            floor = roundoff * np.abs(theta).max()
            bounds = np.maximum(_error_bounds(theta, beta * np.abs(last), k), floor)
            converged = bool(np.all(bounds <= np.maximum(tol * np.abs(theta[:k]), floor)))
            if converged or j + 1 == limit:
                break
        if beta <= 1e-12 * max(abs(a) for a in alphas):  # an invariant subspace: go on from a fresh direction
            w, beta = fresh(), 0.0
            for _ in range(2):
                w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        betas.append(beta)
        if j + 1 == len(basis):  # grow the basis by doubling, never past limit + 1 rows
            more = torch.empty(min(len(basis), limit + 1 - len(basis)), op.size, dtype=basis.dtype, device=op.device)
            basis = torch.cat([basis, more])
        basis[j + 1] = w / w.norm()
    return RitzEstimate([float(t) for t in theta[:k]], [float(b) for b in bounds], j + 1, converged)


def top_eigenvalues(op: FlatOperator, k: int, *, tol: float = 1e-3, seed: int = 0) -> list[float]:
    """The k algebraically largest eigenvalues, descending, each within tol relative (`lanczos_top`)."""
    estimate = lanczos_top(op, k, tol=tol, seed=seed)
    if not estimate.converged:
        warnings.warn(f"Lanczos stopped after {estimate.products} products above tol {tol}", RuntimeWarning)
    return estimate.values


def hutchinson_trace(
    op: FlatOperator,
    probes: int,
    *,
    seed: int = 0,
    should_stop: Optional[StopFn] = None,
    on_probe: Callable[[int], None] = lambda i: None,
) -> tuple[float, float, int]:
    """Mean of vᵀHv over Rademacher probes and its standard error; exact (basis vectors) when probes ≥ size."""
    if probes < 2:
        raise ConfigError(f"trace needs at least 2 probes for a standard error, got {probes}")
    if probes >= op.size:
        diagonal = [
            op(torch.nn.functional.one_hot(torch.tensor(i), op.size).to(op.device, op.dtype))[i].item()
            for i in range(op.size)
        ]
        return float(sum(diagonal)), 0.0, op.size
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(probes):
        check_stop(should_stop)
        v = (torch.randint(0, 2, (op.size,), generator=generator) * 2 - 1).to(op.device, op.dtype)
        samples.append(torch.dot(v, op(v)).item())
        on_probe(i + 1)
    values = np.array(samples)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(probes)), probes


def lanczos_tridiagonal(op: FlatOperator, steps: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and weights (first eigenvector components squared) from `steps` Lanczos steps,
    with full re-orthogonalisation."""
    steps = min(steps, op.size)
    v = torch.randn(op.size, generator=generator).to(op.device, op.dtype)
    basis = [v / v.norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = op(basis[j])
        alpha = torch.dot(w, basis[j])
        w = w - alpha * basis[j] - (betas[-1] * basis[j - 1] if j > 0 else 0)
        stacked = torch.stack(basis)
        w = w - stacked.T @ (stacked @ w)
        alphas.append(alpha.item())
        beta = w.norm()
        if j == steps - 1 or beta.item() < 1e-10:
            break
        betas.append(beta.item())
        basis.append(w / beta)
    tri = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
    values, vectors = np.linalg.eigh(tri)
    return values, vectors[0] ** 2


def slq_density(
    op: FlatOperator,
    *,
    steps: int = 40,
    runs: int = 2,
    points: int = 200,
    seed: int = 0,
    should_stop: Optional[StopFn] = None,
) -> tuple[list[float], list[float]]:
    """Stochastic Lanczos quadrature: the eigenvalue density on a grid, Gaussian-smoothed, integrating to 1."""
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(runs):
        check_stop(should_stop)
        values, w = lanczos_tridiagonal(op, steps, generator)
        nodes.append(values)
        weights.append(w / runs)
    nodes_all, weights_all = np.concatenate(nodes), np.concatenate(weights)
    low, high = nodes_all.min(), nodes_all.max()
    pad = 0.05 * max(high - low, 1e-6)
    grid = np.linspace(low - pad, high + pad, points)
    width = 0.01 * max(high - low, 1e-6)
    kernel = np.exp(-((grid[:, None] - nodes_all[None, :]) ** 2) / (2 * width**2)) / (width * math.sqrt(2 * math.pi))
    density = kernel @ weights_all
    return grid.tolist(), density.tolist()


def _pyhessian(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, probes: int, seed: int
) -> tuple[list[float], float, float]:
    """PyHessian's power iteration and Hutchinson on a plain copy (it calls `.eval()` and leaves
    gradients on the module it gets), with its global-RNG use contained."""
    from pyhessian import hessian as PyHessian

    check_examples(x, y)
    model = plain_copy(model)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        engine = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=(x.device.type == "cuda"))
        top, _ = engine.eigenvalues(top_n=k, maxIter=200, tol=1e-5)
        samples = np.array(engine.trace(maxIter=probes, tol=0.0))  # tol=0: a fixed number of probes
    for p in model.parameters():  # its backward(create_graph=True) left a parameter↔gradient cycle
        p.grad = None
    return sorted(top, reverse=True), float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(len(samples)))


def hessian_spectrum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    k: int = 5,
    trace_probes: int = 100,
    density_steps: int = 40,
    density_runs: int = 2,
    backend: str = "lanczos",
    seed: int = 0,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> HessianSpectrum:
    """The Hessian's top-k, trace and density of the mean loss of `model` on (x, y); `model` is not modified."""
    if backend not in HESSIAN_BACKENDS:
        raise ConfigError(f"unknown Hessian backend {backend!r}: choose {' or '.join(HESSIAN_BACKENDS)}")
    start = time.perf_counter()
    total = 1 + trace_probes + density_runs
    report = lambda done, message: on_progress(Progress("hessian", done, total, message))  # noqa: E731
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if backend == "pyhessian":
        report(0, "PyHessian power iteration")
        top, trace, stderr = _pyhessian(model, x, y, k, trace_probes, seed)
        report(total, "done")
        return HessianSpectrum(
            top=top,
            trace=trace,
            trace_stderr=stderr,
            trace_probes=trace_probes,
            density_grid=[],
            density=[],
            n_samples=len(x),
            n_params=n_params,
            backend=backend,
            seconds=time.perf_counter() - start,
        )
    op = HessianOperator(model, x, y, expected_products=8 * k + trace_probes + density_runs * density_steps)
    report(0, f"Lanczos: top {k} eigenvalues")
    top = top_eigenvalues(op, k, seed=seed)
    check_stop(should_stop)
    report(1, "Hutchinson trace")
    trace, stderr, probes = hutchinson_trace(
        op,
        trace_probes,
        seed=seed,
        should_stop=should_stop,
        on_probe=lambda i: report(1 + i, f"trace probe {i}/{trace_probes}"),
    )
    grid, density = slq_density(op, steps=density_steps, runs=density_runs, seed=seed, should_stop=should_stop)
    report(total, "done")
    return HessianSpectrum(
        top=top,
        trace=trace,
        trace_stderr=stderr,
        trace_probes=probes,
        density_grid=grid,
        density=density,
        n_samples=len(x),
        n_params=n_params,
        backend=backend,
        seconds=time.perf_counter() - start,
    )


def adaptive_sharpness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> AdaptiveSharpness:
    """Adaptive λ_max: top eigenvalue of T·H·T, T = diag(|w|) (Kwon et al. 2021, ρ → 0); `model` is not modified.

    A rescaling w → a⊙w that leaves the loss unchanged (weights before a normalisation)
    maps H to A⁻¹HA⁻¹ and T to AT, so T·H·T, unlike H, does not move.
    """
    start = time.perf_counter()
    on_progress(Progress("adaptive", 0, 1, "Lanczos: adaptive λ_max"))
    op = HessianOperator(model, x, y)
    check_stop(should_stop)
    top = top_eigenvalues(ScaledOperator(op, op.weights.abs()), 1, seed=seed)
    on_progress(Progress("adaptive", 1, 1, "done"))
    return AdaptiveSharpness(lambda_max=top[0], n_samples=len(x), n_params=op.size, seconds=time.perf_counter() - start)
