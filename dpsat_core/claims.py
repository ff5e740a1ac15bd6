"""Claims on a config hash while it trains: keeping one alive (a heartbeat thread) and waiting for another's.

The store holds the claim (`RunStore.create_run`); these are the two sides of it
that take time: the trainer renews its lease in the background however long a
step or an evaluation takes, and a second trainer of the same config polls the
claim until it ends (done: reuse it; interrupted or cancelled: train it itself).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from .progress import Progress, ProgressFn, StopFn, check_stop, no_progress
from .results import RunRecord
from .store import RunStore

POLL_SECONDS = 0.5


@contextmanager
def keep_alive(store: RunStore, run_id: str) -> Iterator[None]:
    """Renew `run_id`'s lease every `store.heartbeat_seconds` from a daemon thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(store.heartbeat_seconds):
            try:
                if not store.heartbeat(run_id):
                    return  # finished, or judged interrupted: nothing left to renew
            except Exception:  # a busy store: the next beat tries again
                pass

    thread = threading.Thread(target=beat, name=f"dpsat-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def wait_for_claim(
    store: RunStore,
    run_id: str,
    *,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> RunRecord:
    """Poll `run_id` (another trainer's claim) until it is no longer running and return it; a claim whose
    trainer died ends when its lease expires (the store marks it interrupted). Raises `Cancelled` on stop."""
    on_progress(Progress("wait", 0, 1, f"waiting for run {run_id}: the same settings are training elsewhere"))
    while True:
        record = store.get(run_id)  # reads reap expired leases
        if record.status != "running":
            return record
        check_stop(should_stop)
        time.sleep(POLL_SECONDS)
