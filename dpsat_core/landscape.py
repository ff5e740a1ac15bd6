"""Loss landscapes: filter-normalised random directions (Li et al. 2018), 1D slices, 2D surfaces,
the line between two runs, and noise robustness.

A point is weights + Σ cᵢ·dᵢ evaluated with `functional_call` on those tensors:
the model is never copied or modified per point. On CUDA, points are evaluated
in batches with `vmap` (as many points a call as keep points × examples near
`ROWS_PER_BATCH`: fewer launches, bounded memory); on CPU a loop is as fast.
"""

from __future__ import annotations

import math
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .errors import ConfigError
from .models import plain_copy
from .progress import Progress, ProgressFn, StopFn, check_stop, no_progress
from .results import NoiseRobustness, Slice, Surface

Params = dict[str, torch.Tensor]
POINTS_PER_BATCH = 16  # the fewest points a vmap call takes, and how many a loop evaluates between progress reports
ROWS_PER_BATCH = 1 << 16  # points × examples one vmap call aims at: 64 points of 1,024 examples
MAX_POINTS_PER_BATCH = 128


def _finite(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def random_direction(weights: Params, *, seed: int, ignore_bias_norm: bool = True) -> Params:
    """A Gaussian direction with each filter rescaled to the norm of the same filter of `weights`.

    The draw depends only on `seed` and the shapes, so every run of one
    architecture is sliced along the same random directions. 1-D tensors
    (biases, normalisation scales) are zeroed unless `ignore_bias_norm=False`,
    as in Li et al.'s `--xignore biasbn`.
    """
    generator = torch.Generator().manual_seed(seed)
    direction = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        if w.dim() <= 1:
            direction[name] = torch.zeros_like(w) if ignore_bias_norm else d * (w.norm() / (d.norm() + 1e-12))
        else:
            filter_norms = w.reshape(w.shape[0], -1).norm(dim=1) / (d.reshape(d.shape[0], -1).norm(dim=1) + 1e-12)
            direction[name] = d * filter_norms.reshape(-1, *([1] * (w.dim() - 1)))
    return direction


class LossEvaluator:
    """Mean loss and accuracy of a model's architecture at any weights, on a fixed subset (x, y)."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_points: Optional[bool] = None,
        points_per_batch: Optional[int] = None,
    ):
        self.model = plain_copy(model)
        self.weights: Params = {n: p.detach() for n, p in self.model.named_parameters()}
        self.x, self.y = x, y
        self.batch_points = x.device.type == "cuda" if batch_points is None else batch_points
        fitting = min(MAX_POINTS_PER_BATCH, max(POINTS_PER_BATCH, ROWS_PER_BATCH // max(1, len(x))))
        self.points_per_batch = points_per_batch or (fitting if self.batch_points else POINTS_PER_BATCH)

    def _loss_and_correct(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(self.model, params, (self.x,))
        return F.cross_entropy(logits, self.y), (logits.argmax(1) == self.y).float().mean()

    @torch.inference_mode()
    def at(self, params: Params) -> tuple[float, float]:
        loss, accuracy = self._loss_and_correct(params)
        return loss.item(), accuracy.item()

    @torch.inference_mode()
    def along(
        self, coefficients: Sequence[Sequence[float]], directions: Sequence[Params], origin: Optional[Params] = None
    ) -> tuple[list[float], list[float]]:
        """Loss and accuracy at origin + Σᵢ cᵢ·dᵢ for each row of coefficients."""
        origin = self.weights if origin is None else origin
        if not self.batch_points:
            out = [
                self.at({n: w + sum(c * d[n] for c, d in zip(row, directions)) for n, w in origin.items()})
                for row in coefficients
            ]
            return [o[0] for o in out], [o[1] for o in out]
        losses, accuracies = [], []
        for start in range(0, len(coefficients), self.points_per_batch):
            rows = torch.tensor(
                coefficients[start : start + self.points_per_batch], dtype=self.x.dtype, device=self.x.device
            )
            stacked = {}
            for n, w in origin.items():
                shift = sum(rows[:, i].reshape(-1, *([1] * w.dim())) * d[n] for i, d in enumerate(directions))
                stacked[n] = w + shift
            loss, accuracy = vmap(self._loss_and_correct)(stacked)
            losses += loss.tolist()
            accuracies += accuracy.tolist()
        return losses, accuracies


def _axis(steps: int, span: float) -> list[float]:
    if steps < 3 or steps % 2 == 0:
        raise ConfigError(f"steps must be odd and ≥ 3 (so the grid contains the trained weights), got {steps}")
    if not (math.isfinite(span) and span > 0):
        raise ConfigError(f"span must be > 0, got {span}")
    return [round(a, 12) for a in np.linspace(-span, span, steps).tolist()]  # -0.65, not -0.6499999999999999


def slice_1d(evaluator: LossEvaluator, direction: Params, *, steps: int = 41, span: float = 1.0) -> Slice:
    """Loss and accuracy at weights + α·d for α in [−span, span]."""
    start = time.perf_counter()
    axis = _axis(steps, span)
    return _along_line(evaluator, direction, axis, start)


def _along_line(evaluator: LossEvaluator, direction: Params, axis: list[float], start: float) -> Slice:
    """The slice at weights + a·direction for each a in `axis` (`start`: when the work began)."""
    losses, accuracies = evaluator.along([[a] for a in axis], [direction])
    return Slice(
        axis=axis,
        loss=[_finite(v) for v in losses],
        accuracy=accuracies,
        center_loss=evaluator.at(evaluator.weights)[0],
        seconds=time.perf_counter() - start,
    )


def line_between(evaluator: LossEvaluator, other: Params, *, steps: int = 31, margin: float = 0.25) -> Slice:
    """Loss and accuracy at (1−t)·w_a + t·w_b, t in [−margin, 1+margin] (0 and 1 always included);
    w_a are the evaluator's weights."""
    if set(other) != set(evaluator.weights):
        raise ConfigError("the two runs have different architectures: a line between them is undefined")
    start = time.perf_counter()
    axis = np.union1d(np.linspace(-margin, 1 + margin, steps), [0.0, 1.0]).tolist()
    direction = {n: other[n].to(w.device) - w for n, w in evaluator.weights.items()}
    return _along_line(evaluator, direction, axis, start)


def _coarse_indices(steps: int, stride: int) -> list[int]:
    return sorted(set(range(0, steps, stride)) | {steps - 1, steps // 2})


def iter_surface(
    evaluator: LossEvaluator,
    d1: Params,
    d2: Params,
    *,
    steps: int = 21,
    span: float = 1.0,
    coarse_stride: int = 4,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> Iterator[Surface]:
    """Yield the 2D surface twice: first a coarse grid (every `coarse_stride`-th point), then the full grid."""
    start = time.perf_counter()
    axis = _axis(steps, span)
    grid: list[list[Optional[float]]] = [[None] * steps for _ in range(steps)]
    coarse = _coarse_indices(steps, coarse_stride)
    passes = [
        [(i, j) for j in coarse for i in coarse],
        [(i, j) for j in range(steps) for i in range(steps) if not (i in coarse and j in coarse)],
    ]
    center = evaluator.at(evaluator.weights)[0]
    total, done = steps * steps, 0
    for number, points in enumerate(passes):
        per_call = 3 * evaluator.points_per_batch  # points between progress reports and stop checks
        for chunk_start in range(0, len(points), per_call):
            check_stop(should_stop)
            chunk = points[chunk_start : chunk_start + per_call]
            losses, _ = evaluator.along([[axis[i], axis[j]] for i, j in chunk], [d1, d2])
            for (i, j), value in zip(chunk, losses):
                grid[j][i] = _finite(value)
            done += len(chunk)
            on_progress(Progress("landscape", done, total, "coarse grid" if number == 0 else "full grid"))
        yield Surface(
            axis=axis,
            loss=[row[:] for row in grid],
            center_loss=center,
            complete=number == 1,
            seconds=time.perf_counter() - start,
        )


def noise_robustness(
    evaluator: LossEvaluator,
    *,
    scales: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2),
    draws: int = 8,
    seed: int = 0,
    should_stop: Optional[StopFn] = None,
) -> NoiseRobustness:
    """Loss increase under w + s·‖w‖·z/√numel per tensor (z standard normal): the flatness DP noise sees."""
    if draws < 2 or any(not (math.isfinite(s) and s >= 0) for s in scales):
        raise ConfigError("noise robustness needs ≥ 2 draws and scales ≥ 0")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    base = evaluator.at(evaluator.weights)[0]
    means, stds = [], []
    for scale in scales:
        check_stop(should_stop)
        increases = []
        for _ in range(draws):
            noisy = {
                n: w
                + scale
                * w.norm()
                / math.sqrt(w.numel())
                * torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                for n, w in evaluator.weights.items()
            }
            increases.append(evaluator.at(noisy)[0] - base)
        means.append(float(np.mean(increases)))
        stds.append(float(np.std(increases, ddof=1)))
    return NoiseRobustness(
        scales=list(scales),
        mean_increase=means,
        std_increase=stds,
        draws=draws,
        base_loss=base,
        seconds=time.perf_counter() - start,
    )
