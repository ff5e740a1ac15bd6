"""Parameter-shaped tensors kept in one flat buffer, so a whole-model vector operation is one torch call.

Per-step work over every parameter (a norm, w + s·d, a copy) costs one dispatch on
a flat buffer instead of one per parameter; on small models that dispatch, not the
arithmetic, is the cost. Two buffers made by `flat_views` for the same parameters
share one layout, so they can be combined elementwise.
"""

from __future__ import annotations

from typing import Sequence

import torch

# Each view starts on a multiple of this many elements (64 bytes for float32, torch's own allocation
# alignment), so kernels see the alignment they would on a tensor of its own. The gaps stay zero.
ALIGN = 16


def flat_views(params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A zeroed flat buffer and one contiguous view per tensor of `params` (same shapes), in order."""
    if not params or len({(p.dtype, p.device) for p in params}) > 1:
        raise ValueError("flat_views needs at least one tensor, all of one dtype and device")
    starts, end = [], 0
    for p in params:
        starts.append(end)
        end += -(-p.numel() // ALIGN) * ALIGN
    flat = torch.zeros(end, dtype=params[0].dtype, device=params[0].device)
    return flat, [flat[s : s + p.numel()].view(p.shape) for s, p in zip(starts, params)]
