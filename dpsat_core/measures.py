"""The computations behind `analysis.ANALYSES`: a stored run rebuilt as a plain module, and each analysis
kind run on it. Imported only when an analysis runs (it needs torch); `analysis` keeps the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .analysis import DEFAULT_SAMPLES, Context
from .config import HESSIAN_BACKENDS
from .data import Dataset, load_run_dataset
from .devices import resolve_device
from .errors import ConfigError, StoreError
from .hessian import adaptive_sharpness, hessian_spectrum
from .landscape import LossEvaluator, iter_surface, line_between, noise_robustness, random_direction
from .landscape import slice_1d as _slice_1d
from .models import build_model, strip_wrapper_prefix
from .results import AdaptiveSharpness, HessianSpectrum, NoiseRobustness, RunRecord, Slice, Surface
from .store import RunStore


@dataclass(frozen=True, kw_only=True)
class RunModel:
    """A stored run rebuilt for analysis: a fresh plain module with its weights, and the evaluation subset."""

    record: RunRecord
    model: nn.Module
    dataset: Dataset
    x: torch.Tensor
    y: torch.Tensor


def load_run_model(store: RunStore, run_id: str, *, n_samples: int = DEFAULT_SAMPLES, device: str = "auto") -> RunModel:
    """Rebuild the run's model from its spec (no Opacus wrapper) and take the fixed evaluation subset of its
    training rows, scaled by the statistics the run stored."""
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ConfigError(f"n_samples must be a whole number ≥ 1, got {n_samples!r}")
    record = store.get(run_id)
    if record.summary is None:
        raise StoreError(f"run {run_id} has no trained model to analyse (status {record.status})")
    target = resolve_device(device)
    model = build_model(record.summary.model, seed=0)
    model.load_state_dict(strip_wrapper_prefix(store.load_weights(run_id)))
    dataset = load_run_dataset(record.config, record.summary.released_scaling)  # the scaling it trained on
    count = min(n_samples, dataset.n_train)
    x = torch.tensor(dataset.x_train[:count], device=target)
    y = torch.tensor(dataset.y_train[:count], device=target)
    return RunModel(record=record, model=model.to(target).eval(), dataset=dataset, x=x, y=y)


def hessian(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> HessianSpectrum:
    if s["backend"] not in HESSIAN_BACKENDS:
        raise ConfigError(f"unknown Hessian backend {s['backend']!r}: choose {' or '.join(HESSIAN_BACKENDS)}")
    rm = load_run_model(store, run_id, n_samples=s["n_samples"], device=ctx.device)
    return hessian_spectrum(
        rm.model,
        rm.x,
        rm.y,
        k=s["k"],
        trace_probes=s["trace_probes"],
        backend=s["backend"],
        seed=s["seed"],
        on_progress=ctx.on_progress,
        should_stop=ctx.should_stop,
    )


def adaptive(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> AdaptiveSharpness:
    rm = load_run_model(store, run_id, n_samples=s["n_samples"], device=ctx.device)
    return adaptive_sharpness(
        rm.model, rm.x, rm.y, seed=s["seed"], on_progress=ctx.on_progress, should_stop=ctx.should_stop
    )


def slice_1d(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> Slice:
    rm = load_run_model(store, run_id, n_samples=s["n_samples"], device=ctx.device)
    evaluator = LossEvaluator(rm.model, rm.x, rm.y)
    return _slice_1d(evaluator, random_direction(evaluator.weights, seed=s["seed"]), steps=s["steps"], span=s["span"])


def surface(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> Surface:
    return list(surfaces(store, run_id, s, ctx))[-1]


def surfaces(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> Iterator[Surface]:
    rm = load_run_model(store, run_id, n_samples=s["n_samples"], device=ctx.device)
    evaluator = LossEvaluator(rm.model, rm.x, rm.y)
    d1 = random_direction(evaluator.weights, seed=s["seed"])
    d2 = random_direction(evaluator.weights, seed=s["seed"] + 1)
    yield from iter_surface(
        evaluator, d1, d2, steps=s["steps"], span=s["span"], on_progress=ctx.on_progress, should_stop=ctx.should_stop
    )


def noise(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> NoiseRobustness:
    rm = load_run_model(store, run_id, n_samples=s["n_samples"], device=ctx.device)
    return noise_robustness(
        LossEvaluator(rm.model, rm.x, rm.y),
        scales=s["scales"],
        draws=s["draws"],
        seed=s["seed"],
        should_stop=ctx.should_stop,
    )


def line(store: RunStore, run_id: str, s: Mapping[str, Any], ctx: Context) -> Slice:
    other = s["other"]
    a = load_run_model(store, run_id, n_samples=s["n_samples"], device=ctx.device)
    b = load_run_model(store, other, n_samples=s["n_samples"], device=ctx.device)
    if a.record.config.dataset != b.record.config.dataset:
        raise StoreError(f"runs {run_id} and {other} were trained on different data sets")
    evaluator = LossEvaluator(a.model, a.x, a.y)
    return line_between(evaluator, {n: p.detach() for n, p in b.model.named_parameters()}, steps=s["steps"])
