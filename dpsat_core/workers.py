"""Worker processes that die with their parent, so a killed sweep leaves no orphans.

A pool worker whose parent is killed (SIGKILL, the OOM killer, a stopped
container) would otherwise live on, blocked on a pipe no one writes. Each worker
asks Linux to send it SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`)
and, on every platform, watches its parent's pid from a thread. Either way it
stops the cell it trains (which is stored as cancelled) and exits. A SIGTERM
while the parent lives (a `docker stop` or systemd stop signals every process)
stops the cell and starts no other, and the worker answers its parent as usual.
Workers ignore Ctrl-C: a terminal sends it to the whole process group, and the
parent stops them through the sweep's stop event instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_SECONDS = 0.25  # how often the watchdog looks at the parent's pid and the SIGTERM flag
GRACE_SECONDS = 30.0  # the longest a worker waits for its cancelled cell to store itself before it exits anyway
EXIT_ORPHANED = 3

_stopping = threading.Event()  # SIGTERM, or the parent is gone: stop the cell, start no other
_orphaned = threading.Event()  # the parent is gone: exit as soon as no cell is training
_lock = threading.Lock()
_training = False


def stopping() -> bool:
    """True once this worker must stop training: it was sent SIGTERM, or its parent died."""
    return _stopping.is_set()


def _ask_for_death_signal() -> None:
    """Linux only (elsewhere a no-op): SIGTERM to this process when the thread that started it exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc: the watchdog still works
        pass


def _exit_when_idle() -> None:
    """Exit now if no cell is training; else let the cell see `orphaned()`, and exit after the grace period."""
    _stopping.set()
    _orphaned.set()
    with _lock:
        if not _training:
            os._exit(EXIT_ORPHANED)  # no queue flushing or atexit work: the parent that wanted it is gone
    timer = threading.Timer(GRACE_SECONDS, os._exit, (EXIT_ORPHANED,))
    timer.daemon = True
    timer.start()


def die_with_parent(parent_pid: int) -> None:
    """Make this worker (called first thing in it) exit when `parent_pid` dies or it gets SIGTERM."""
    # The handler only stores a flag. A handler that takes a lock (an Event's set) deadlocks the main thread when a
    # second SIGTERM arrives while the first handler holds that lock; a killed sweep often sends two.
    signalled = [False]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: signalled.__setitem__(0, True))
    _ask_for_death_signal()

    def watch() -> None:
        while os.getppid() == parent_pid:
            if signalled[0]:
                _stopping.set()
            time.sleep(WATCH_SECONDS)
        _exit_when_idle()

    threading.Thread(target=watch, name="dpsat-parent-watch", daemon=True).start()


@contextmanager
def training() -> Iterator[None]:
    """Mark this worker busy with a cell for the block; if its parent went meanwhile, exit when it ends."""
    global _training
    with _lock:
        if _orphaned.is_set():
            os._exit(EXIT_ORPHANED)
        _training = True
    try:
        yield
    finally:
        with _lock:
            _training = False
        if _orphaned.is_set():
            os._exit(EXIT_ORPHANED)
