"""Train a config into the store, or reuse the finished run with the same config hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import TrainConfig
from .data import data_fingerprint, load_config_dataset
from .devices import resolve_device
from .planning import plan_run
from .progress import ProgressFn, StopFn, no_progress
from .results import RunRecord
from .store import RunStore
from .training import train


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
    if record.summary is None or record.summary.data_fingerprint != data_fingerprint(config.dataset):
        return None
    return record if record.summary.n_train == load_config_dataset(config).n_train else None


def run(
    config: TrainConfig,
    store: RunStore,
    *,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    reuse: bool = True,
) -> RunOutcome:
    """Plan against the data first (bad input leaves no row), then train, streaming epochs to the store."""
    config = config.normalized()
    resolve_device(config.device)  # CUDA asked for but absent is an error even when a finished run exists
    if reuse:
        existing = reusable_run(store, config)
        if existing is not None:
            return RunOutcome(existing, reused=True)
    dataset = load_config_dataset(config)
    plan = plan_run(config, dataset, store)  # raises ConfigError before any row is written
    run_id = store.create_run(config)
    try:
        result = train(
            config,
            on_progress=on_progress,
            should_stop=should_stop,
            dataset=dataset,
            plan=plan,
            book=store,
            on_epoch=lambda metrics: store.add_epoch(run_id, metrics),
        )
    except BaseException as exc:
        store.fail(run_id, f"{type(exc).__name__}: {exc}")
        raise
    store.finish(run_id, result.summary(), result.state_dict)
    return RunOutcome(store.get(run_id), reused=False)
