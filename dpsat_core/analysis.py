"""Sharpness analyses of stored runs, cached in the store so a page shows them again without recomputing.

Every run is analysed on the same fixed subset of its training set (the first
`n_samples` of the seeded split) and, for landscapes, along the same seeded
random directions, so runs of one architecture are comparable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import torch
from torch import nn

from .data import Dataset, load_dataset
from .devices import resolve_device
from .errors import StoreError
from .hessian import HessianSpectrum, hessian_spectrum
from .landscape import (
    LossEvaluator,
    NoiseRobustness,
    Slice,
    Surface,
    iter_surface,
    line_between,
    noise_robustness,
    random_direction,
    slice_1d,
)
from .models import ModelSpec, build_model, strip_wrapper_prefix
from .progress import ProgressFn, StopFn, no_progress
from .store import RunRecord, RunStore

DEFAULT_SAMPLES = 1024
T = TypeVar("T")


@dataclass(frozen=True)
class RunModel:
    """A stored run rebuilt for analysis: a fresh plain module with its weights, and the evaluation subset."""

    record: RunRecord
    model: nn.Module
    dataset: Dataset
    x: torch.Tensor
    y: torch.Tensor


def load_run_model(store: RunStore, run_id: str, *, n_samples: int = DEFAULT_SAMPLES, device: str = "auto") -> RunModel:
    """Rebuild the run's model from its spec (no Opacus wrapper) and take the fixed evaluation subset."""
    record = store.get(run_id)
    spec_data = record.summary.get("model")
    if spec_data is None:
        raise StoreError(f"run {run_id} has no trained model to analyse (status {record.status})")
    spec = ModelSpec(spec_data["architecture"], tuple(spec_data["input_shape"]), spec_data["n_classes"])
    target = resolve_device(device)
    model = build_model(spec, seed=0)
    model.load_state_dict(strip_wrapper_prefix(store.load_weights(run_id)))
    config = record.config
    dataset = load_dataset(config.dataset, target=config.target, size=config.dataset_size, split_seed=config.split_seed)
    count = min(n_samples, dataset.n_train)
    x = torch.tensor(dataset.x_train[:count], device=target)
    y = torch.tensor(dataset.y_train[:count], device=target)
    return RunModel(record, model.to(target).eval(), dataset, x, y)


