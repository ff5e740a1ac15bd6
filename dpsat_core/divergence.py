"""When a finished run counts as diverged: its training loss ended far above where it started.

The rule: the last epoch's training loss is more than `DIVERGENCE_FACTOR` (10) times the training loss
before the first step, on the same training rows. A freshly initialised classifier starts near ln(classes),
the loss of a uniform guess; a run that learns anything ends below its start, and DP noise even at a small ε
keeps a run near its start, not ten times above it. Ten times the start means the steps threw the weights
far off (an lr far too large for the clipping norm): the accuracy left is chance, and the run says nothing
about its method. Only the final epoch counts, since the final model is what is compared: a spike that
recovers leaves a usable model. Non-finite losses already fail a run while it trains (`training.py`); this
catches the finite blow-ups. Runs stored before the start loss was recorded are judged against ln(classes).
"""

from __future__ import annotations

import math
from typing import Optional

DIVERGENCE_FACTOR = 10.0


def start_loss(initial_loss: Optional[float], n_classes: int) -> float:
    """The loss a run is judged against: its measured loss before training, else ln(classes)."""
    return initial_loss if initial_loss is not None else math.log(max(2, n_classes))


def diverged(*, initial_loss: Optional[float], final_loss: Optional[float], n_classes: int) -> bool:
    """True when the final training loss is over `DIVERGENCE_FACTOR` × the start loss."""
    return final_loss is not None and final_loss > DIVERGENCE_FACTOR * start_loss(initial_loss, n_classes)


def divergence_reason(*, initial_loss: Optional[float], final_loss: Optional[float], n_classes: int, lr: float) -> str:
    """The reason stored with a diverged run ('' for one that did not)."""
    if not diverged(initial_loss=initial_loss, final_loss=final_loss, n_classes=n_classes):
        return ""
    start = start_loss(initial_loss, n_classes)
    return (
        f"diverged: training loss ended at {final_loss:.3g}, over {DIVERGENCE_FACTOR:g}× its {start:.3g} before "
        f"training; kept out of comparisons unless asked (lower lr, now {lr:g})"
    )
