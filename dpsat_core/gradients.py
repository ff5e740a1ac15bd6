"""Gradients of one logical batch, split into physical chunks for memory.

`mean_gradient` is the non-private mean gradient; `private_gradient` is one DP
release: per-example clipping (Opacus's hooks, or the fast engine of `clipping`),
one Gaussian noise draw, scaling by the expected batch size (Opacus
`DPOptimizer.pre_step`, which also fires the accounting hook once).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from torch import nn

from .clipping import FastDPOptimizer

Batch = tuple[torch.Tensor, torch.Tensor]


def _chunks(batch: Batch, size: int) -> list[Batch]:
    x, y = batch
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def mean_gradient(model: nn.Module, batch: Batch, *, chunk_size: int) -> Optional[float]:
    """Accumulate the mean cross-entropy gradient into `.grad`; return the loss (None if empty)."""
    n = len(batch[0])
    if n == 0:
        return None
    total = 0.0
    for x, y in _chunks(batch, chunk_size):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (loss / n).backward()
        total += loss.item()
    return total / n


def private_gradient(model: nn.Module, optimizer: DPOptimizer, batch: Batch, *, chunk_size: int) -> Optional[float]:
    """One noisy release into `.grad`: clip each example, add noise once, divide by the expected batch size.

    Returns the mean loss of the batch (None for an empty Poisson batch, which
    still releases pure noise, as the mechanism requires).
    """
    n = len(batch[0])
    if n == 0:
        for p in optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        optimizer.pre_step()
        return None
    chunks = _chunks(batch, chunk_size)
    total = 0.0
    for i, (x, y) in enumerate(chunks):
        loss = F.cross_entropy(model(x), y)
        if isinstance(optimizer, FastDPOptimizer):
            optimizer.backward(loss)  # the chunk's clipped sum, without per-sample gradients
        else:
            loss.backward()  # Opacus's hooks fill p.grad_sample
        total += loss.item() * len(x)
        if i < len(chunks) - 1:
            # Clip and accumulate this chunk; noise is added once, after the last chunk.
            optimizer.signal_skip_step(do_skip=True)
            optimizer.pre_step()
            optimizer.zero_grad(set_to_none=True)
    optimizer.pre_step()
    return total / n
