"""Sharpness analyses of stored runs, cached in the store so a page shows them again without recomputing.

`ANALYSES` is the one registry of analysis kinds (hessian, adaptive, slice,
surface, noise, line) with their default settings; the CLI, the pages and the report
use it. Every run is analysed on the same fixed subset of its training set (the
first `n_samples` of the seeded split) and, for landscapes, along the same
seeded random directions, so runs of one architecture are comparable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from .compare import CellStats, group_runs
from .errors import ConfigError
from .progress import ProgressFn, StopFn, no_progress
from .results import (
    DEFAULT_SAMPLES,
    AdaptiveSharpness,
    HessianSpectrum,
    JsonRecord,
    NoiseRobustness,
    RunRecord,
    Slice,
    Surface,
)
from .store import RunStore


@dataclass(frozen=True)
class Context:
    """How an analysis runs (not part of its cache key): device, progress and cancel."""

    device: str
    on_progress: ProgressFn
    should_stop: Optional[StopFn]


Compute = Callable[[RunStore, str, Mapping[str, Any], Context], JsonRecord]


@dataclass(frozen=True, kw_only=True)
class AnalysisKind:
    """One kind of analysis: its result type, its settings with their defaults (the cache key), and how to compute it.

    A default of None marks a required setting (the other run of `line`).
    """

    name: str
    label: str
    result: type[JsonRecord]
    defaults: Mapping[str, Any]
    compute: Compute
    help: str

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `given`; unknown names, missing required values and non-positive sizes are errors."""
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {sorted(unknown)} for the {self.name} analysis: "
                f"known ones are {sorted(self.defaults)}"
            )
        merged = {**self.defaults, **{k: v for k, v in given.items() if v is not None}}
        for name, value in merged.items():
            default = self.defaults[name]
            if value is None:
                raise ConfigError(f"the {self.name} analysis needs {name!r}")
            positive = isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0
            if positive and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"{name} must be > 0 for the {self.name} analysis, got {value!r}")
        return merged

    def key(self, settings: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:16]


def _lazy(name: str) -> Compute:
    """`measures.<name>`, imported when an analysis runs: listing, caching and reading analyses need no torch."""

    def compute(store: RunStore, run_id: str, settings: Mapping[str, Any], ctx: Context) -> JsonRecord:
        from . import measures

        return getattr(measures, name)(store, run_id, settings, ctx)

    return compute


ANALYSES: dict[str, AnalysisKind] = {
    kind.name: kind
    for kind in (
        AnalysisKind(
            name="hessian",
            label="Hessian spectrum",
            result=HessianSpectrum,
            defaults={"k": 5, "trace_probes": 100, "n_samples": DEFAULT_SAMPLES, "backend": "lanczos", "seed": 0},
            compute=_lazy("hessian"),
            help="top-k eigenvalues (Lanczos), trace (Hutchinson) and density (SLQ) of the training loss",
        ),
        AnalysisKind(
            name="adaptive",
            label="Adaptive sharpness (scale-invariant λ_max)",
            result=AdaptiveSharpness,
            defaults={"n_samples": DEFAULT_SAMPLES, "seed": 0},
            compute=_lazy("adaptive"),
            help="top eigenvalue of diag(|w|)·H·diag(|w|): λ_max in units of each weight's size (Kwon et al. 2021)",
        ),
        AnalysisKind(
            name="slice",
            label="1D loss slice",
            result=Slice,
            defaults={"steps": 41, "span": 1.0, "n_samples": DEFAULT_SAMPLES, "seed": 0},
            compute=_lazy("slice_1d"),
            help="loss and accuracy along one seeded filter-normalised direction",
        ),
        AnalysisKind(
            name="surface",
            label="2D loss surface",
            result=Surface,
            defaults={"steps": 21, "span": 1.0, "n_samples": DEFAULT_SAMPLES, "seed": 0},
            compute=_lazy("surface"),
            help="loss on a grid spanned by two seeded filter-normalised directions",
        ),
        AnalysisKind(
            name="noise",
            label="Noise robustness",
            result=NoiseRobustness,
            defaults={"scales": (0.01, 0.02, 0.05, 0.1, 0.2), "draws": 8, "n_samples": DEFAULT_SAMPLES, "seed": 0},
            compute=_lazy("noise"),
            help="mean ± std loss increase under relative Gaussian weight noise",
        ),
        AnalysisKind(
            name="line",
            label="Line between two runs",
            result=Slice,
            defaults={"other": None, "steps": 31, "n_samples": DEFAULT_SAMPLES},
            compute=_lazy("line"),
            help="loss on the straight line from this run's weights (t=0) to another run's (t=1)",
        ),
    )
}