def _key(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _cached(
    store: RunStore,
    run_id: str,
    kind: str,
    key: str,
    recompute: bool,
    load: Callable[[dict], T],
    compute: Callable[[], T],
    cached_only: bool = False,
) -> Optional[T]:
    """The stored result if any, else compute and store it (or None with `cached_only`)."""
    if not recompute:
        stored = store.get_analysis(run_id, kind, key)
        if stored is not None:
            return load(stored)
    if cached_only:
        return None
    result = compute()
    store.save_analysis(run_id, kind, key, result.to_dict())  # type: ignore[attr-defined]
    return result


def run_hessian(
    store: RunStore,
    run_id: str,
    *,
    k: int = 5,
    trace_probes: int = 100,
    n_samples: int = DEFAULT_SAMPLES,
    backend: str = "lanczos",
    seed: int = 0,
    recompute: bool = False,
    device: str = "auto",
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    cached_only: bool = False,
) -> Optional[HessianSpectrum]:
    """Top-k eigenvalues, trace and density of a stored run's training loss (cached; with
    `cached_only`, None unless already computed)."""
    key = _key(k=k, trace_probes=trace_probes, n_samples=n_samples, backend=backend, seed=seed)

    def compute() -> HessianSpectrum:
        rm = load_run_model(store, run_id, n_samples=n_samples, device=device)
        return hessian_spectrum(
            rm.model,
            rm.x,
            rm.y,
            k=k,
            trace_probes=trace_probes,
            backend=backend,
            seed=seed,
            on_progress=on_progress,
            should_stop=should_stop,
        )

    return _cached(store, run_id, "hessian", key, recompute, HessianSpectrum.from_dict, compute, cached_only)


def iter_run_surface(
    store: RunStore,
    run_id: str,
    *,
    steps: int = 21,
    span: float = 1.0,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    recompute: bool = False,
    device: str = "auto",
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    cached_only: bool = False,
) -> Iterator[Surface]:
    """The run's 2D loss surface along directions seeded by `seed` and `seed + 1`: coarse, then full (cached)."""
    key = _key(steps=steps, span=span, n_samples=n_samples, seed=seed)
    stored = None if recompute else store.get_analysis(run_id, "surface", key)
    if stored is not None:
        yield Surface.from_dict(stored)
        return
    if cached_only:
        return
    rm = load_run_model(store, run_id, n_samples=n_samples, device=device)
    evaluator = LossEvaluator(rm.model, rm.x, rm.y)
    d1 = random_direction(evaluator.weights, seed=seed)
    d2 = random_direction(evaluator.weights, seed=seed + 1)
    for surface in iter_surface(
        evaluator, d1, d2, steps=steps, span=span, on_progress=on_progress, should_stop=should_stop
    ):
        if surface.complete:
            store.save_analysis(run_id, "surface", key, surface.to_dict())
        yield surface


def run_surface(store: RunStore, run_id: str, **settings: Any) -> Optional[Surface]:
    """The complete 2D surface (see `iter_run_surface`; None with `cached_only=True` when not stored)."""
    surfaces = list(iter_run_surface(store, run_id, **settings))
    return surfaces[-1] if surfaces else None


def run_slice(
    store: RunStore,
    run_id: str,
    *,
    steps: int = 41,
    span: float = 1.0,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    recompute: bool = False,
    device: str = "auto",
    cached_only: bool = False,
) -> Optional[Slice]:
    """Loss and accuracy along the seeded filter-normalised direction (the same for every run of an architecture)."""
    key = _key(steps=steps, span=span, n_samples=n_samples, seed=seed)

    def compute() -> Slice:
        rm = load_run_model(store, run_id, n_samples=n_samples, device=device)
        evaluator = LossEvaluator(rm.model, rm.x, rm.y)
        return slice_1d(evaluator, random_direction(evaluator.weights, seed=seed), steps=steps, span=span)

    return _cached(store, run_id, "slice", key, recompute, Slice.from_dict, compute, cached_only)


def run_line(
    store: RunStore,
    run_a: str,
    run_b: str,
    *,
    steps: int = 31,
    n_samples: int = DEFAULT_SAMPLES,
    recompute: bool = False,
    device: str = "auto",
    cached_only: bool = False,
) -> Optional[Slice]:
    """Loss along the straight line from run A's weights (t=0) to run B's (t=1), on A's data subset."""
    key = _key(other=run_b, steps=steps, n_samples=n_samples)

    def compute() -> Slice:
        a = load_run_model(store, run_a, n_samples=n_samples, device=device)
        b = load_run_model(store, run_b, n_samples=n_samples, device=device)
        if a.record.config.dataset != b.record.config.dataset:
            raise StoreError(f"runs {run_a} and {run_b} were trained on different data sets")
        evaluator = LossEvaluator(a.model, a.x, a.y)
        return line_between(evaluator, {n: p.detach() for n, p in b.model.named_parameters()}, steps=steps)

    return _cached(store, run_a, "line", key, recompute, Slice.from_dict, compute, cached_only)


def run_noise_robustness(
    store: RunStore,
    run_id: str,
    *,
    scales: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2),
    draws: int = 8,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    recompute: bool = False,
    device: str = "auto",
    should_stop: Optional[StopFn] = None,
    cached_only: bool = False,
) -> Optional[NoiseRobustness]:
    """Mean ± std loss increase under relative Gaussian weight noise, per scale (cached)."""
    key = _key(scales=list(scales), draws=draws, n_samples=n_samples, seed=seed)

    def compute() -> NoiseRobustness:
        rm = load_run_model(store, run_id, n_samples=n_samples, device=device)
        return noise_robustness(
            LossEvaluator(rm.model, rm.x, rm.y), scales=scales, draws=draws, seed=seed, should_stop=should_stop
        )

    return _cached(store, run_id, "noise", key, recompute, NoiseRobustness.from_dict, compute, cached_only)
