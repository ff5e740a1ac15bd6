"""Stop a long command cleanly on SIGTERM or Ctrl-C: the first signal asks the work to stop (runs under way are
stored as cancelled, finished ones are kept), a second one interrupts at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """A `should_stop` callable that turns true once a stop signal arrived; `signum` says which."""

    signum: Optional[int] = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's code for a command ended by this signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
        return 0 if self.signum is None else 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGINT and SIGTERM in the block (main thread only; elsewhere the request never turns true)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: object) -> None:
        if request.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
