"""Shared fixtures: a temporary run store and small, fast configs; no test touches the per-user store."""

from __future__ import annotations

import pytest

from dpsat_core import RunStore, TrainConfig


@pytest.fixture(autouse=True)
def private_default_store(tmp_path, monkeypatch):
    """Point the default store ($DPSAT_STORE) into the test's folder, so nothing writes to the user's data."""
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "default-runs.db"))


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.db")


@pytest.fixture
def quick() -> TrainConfig:
    """One epoch on breast_cancer (409 training rows after test and validation): a private run in under a second."""
    return TrainConfig(dataset="breast_cancer", method="dpsgd", epsilon=4.0, epochs=1, batch_size=64)
