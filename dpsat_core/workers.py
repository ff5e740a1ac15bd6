"""Worker processes that die with their parent, so a killed sweep leaves no orphans.

A pool worker whose parent is killed (SIGKILL, the OOM killer, a stopped
container) would otherwise live on, blocked on a pipe no one writes. Each worker
asks Linux to send it SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`)
and, on every platform, watches the pid of the process that started it from a
thread. Either way it stops the cell it trains (which is stored as cancelled) and exits. A SIGTERM
while the parent lives (a `docker stop` or systemd stop signals every process)
stops the cell and starts no other, and the worker answers its parent as usual.
Workers ignore Ctrl-C: a terminal sends it to the whole process group, and the
parent stops them through the sweep's stop event instead.

Workers and job processes start from a fork server that has imported the
training modules once (`process_context`), so each starts in a fraction of a
second instead of importing torch and Opacus again (~6 s on 2 cores). A job
process that runs a pool starts its workers from that same server
(`_adopt_fork_server`), not from a second one that would import them again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Iterator, Mapping

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_SECONDS = 0.25  # how often the watchdog looks at the parent's pid and the SIGTERM flag
GRACE_SECONDS = 30.0  # the longest a worker waits for its cancelled cell to store itself before it exits anyway
EXIT_ORPHANED = 3
PROC = Path("/proc")  # Linux's process table; elsewhere absent
# what a worker or job process runs, imported once by the fork server instead of once per process
PRELOAD = ("dpsat_core.training", "dpsat_core.sweeps", "dpsat_core.job_process", "dpsat_core.tasks")

_stopping = threading.Event()  # SIGTERM, or the parent is gone: stop the cell, start no other
_orphaned = threading.Event()  # the parent is gone: exit as soon as no cell is training
_lock = threading.Lock()
_training = False


def process_context() -> BaseContext:
    """How our worker and job processes start: on Linux forked from a fork server that preloaded `PRELOAD` (a
    clean single-threaded process: safe to fork, unlike one where torch has started threads); else spawned.
    The server imports `PRELOAD` as a fresh `python` would from the working directory and `PYTHONPATH` (Python 3.11
    ignores the caller's run-time `sys.path` there): a checkout is used only when it is the installed one or on
    `PYTHONPATH`."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # read when the server starts: the first process started
    return context


def warm_up() -> None:
    """Start the fork server now, in the background: it imports the training modules in a process of its own (~6 s
    of one core) while nothing waits, so the first job or worker started later starts at once. The server starts
    with SIGINT blocked: a Ctrl-C in the terminal stops the caller cleanly instead of printing the server's
    traceback from the middle of its imports (its children ignore SIGINT as well, `die_with_parent`)."""
    if process_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()  # first: starting it unblocks SIGINT on its way out
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver._forkserver.ensure_running()  # the instance's: in a process that adopted its server, ours
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextmanager
def warming(wanted: bool) -> Iterator[None]:
    """`warm_up()` first when `wanted` (the block then works while the server imports); if the block raises, the
    server this started, still unused, is stopped, so it neither finishes its imports for nothing nor holds the
    caller's stdout and stderr open after the caller exits."""
    if not wanted or process_context().get_start_method() != "forkserver":
        yield
        return
    from multiprocessing import forkserver

    server = forkserver._forkserver
    started = server._forkserver_pid is None
    warm_up()
    try:
        yield
    except BaseException:
        if started and server._forkserver_pid is not None:
            os.kill(server._forkserver_pid, signal.SIGTERM)  # a quiet end: no Python handler is installed for it
            server._stop()
        raise


def _parent_is_fork_server() -> bool:
    """Whether this process's parent is a multiprocessing fork server (where /proc says; elsewhere assumed, as a
    child with a server's address and liveness pipe was started by one)."""
    if not (PROC / "self" / "stat").exists():
        return True
    try:
        return b"multiprocessing.forkserver" in (PROC / str(os.getppid()) / "cmdline").read_bytes()
    except OSError:
        return False


def _adopt_fork_server() -> None:
    """In a fork server's child, start processes (a job's pool) from that server, not from a second one that would
    import torch and Opacus again (~5 s of one core). Python gives the child the server's address and liveness pipe
    but not its pid, so its `ensure_running` would start a new server; the server is this process's parent, and
    stays usable while it is (a dead parent's children are re-parented at once). If it is gone, a fresh server
    starts as before."""
    from multiprocessing import forkserver, resource_tracker

    server = forkserver._forkserver
    if server._forkserver_alive_fd is None or server._forkserver_address is None or server._forkserver_pid is not None:
        return  # not a fork server's child, or it has a server of its own already
    if getattr(server, "_forkserver_authkey", b"") is None:
        return  # a Python whose server authenticates its clients (3.14+), and this child lacks the key
    if not _parent_is_fork_server():
        return  # the server died before this process got here: start one of its own when one is needed
    server._forkserver_pid = os.getppid()

    def ensure_running() -> None:  # by parentage: the server is not this process's child, so waitpid cannot tell
        with server._lock:
            adopted = server.__dict__.get("ensure_running") is ensure_running
            if adopted and os.getppid() == server._forkserver_pid:
                resource_tracker.ensure_running()
                return
            if adopted:  # gone: forget it, and let the stdlib's method start a server of our own
                os.close(server._forkserver_alive_fd)
                server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
                del server.ensure_running
        server.ensure_running()

    server.ensure_running = ensure_running  # type: ignore[method-assign]


def _start_fresh(environment: Mapping[str, str]) -> None:
    """The parent's environment at the time it was started, as a spawned process's would be (a fork server's
    children inherit the server's, from when it started), and global random generators of their own (a fork
    server's children would all share its torch and numpy states). Nothing in dpsat draws from those (noise and
    sampling use per-run generators), but code added later might."""
    import secrets

    import numpy as np
    import torch

    os.environ.clear()
    os.environ.update(environment)
    torch.seed()  # a non-deterministic seed, on every device
    np.random.seed(secrets.randbits(32))


def _alive(pid: int) -> bool:
    """True while process `pid` runs (on Linux a zombie, dead but not yet reaped, counts as dead)."""
    if (PROC / "self" / "stat").exists():
        try:
            return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:  # no such process
            return False
    try:  # no /proc (macOS): ask the kernel whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


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


def start_child(parent_pid: int, environment: Mapping[str, str]) -> None:
    """First thing in a worker or job process: the environment of `parent_pid` (the process that started it), global
    random generators of its own, the fork server that started it for any process it starts, and an exit when
    `parent_pid` dies or on SIGTERM."""
    _start_fresh(environment)
    _adopt_fork_server()
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """Make this worker (called first thing in it) exit when `parent_pid` dies or it gets SIGTERM."""
    # The handler only stores a flag. A handler that takes a lock (an Event's set) deadlocks the main thread when a
    # second SIGTERM arrives while the first handler holds that lock; a killed sweep often sends two.
    signalled = [False]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: signalled.__setitem__(0, True))
    _ask_for_death_signal()

    def watch() -> None:  # by pid: a fork server's child has the server, not `parent_pid`, as its parent
        while _alive(parent_pid):
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
