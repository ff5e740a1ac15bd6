"""The method registry: what each training method is, what it releases, and which method it is compared with.

Adding a method means one step class (in `steps`, or anywhere) and one
`register_method` call or entry below; the verdict, the report, the pages, the
figures and the CLI loop over `METHODS`. This module imports neither torch nor
Opacus: the step class is resolved only when a run starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from .errors import ConfigError

StepFactory = Callable[..., Any]  # (model, optimizer, *, rho, chunk_size) -> a step callable


@dataclass(frozen=True, kw_only=True)
class MethodInfo:
    """What a method is and what it costs per step (noisy releases, backward passes).

    `step` is the step class, or the name of one in `dpsat_core.steps` (resolved
    lazily). `baseline` names the method this one is judged against (None for a
    baseline itself).
    """

    name: str
    label: str
    color: str
    private: bool
    uses_rho: bool
    releases_per_step: int
    backward_passes_per_step: int
    extra_epsilon: str
    summary: str
    step: Union[str, StepFactory]
    baseline: Optional[str] = None
    marker: str = "circle"  # plotly marker and dash: methods whose lines coincide stay visible
    dash: str = "solid"

    def make_step(self, model: Any, optimizer: Any, *, rho: float, chunk_size: int) -> Any:
        """Build this method's step for a live model and optimizer."""
        factory = self.step
        if isinstance(factory, str):
            factory = getattr(importlib.import_module(".steps", __package__), factory)
        return factory(model, optimizer, rho=rho, chunk_size=chunk_size)


METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add a method to the registry (its baseline must be registered and match its privacy)."""
    if info.name in METHODS:
        raise ConfigError(f"method {info.name!r} is already registered")
    if (info.releases_per_step >= 1) != info.private:
        raise ConfigError(
            f"method {info.name!r}: a private method makes ≥ 1 noisy release per step and a non-private one none, "
            f"got private={info.private}, releases_per_step={info.releases_per_step}"
        )
    if info.baseline is not None:
        base = METHODS.get(info.baseline)
        if base is None or base.private != info.private:
            raise ConfigError(
                f"method {info.name!r}: baseline {info.baseline!r} must be a registered "
                f"{'private' if info.private else 'non-private'} method"
            )
    METHODS[info.name] = info
    return info


for _info in (
    MethodInfo(
        name="sgd",
        label="SGD (non-private)",
        color="#7f7f7f",
        private=False,
        uses_rho=False,
        releases_per_step=0,
        backward_passes_per_step=1,
        extra_epsilon="not private",
        summary="Non-private reference: the accuracy ceiling.",
        step="SgdStep",
        dash="dash",
    ),
    MethodInfo(
        name="sam",
        label="SAM (non-private)",
        color="#bcbd22",
        private=False,
        uses_rho=True,
        releases_per_step=0,
        backward_passes_per_step=2,
        extra_epsilon="not private",
        summary="Non-private sharpness-aware reference.",
        step="SamStep",
        baseline="sgd",
        marker="triangle-up",
        dash="dashdot",
    ),
    MethodInfo(
        name="dpsgd",
        label="DP-SGD",
        color="#1f77b4",
        private=True,
        uses_rho=False,
        releases_per_step=1,
        backward_passes_per_step=1,
        extra_epsilon="baseline",
        summary="Clip each example's gradient to C, add N(0, σ²C²) to the sum.",
        step="DpSgdStep",
    ),
    MethodInfo(
        name="dpsam",
        label="DP-SAM",
        color="#ff7f0e",
        private=True,
        uses_rho=True,
        releases_per_step=2,
        backward_passes_per_step=2,
        extra_epsilon="yes: 2 releases per step",
        summary="SAM with both gradients privatized: twice the releases and the compute.",
        step="DpSamStep",
        baseline="dpsgd",
        marker="square",
        dash="dash",
    ),
    MethodInfo(
        name="dpsat",
        label="DP-SAT",
        color="#2ca02c",
        private=True,
        uses_rho=True,
        releases_per_step=1,
        backward_passes_per_step=1,
        extra_epsilon="none (post-processing)",
        summary="Perturb along the previous private gradient: SAM-like at DP-SGD cost.",
        step="DpSatStep",
        baseline="dpsgd",
        marker="diamond-open",
        dash="dot",
    ),
):
    register_method(_info)


def method_info(name: str) -> MethodInfo:
    """Look a method up by name, with the list of choices in the error."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None


def compared_methods(*, private: Optional[bool] = None) -> list[MethodInfo]:
    """Methods that have a baseline (what verdicts and reports compare), in registry order."""
    return [m for m in METHODS.values() if m.baseline is not None and (private is None or m.private == private)]


def rho_methods() -> str:
    """'SAM, DP-SAM, DP-SAT': the methods ρ applies to, for help texts and labels."""
    return ", ".join(m.label.split(" (")[0] for m in METHODS.values() if m.uses_rho)


def method_table() -> list[dict[str, object]]:
    """The methods side by side (extra ε, releases and backward passes per step), for pages and reports."""
    return [
        {
            "method": m.label,
            "private": m.private,
            "extra ε": m.extra_epsilon,
            "noisy releases / step": m.releases_per_step,
            "backward passes / step": m.backward_passes_per_step,
            "compared with": METHODS[m.baseline].label if m.baseline else "—",
            "what it does": m.summary,
        }
        for m in METHODS.values()
    ]
