"""Job functions the job tests run in a process of their own: module-level, so a spawned process can import them
(not a test module: nothing to collect)."""

from __future__ import annotations

import os
import sys
import time

from dpsat_core import Progress
from dpsat_core.progress import check_stop


def report_pid(progress, stop) -> int:
    """Report this process's pid as a metric, and return it."""
    progress(Progress("x", 1, 2, "half", {"pid": os.getpid()}))
    return os.getpid()


def report_start(progress, stop, *, name: str) -> tuple:
    """What this process started with: environment variable `name`, and whether the training modules were loaded."""
    return os.environ.get(name), "dpsat_core.training" in sys.modules


def report_global_draws(progress, stop) -> tuple:
    """One draw from torch's and numpy's global generators, as this process starts with them."""
    import numpy as np
    import torch

    return torch.rand(1).item(), float(np.random.random())


def pool_worker_parent(progress, stop, *, server_gone: int = 0) -> tuple[int, int]:
    """This job process's parent (the fork server that started it) and the parent of a pool worker it starts; with
    `server_gone`, a dead pid, as if that server had died (a fresh server then starts, here without preloads)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import forkserver

    parent = os.getppid()
    context = mp.get_context("forkserver")
    if server_gone:
        forkserver._forkserver._forkserver_pid = server_gone
        context.set_forkserver_preload([])  # what the fresh server imports does not matter here: nothing, quickly
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return parent, pool.submit(os.getppid).result()


def fail(progress, stop, *, error: Exception) -> None:
    progress(Progress("x", 1, 4, "about to fail"))
    raise error


def wait_for_stop(progress, stop) -> None:
    """Report this process's pid, then wait until asked to stop."""
    progress(Progress("x", 1, 4, "waiting", {"pid": os.getpid()}))
    while True:
        check_stop(stop)
        time.sleep(0.01)


def many_reports(progress, stop) -> None:
    """A run's reports as fast as training sends them (a loss per step, then its epoch's numbers), the next run's
    first report, then wait until asked to stop."""
    for step in range(300):
        progress(Progress("sweep", 0, 2, "a: epoch 1/1", {"cell": "a", "loss": float(step)}, within=step / 300))
    progress(Progress("sweep", 0, 2, "a: epoch 1/1 done", {"cell": "a", "epsilon_spent": 0.9, "test_accuracy": None}))
    progress(Progress("sweep", 1, 2, "b: epoch 1/1", {"cell": "b", "loss": 2.0}))
    progress(Progress("sweep", 1, 2, "b: epoch 1/1", {"cell": "b", "epoch": 1}, within=0.5))
    while True:
        check_stop(stop)
        time.sleep(0.01)
