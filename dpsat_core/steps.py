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

from .gradients import Batch, mean_gradient, private_gradient

# Guards the division by ‖g‖ when the direction is zero (DP-SAT's first step).
TAU = 1e-12

Draw = Callable[[], Batch]


class Step(Protocol):
    def __call__(self, draw: Draw) -> Optional[float]: ...


class Perturbation:
    """One buffer per parameter that moves the weights to w + s·d and back *exactly*.

    The buffer holds the direction d; `applied(s)` turns it in place into w + s·d
    and swaps storage with the parameters, so restoring is a swap, not a
    subtraction: no rounding residual and no per-step allocation.
    """

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.buffer = [torch.zeros_like(p) for p in params]

    def load(self, tensors: list[torch.Tensor]) -> None:
        for b, t in zip(self.buffer, tensors):
            b.copy_(t)

    def norm(self) -> float:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.buffer))).item()

    def scale_for(self, rho: float) -> float:
        """ρ/(‖d‖+τ): the factor that puts w + s·d at distance ρ from w."""
        return rho / (self.norm() + TAU)

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            p.data, self.buffer[i] = self.buffer[i], p.data

    @contextmanager
    def applied(self, scale: float) -> Iterator[None]:
        torch._foreach_mul_(self.buffer, scale)
        torch._foreach_add_(self.buffer, [p.data for p in self.params])
        self._swap()
        try:
            yield
        finally:
            self._swap()


def _grads(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


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
        scale = self.perturbation.scale_for(self.rho)
        self.optimizer.zero_grad(set_to_none=True)
        with self.perturbation.applied(scale):
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

    def __call__(self, draw: Draw) -> Optional[float]:
        self.optimizer.zero_grad(set_to_none=True)
        private_gradient(self.model, self.optimizer, draw(), chunk_size=self.chunk_size)
        self.perturbation.load(_grads(self.optimizer.params))
        scale = self.perturbation.scale_for(self.rho)
        self.optimizer.zero_grad(set_to_none=True)
        with self.perturbation.applied(scale):
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

    def __call__(self, draw: Draw) -> Optional[float]:
        batch = draw()
        scale = self.perturbation.scale_for(self.rho)
        self.optimizer.zero_grad(set_to_none=True)
        with self.perturbation.applied(scale):
            loss = private_gradient(self.model, self.optimizer, batch, chunk_size=self.chunk_size)
        apply_released(self.optimizer)
        self.perturbation.load(_grads(self.optimizer.params))
        return loss
