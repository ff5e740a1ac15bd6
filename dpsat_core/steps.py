"""How each method takes one step: the step classes the registry in `methods` names.

A step takes `draw`, a function that returns a fresh Poisson-sampled batch, so a
method decides how many batches it consumes and how many releases it makes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol

import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from .clipping import FastDPOptimizer
from .flat import flat_views
from .gradients import Batch, mean_gradient, private_gradient

# Guards the division by ‖g‖ when the direction is zero (DP-SAT's first step).
TAU = 1e-12

Draw = Callable[[], Batch]


class Step(Protocol):
    def __call__(self, draw: Draw) -> Optional[float]: ...


class Perturbation:
    """Moves the parameters to w + ρ·d/(‖d‖+τ) and back *exactly*, one whole-model op at a time.

    At construction the parameters are moved, values unchanged, into one flat buffer
    (`weights`; `flat.flat_views` layout) that they then view: saving, perturbing and
    restoring them are one call each, and the restore copies the saved bits back (no
    rounding residual). The direction d is a flat tensor of the same layout: an
    optimizer's flat release read in place, or `direction`, filled by `load`. A step
    allocates no parameter-sized memory.
    """

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.weights, views = flat_views(params)
        with torch.no_grad():
            for p, view in zip(params, views):
                view.copy_(p)
                p.data = view
        self.saved = torch.empty_like(self.weights)
        self.direction, self._direction_views = flat_views(params)

    def load(self, tensors: list[torch.Tensor]) -> None:
        """Copy per-parameter tensors (e.g. the gradients in `p.grad`) into `direction`."""
        torch._foreach_copy_(self._direction_views, tensors)

    @contextmanager
    def applied(self, rho: float, direction: Optional[torch.Tensor] = None) -> Iterator[None]:
        """Inside: the parameters at w + ρ·d/(‖d‖+τ), d = `direction` or the loaded one; after: w, bit for bit."""
        d = self.direction if direction is None else direction
        if d.shape != self.weights.shape:
            raise ValueError(
                f"a direction must be laid out like the weights {tuple(self.weights.shape)}, got {tuple(d.shape)}"
            )
        # One scalar read per step: on the CPU three 0-dim tensor ops (+τ, divide) cost more than the read,
        # and on CUDA the step already waits for its loss (`private_gradient` reads it).
        scale = rho / (torch.linalg.vector_norm(d).item() + TAU)
        self.saved.copy_(self.weights)
        self.weights.add_(d, alpha=scale)
        try:
            yield
        finally:
            self.weights.copy_(self.saved)


def _grads(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def flat_release(optimizer: DPOptimizer) -> Optional[torch.Tensor]:
    """The optimizer's last release as one flat tensor laid out like a `Perturbation` of its parameters,
    read in place (the fast engine keeps it until the next release); None with Opacus's hooks (copy `p.grad`)."""
    return optimizer.released if isinstance(optimizer, FastDPOptimizer) else None


def apply_released(optimizer: DPOptimizer) -> None:
    """Apply the gradient already released into `p.grad` with the wrapped optimizer (SGD + momentum).

    `DPOptimizer.step()` would run `pre_step()` again: clip and noise a second time
    and charge a second release. `private_gradient` has already made the release,
    so only the plain update remains.
    """
    optimizer.original_optimizer.step()


class SgdStep:
    """Plain SGD (with momentum) on the mean loss of one batch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, rho: float, chunk_size: int):
        self.model, self.optimizer, self.chunk_size = model, optimizer, chunk_size

    def __call__(self, draw: Draw) -> Optional[float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = mean_gradient(self.model, draw(), chunk_size=self.chunk_size)
        if loss is not None:
            self.optimizer.step()
        return loss


class SamStep:
    """SAM (Foret et al.): gradient at w + ρ·g/‖g‖ on the same batch, applied at w."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, rho: float, chunk_size: int):
        self.model, self.optimizer, self.rho, self.chunk_size = model, optimizer, rho, chunk_size
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.perturbation = Perturbation(self.params)

    def __call__(self, draw: Draw) -> Optional[float]:
        batch = draw()
        self.optimizer.zero_grad(set_to_none=True)
        loss = mean_gradient(self.model, batch, chunk_size=self.chunk_size)
        if loss is None:
            return None
        self.perturbation.load(_grads(self.params))
        self.optimizer.zero_grad(set_to_none=True)
        with self.perturbation.applied(self.rho):
            mean_gradient(self.model, batch, chunk_size=self.chunk_size)
        self.optimizer.step()
        return loss


class DpSgdStep:
    """DP-SGD: one private release per step, applied at w."""

    def __init__(self, model: nn.Module, optimizer, *, rho: float, chunk_size: int):
        self.model, self.optimizer, self.chunk_size = model, optimizer, chunk_size

    def __call__(self, draw: Draw) -> Optional[float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = private_gradient(self.model, self.optimizer, draw(), chunk_size=self.chunk_size)
        apply_released(self.optimizer)
        return loss


class DpSamStep:
    """Naive DP-SAM: privatize the ascent gradient too (two releases, two backward passes).

    The ascent gradient is computed on its own Poisson batch, so the two releases
    are independent subsampled Gaussian mechanisms and charging 2·T releases at
    (σ, q) is exact. On one shared batch they would form a single mechanism with
    noise σ/√2 per step, which 2·T independent releases under-count.
    """

    def __init__(self, model: nn.Module, optimizer, *, rho: float, chunk_size: int):
        self.model, self.optimizer, self.rho, self.chunk_size = model, optimizer, rho, chunk_size
        self.perturbation = Perturbation(optimizer.params)
        self.released = flat_release(optimizer)

    def __call__(self, draw: Draw) -> Optional[float]:
        self.optimizer.zero_grad(set_to_none=True)
        private_gradient(self.model, self.optimizer, draw(), chunk_size=self.chunk_size)
        if self.released is None:
            self.perturbation.load(_grads(self.optimizer.params))
        self.optimizer.zero_grad(set_to_none=True)
        with self.perturbation.applied(self.rho, self.released):
            loss = private_gradient(self.model, self.optimizer, draw(), chunk_size=self.chunk_size)
        apply_released(self.optimizer)
        return loss


class DpSatStep:
    """DP-SAT (Park et al., ICML 2023): perturb along the previous step's private gradient.

    e = ρ·g̃ₜ₋₁/(‖g̃ₜ₋₁‖+τ) reuses a released value (post-processing: no extra ε,
    one backward pass). g̃ is the clipped, noised, averaged gradient before
    momentum; g̃₋₁ = 0, so step 0 is a DP-SGD step and ρ = 0 is DP-SGD exactly.
    The perturbation is applied once per logical batch, however it is chunked.
    """

    def __init__(self, model: nn.Module, optimizer, *, rho: float, chunk_size: int):
        self.model, self.optimizer, self.rho, self.chunk_size = model, optimizer, rho, chunk_size
        self.perturbation = Perturbation(optimizer.params)
        self.released = flat_release(optimizer)  # zeros before the first release: g̃₋₁ = 0

    def __call__(self, draw: Draw) -> Optional[float]:
        batch = draw()
        self.optimizer.zero_grad(set_to_none=True)
        with self.perturbation.applied(self.rho, self.released):
            loss = private_gradient(self.model, self.optimizer, batch, chunk_size=self.chunk_size)
        apply_released(self.optimizer)
        if self.released is None:
            self.perturbation.load(_grads(self.optimizer.params))
        return loss
