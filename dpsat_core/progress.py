"""The one progress/cancel protocol shared by training, sweeps and analyses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Progress:
    """A progress report: `done` of `total` units of `stage` (plus `within`, the share of the unit under
    way, so a bar moves during a long run of a sweep), and optional live metrics."""

    stage: str
    done: int
    total: int
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    within: float = 0.0

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, (self.done + self.within) / self.total)


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]


def no_progress(_: Progress) -> None:
    """Default progress callback: ignore reports."""


class Cancelled(Exception):
    """Raised inside long computations when `should_stop()` turns true."""


def stop_asked(should_stop: Optional[StopFn]) -> bool:
    """True when the caller gave a stop check and it says stop."""
    return should_stop is not None and should_stop()


def check_stop(should_stop: Optional[StopFn]) -> None:
    """Raise `Cancelled` if the caller asked to stop."""
    if stop_asked(should_stop):
        raise Cancelled()
