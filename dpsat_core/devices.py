"""Pick the torch device: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for `name`; asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} asked for CUDA but none is available: use 'auto' or 'cpu'")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
