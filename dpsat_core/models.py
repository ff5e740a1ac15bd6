"""Small classifiers valid for Opacus: a tanh CNN with GroupNorm for images, a tanh MLP for tables.

Tanh rather than ReLU and GroupNorm rather than BatchNorm follow the DP
literature (Papernot et al. 2021; Tramèr & Boneh 2021): bounded activations
keep clipped gradients informative, and BatchNorm mixes examples, which per-
example clipping forbids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus.validators import ModuleValidator
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """What to build: the architecture name and the data's shape; rebuilding from it is exact."""

    architecture: str  # "cnn" or "mlp"
    input_shape: tuple[int, ...]
    n_classes: int


class TanhCNN(nn.Module):
    """Conv3×3 → GroupNorm → tanh → 2×2 max-pool blocks (16, 32, 64 channels), then a tanh MLP head.

    Blocks are added while the side is ≥ 8 (at most three): 8×8 digits get one
    pooling block less than 28×28 MNIST or 32×32 CIFAR.
    """

    def __init__(self, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        channels, side = input_shape[0], input_shape[1]
        layers: list[nn.Module] = []
        for width in (16, 32, 64):
            if layers and side < 8:
                break
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(min(4, width), width), nn.Tanh(),
                       nn.MaxPool2d(2)]
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
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES = {"cnn": TanhCNN, "mlp": TanhMLP}


def model_spec(choice: str, *, kind: str, input_shape: tuple[int, ...], n_classes: int) -> ModelSpec:
    """Resolve `auto` (CNN for images, MLP for tables) and check the choice fits the data."""
    architecture = ("cnn" if kind == "image" else "mlp") if choice == "auto" else choice
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown model {choice!r}: choose auto, cnn or mlp")
    if architecture == "cnn" and len(input_shape) != 3:
        raise ConfigError(f"model='cnn' needs image data (C, H, W); this data has shape {input_shape}: use 'mlp'")
    return ModelSpec(architecture, tuple(input_shape), n_classes)


def build_model(spec: ModelSpec, *, seed: int) -> nn.Module:
    """A freshly initialised model (seeded), checked clean by Opacus's ModuleValidator."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ARCHITECTURES[spec.architecture](spec.input_shape, spec.n_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:  # a programming error, not a user one
        raise RuntimeError(f"{spec.architecture} is not valid for Opacus: {errors}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
