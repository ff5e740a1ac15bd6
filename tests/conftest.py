"""Shared fixtures: a temporary run store and small, fast configs."""

from __future__ import annotations

import warnings

import pytest

from dpsat_core import RunStore, TrainConfig

warnings.filterwarnings("ignore", module="opacus")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.db")


@pytest.fixture
def quick() -> TrainConfig:
    """One epoch on breast_cancer (455 rows): a full private run in well under a second."""
    return TrainConfig(dataset="breast_cancer", method="dpsgd", epsilon=4.0, epochs=1, batch_size=64)
