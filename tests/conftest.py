"""Shared fixtures: a temporary run store and small, fast configs; no test touches the per-user store."""

from __future__ import annotations

import pytest

from dpsat_core import RunStore, TrainConfig


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Give `xdist_group` tests their group under `--dist loadgroup` where pytest-xdist could not: xdist 3.8 appends
    "@group" to the legacy `_nodeid`, which pytest 9.2 no longer reads (pytest-xdist#1386), so every group was
    split over the workers (two local Rays, module fixtures built on both). A no-op once xdist's own suffix shows.
    Tests marked `slow` go first, so the last ones handed out are short."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # the longest first: no idle worker at the end

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)


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
