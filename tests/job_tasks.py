"""Job functions the job tests run in a process of their own: module-level, so a spawned process can import them
(not a test module: nothing to collect)."""

from __future__ import annotations

import os
import time

from dpsat_core import Progress
from dpsat_core.progress import check_stop


def report_pid(progress, stop) -> int:
    """Report this process's pid as a metric, and return it."""
    progress(Progress("x", 1, 2, "half", {"pid": os.getpid()}))
    return os.getpid()


def fail(progress, stop, *, error: Exception) -> None:
    progress(Progress("x", 1, 4, "about to fail"))
    raise error


def wait_for_stop(progress, stop) -> None:
    """Report this process's pid, then wait until asked to stop."""
    progress(Progress("x", 1, 4, "waiting", {"pid": os.getpid()}))
    while True:
        check_stop(stop)
        time.sleep(0.01)
