"""Pick the torch device: `auto` means CUDA when present, else CPU."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DEVICES, valid_device_name
from .errors import ConfigError
from .results import counted

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for `name`; asking for CUDA on a machine without it is an error."""
    import torch

    return torch.device(device_name(name))


def device_name(name: str = "auto") -> str:
    """The device `name` resolves to here ('auto': 'cuda' when present, else 'cpu'); asking for CUDA on a machine
    without it is an error. Imports torch only where CUDA's presence decides (`auto` or a CUDA name)."""
    if not valid_device_name(name):
        raise ConfigError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for CUDA but none is available: use 'auto' or 'cpu'")
    return name


def check_device(name: str) -> None:
    """Refuse a device this machine cannot use (an unknown name, CUDA absent) without resolving `auto`, which every
    machine can use: torch is imported only for a CUDA name."""
    if name != "auto":
        device_name(name)


def describe_device(device: torch.device) -> str:
    """The device with its hardware name and, on CPU, torch's thread count: what a measured cost depends on."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return cpu_label(torch.get_num_threads())


def cpu_label(threads: int) -> str:
    """`describe_device` of the CPU running `threads` torch threads."""
    return f"cpu ({_cpu_name()}, {counted(threads, 'thread')})"


def cuda_impossible() -> bool:
    """True when the installed torch is a CPU-only build (no CUDA or ROCm library in its files), read without
    importing torch: there `auto` can only mean the CPU."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    lib = Path(spec.origin).parent / "lib"
    return lib.is_dir() and not any(lib.glob("libtorch_cuda*")) and not any(lib.glob("libtorch_hip*"))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
