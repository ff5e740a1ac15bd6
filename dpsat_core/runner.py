"""Train a config into the store, or reuse the finished run with the same config hash.

Training starts only with a claim on the config hash (`RunStore.create_run`): a
second trainer of the same config, in this process or another, waits for the
first and reuses its result, or trains it itself if the first was interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .claims import keep_alive, wait_for_claim
from .config import TrainConfig
from .data import data_fingerprint, load_config_dataset, load_config_split
from .devices import check_device
from .planning import plan_run
from .progress import ProgressFn, StopFn, check_stop, no_progress
from .results import RunRecord
from .store import INTERRUPTED, ClaimHeld, RunStore

if TYPE_CHECKING:
    from .training import TrainResult


@dataclass(frozen=True)
class RunOutcome:
    """The stored run, and whether it was reused instead of trained."""

    record: RunRecord
    reused: bool


def reusable_run(store: RunStore, config: TrainConfig) -> Optional[RunRecord]:
    """The newest finished run of this config, if its data set is still the same bytes (files can change) and
    splits into as many training rows as it did (a guard against a split that changed between versions)."""
    run_id = store.find_done(config.normalized().config_hash())
    if run_id is None:
        return None
    record = store.get(run_id)
    if record.summary is None or record.summary.data_fingerprint != data_fingerprint(config.dataset, config.schema):
        return None
    return record if record.summary.n_train == load_config_split(config).n_train else None


def run(
    config: TrainConfig,
    store: RunStore,
    *,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    reuse: bool = True,
) -> RunOutcome:
    """Plan against the data first (bad input leaves no row), claim the config, then train, streaming epochs to
    the store and renewing the claim's lease. A claim held elsewhere is waited for (`Cancelled` if stopped
    meanwhile): its finished run is reused, its failure returned (these very settings failed), and a claim that
    was interrupted or cancelled is trained here."""
    config = config.normalized()
    check_device(config.device)  # CUDA asked for but absent is an error even when a finished run exists
    dataset, plan = None, None
    while True:
        looked = time.time()
        if reuse:
            existing = reusable_run(store, config)
            if existing is not None:
                return RunOutcome(existing, reused=True)
        if plan is None:
            dataset = load_config_dataset(config)
            # raises ConfigError (or Cancelled, stopped during σ's search) before any row is written
            plan = plan_run(config, dataset, store, should_stop=should_stop)
        check_stop(should_stop)  # stopped while planning or waiting: claim nothing
        try:
            run_id = store.create_run(config, unless_done_since=looked if reuse else None)
            break
        except ClaimHeld as held:
            if held.status != "running":
                continue  # finished since we looked: reuse it (if its data still match)
            other = wait_for_claim(store, held.run_id, on_progress=on_progress, should_stop=should_stop)
            if reuse and other.status == "failed" and not other.reason.startswith(INTERRUPTED):
                return RunOutcome(other, reused=True)
    train_claimed(store, run_id, config, on_progress=on_progress, should_stop=should_stop, dataset=dataset, plan=plan)
    return RunOutcome(store.get(run_id), reused=False)


def train_claimed(store: RunStore, run_id: str, config: TrainConfig, **options: Any) -> TrainResult:
    """Train `config` into the row `run_id` already claimed: keep its lease alive, stream each epoch, store the
    outcome and weights (a crash is stored as failed, then raised). `options` go to `train`."""
    from .training import train  # torch and Opacus: only once there is something to train

    try:
        with keep_alive(store, run_id):
            result = train(config, book=store, on_epoch=lambda metrics: store.add_epoch(run_id, metrics), **options)
    except BaseException as exc:
        store.fail(run_id, f"{type(exc).__name__}: {exc}")
        raise
    store.finish(run_id, result.summary(), result.state_dict)
    return result


def store_result(store: RunStore, run_id: str, result: TrainResult) -> RunRecord:
    """Write a run trained away from the store (a Ray worker) into its row: its epochs, then its outcome and
    weights, as `run` writes a run trained here."""
    for metrics in result.epochs:
        store.add_epoch(run_id, metrics)
    store.finish(run_id, result.summary(), result.state_dict)
    return store.get(run_id)
