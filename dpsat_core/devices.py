"""Pick the torch device: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from .config import DEVICES, valid_device_name
from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for `name`; asking for CUDA on a machine without it is an error."""
    if not valid_device_name(name):
        raise ConfigError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for CUDA but none is available: use 'auto' or 'cpu'")
    return torch.device(name)
