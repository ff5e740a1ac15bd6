"""Train a config into the store, or reuse the finished run with the same config hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import TrainConfig
from .data import load_dataset
from .progress import ProgressFn, StopFn, no_progress
from .store import RunRecord, RunStore
from .training import plan_privacy, train


@dataclass(frozen=True)
class RunOutcome:
    """The stored run, and whether it was reused instead of trained."""

    record: RunRecord
    reused: bool


def run(
    config: TrainConfig,
    store: RunStore,
    *,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    reuse: bool = True,
) -> RunOutcome:
    """Validate against the data first (bad input leaves no row), then train, streaming epochs to the store."""
    config = config.normalized()
    if reuse:
        existing = store.find_done(config.config_hash())
        if existing is not None:
            return RunOutcome(store.get(existing), reused=True)
    dataset = load_dataset(config.dataset, target=config.target, size=config.dataset_size, split_seed=config.split_seed)
    plan_privacy(config, dataset.n_train)  # raises ConfigError before any row is written
    run_id = store.create_run(config)
    try:
        result = train(
            config,
            on_progress=on_progress,
            should_stop=should_stop,
            dataset=dataset,
            on_epoch=lambda metrics: store.add_epoch(run_id, metrics),
        )
    except BaseException as exc:
        store.fail(run_id, f"{type(exc).__name__}: {exc}")
        raise
    store.finish(run_id, result)
    return RunOutcome(store.get(run_id), reused=False)