def analysis_kind(name: str) -> AnalysisKind:
    try:
        return ANALYSES[name]
    except KeyError:
        raise ConfigError(f"unknown analysis {name!r}: choose one of {', '.join(ANALYSES)}") from None


def analyze(
    store: RunStore,
    run_id: str,
    kind: str,
    *,
    recompute: bool = False,
    cached_only: bool = False,
    device: str = "auto",
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    **settings: Any,
) -> Optional[JsonRecord]:
    """The stored result of analysis `kind` with these settings, else compute and store it
    (with `cached_only`, None unless already stored)."""
    spec = analysis_kind(kind)
    resolved = spec.settings(settings)
    key = spec.key(resolved)
    if not recompute:
        stored = store.get_analysis(run_id, kind, key)
        if stored is not None:
            return spec.result.from_dict(stored)
    if cached_only:
        return None
    result = spec.compute(store, run_id, resolved, Context(device, on_progress, should_stop))
    store.save_analysis(run_id, kind, key, result.to_dict())
    return result


def cached_analyses(store: RunStore, run_ids: Iterable[str], kind: str, **settings: Any) -> dict[str, Any]:
    """Stored results of one analysis for many runs, in one query: {run_id: result} for those that have one."""
    spec = analysis_kind(kind)
    stored = store.get_analyses(run_ids, kind, spec.key(spec.settings(settings)))
    return {run_id: spec.result.from_dict(data) for run_id, data in stored.items()}


def run_hessian(store: RunStore, run_id: str, **options: Any) -> Optional[HessianSpectrum]:
    """Top-k eigenvalues, trace and density of a stored run's training loss (see `analyze`; cached)."""
    return analyze(store, run_id, "hessian", **options)  # type: ignore[return-value]


def run_adaptive_sharpness(store: RunStore, run_id: str, **options: Any) -> Optional[AdaptiveSharpness]:
    """Adaptive (scale-invariant) λ_max of a stored run's training loss (see `analyze`; cached)."""
    return analyze(store, run_id, "adaptive", **options)  # type: ignore[return-value]


def run_slice(store: RunStore, run_id: str, **options: Any) -> Optional[Slice]:
    """Loss and accuracy along the seeded filter-normalised direction (the same for every run of an architecture)."""
    return analyze(store, run_id, "slice", **options)  # type: ignore[return-value]


def run_surface(store: RunStore, run_id: str, **options: Any) -> Optional[Surface]:
    """The complete 2D surface (see `iter_run_surface` for the coarse grid first)."""
    return analyze(store, run_id, "surface", **options)  # type: ignore[return-value]


def run_noise_robustness(store: RunStore, run_id: str, **options: Any) -> Optional[NoiseRobustness]:
    """Mean ± std loss increase under relative Gaussian weight noise, per scale (cached)."""
    return analyze(store, run_id, "noise", **options)  # type: ignore[return-value]


def run_line(store: RunStore, run_a: str, run_b: str, **options: Any) -> Optional[Slice]:
    """Loss along the straight line from run A's weights (t=0) to run B's (t=1), on A's data subset."""
    return analyze(store, run_a, "line", other=run_b, **options)  # type: ignore[return-value]


def iter_run_surface(
    store: RunStore,
    run_id: str,
    *,
    recompute: bool = False,
    device: str = "auto",
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    **settings: Any,
) -> Iterator[Surface]:
    """The run's 2D loss surface: the stored one, or a coarse grid first and then the full one (stored)."""
    stored = None if recompute else analyze(store, run_id, "surface", cached_only=True, **settings)
    if stored is not None:
        yield stored
        return
    spec = ANALYSES["surface"]
    resolved = spec.settings(settings)
    key = spec.key(resolved)
    from .measures import surfaces

    for surface in surfaces(store, run_id, resolved, Context(device, on_progress, should_stop)):
        if surface.complete:
            store.save_analysis(run_id, "surface", key, surface.to_dict())
        yield surface


def analysed_cells(store: RunStore, runs: Sequence[RunRecord], *, include_diverged: bool = False) -> list[CellStats]:
    """`compare.group_runs` of `runs` with every stored sharpness analysis they have (Hessian, adaptive)."""
    ids = [r.run_id for r in runs]
    hessian, adaptive = cached_analyses(store, ids, "hessian"), cached_analyses(store, ids, "adaptive")
    return group_runs(runs, hessian, adaptive, include_diverged=include_diverged)
