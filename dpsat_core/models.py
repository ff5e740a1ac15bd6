"""Small classifiers valid for Opacus: a tanh CNN with GroupNorm for images, a tanh MLP for tables.

Tanh rather than ReLU and GroupNorm rather than BatchNorm follow the DP
literature (Papernot et al. 2021; Tramèr & Boneh 2021): bounded activations
keep clipped gradients informative, and BatchNorm mixes examples, which per-
example clipping forbids.
"""

from __future__ import annotations

from copy import deepcopy as copy_module

import torch
from torch import nn

from .results import ModelSpec


class TanhCNN(nn.Module):
    """Conv3×3 → GroupNorm → tanh → 2×2 max-pool blocks (16, 32, 64 channels), then a tanh MLP head.

    Blocks are added while the side is ≥ 8 (at most three): 8×8 digits get one
    pooling block less than 28×28 MNIST or 32×32 CIFAR.
    """

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        channels, side = input_shape[0], input_shape[1]
        layers: list[nn.Module] = []
        for width in widths:
            if layers and side < 8:
                break
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(min(4, width), width),
                nn.Tanh(),
                nn.MaxPool2d(2),
            ]
            channels, side = width, side // 2
        self.features = nn.Sequential(*layers)
        flat = channels * side * side
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.Tanh(), nn.Linear(64, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TanhMLP(nn.Module):
    """Two tanh hidden layers; width 2·d rounded to 16, between 32 and 256."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        width = int(min(256, max(32, round(2 * d / 16) * 16)))
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES = {"cnn": TanhCNN, "mlp": TanhMLP}  # keys: config.ARCHITECTURE_NAMES


class PlainGroupNorm(nn.GroupNorm):
    """GroupNorm from elementary ops: same parameters and output, but `torch.func.linearize`
    can trace it (torch 2.13's fused group_norm breaks linearize)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.reshape(x.shape[0], self.num_groups, -1)
        mean = groups.mean(-1, keepdim=True)
        var = groups.var(-1, unbiased=False, keepdim=True)
        normed = ((groups - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return normed * self.weight.reshape(shape) + self.bias.reshape(shape) if self.affine else normed


def plain_copy(model: nn.Module, *, elementary_group_norm: bool = False) -> nn.Module:
    """A hook-free deep copy in eval mode for analysis; the caller's model is never touched.

    Opacus wrappers are stripped (`GradSampleModule._module`) and forward/backward
    hooks removed, so PyHessian and `torch.func` see a plain module. With
    `elementary_group_norm`, GroupNorm layers become `PlainGroupNorm` (needed by
    `linearize`; the fused layer is faster everywhere else).
    """
    copy = copy_module(getattr(model, "_module", model)).eval()
    for module in copy.modules():
        for hooks in (
            module._forward_hooks,
            module._forward_pre_hooks,
            module._backward_hooks,
            module._backward_pre_hooks,
        ):
            hooks.clear()
        if elementary_group_norm and type(module) is nn.GroupNorm:
            module.__class__ = PlainGroupNorm
    for p in copy.parameters():
        p.requires_grad_(True)
    return copy


def strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove Opacus's `_module.` prefix (from a wrapped model's state_dict), if present."""
    return {k.removeprefix("_module."): v for k, v in state_dict.items()}


def build_model(spec: ModelSpec, *, seed: int) -> nn.Module:
    """A freshly initialised model (seeded), checked clean by Opacus's ModuleValidator."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ARCHITECTURES[spec.architecture](spec.input_shape, spec.n_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    from opacus.validators import ModuleValidator  # Opacus costs seconds to import: only when building

    errors = ModuleValidator.validate(model, strict=False)
    if errors:  # a programming error, not a user one
        raise RuntimeError(f"{spec.architecture} is not valid for Opacus: {errors}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
