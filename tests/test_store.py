import dataclasses
import json
import os
import sqlite3
import subprocess
import time

import pytest
import torch

from dpsat_core import RunStore, StoreError, TrainConfig, build_model, run
from dpsat_core.claims import keep_alive
from dpsat_core.correctness import count_correct
from dpsat_core.store import ClaimHeld
from tests.at_once import twice_at_once


def test_round_trip_of_config_metrics_and_weights(store, quick):
    outcome = run(quick, store)
    assert not outcome.reused
    again = store.get(outcome.record.run_id)
    assert again.config == quick.normalized() and again.status == "done" and len(again.epochs) == 1
    assert again.summary.releases == again.summary.steps > 0
    s = again.summary  # the per-example bits come back, and agree with the accuracy stored beside them
    assert count_correct(s.test_correct, s.n_test) / s.n_test == s.test_accuracy
    assert "test_correct" not in again.to_dict()["summary"]  # but not in listings (`dpsat runs --json`, Runs page)
    weights = store.load_weights(again.run_id)
    model = build_model(again.summary.model, seed=99)
    model.load_state_dict(weights)  # loads into a fresh module: no Opacus prefixes
    assert all(v.dtype == torch.float32 for v in weights.values())
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_finished_config_is_reused_not_retrained(store, quick):
    first = run(quick, store)
    second = run(TrainConfig(**{**quick.to_dict(), "device": "cpu"}), store)  # placement is not part of the hash
    assert second.reused and second.record.run_id == first.record.run_id
    assert len(store.list_runs()) == 1
    assert not run(quick, store, reuse=False).reused and len(store.list_runs()) == 2


def test_bad_input_writes_no_row_and_a_failed_run_keeps_its_reason(store):
    with pytest.raises(Exception, match="must be < 1/n"):
        run(TrainConfig(dataset="breast_cancer", method="dpsgd", delta=0.5), store)
    assert store.list_runs() == []
    record = run(TrainConfig(dataset="breast_cancer", method="sgd", lr=1e38, epochs=1), store).record
    assert record.status == "failed" and "diverged" in record.reason
    assert store.find_done(record.config_hash) is None


def test_filters_delete_and_missing_runs(store, quick):
    a = run(quick, store).record
    b = run(TrainConfig(**{**quick.to_dict(), "method": "sgd"}), store).record
    assert [r.run_id for r in store.list_runs(method="sgd")] == [b.run_id]
    assert {r.run_id for r in store.list_runs(status="done", dataset="breast_cancer")} == {a.run_id, b.run_id}
    store.delete(a.run_id)
    with pytest.raises(StoreError, match="no run"):
        store.get(a.run_id)
    with pytest.raises(StoreError, match="no run"):
        store.delete(a.run_id)


def test_analyses_are_stored_with_the_run_and_deleted_with_it(store, quick):
    run_id = run(quick, store).record.run_id
    store.save_analysis(run_id, "hessian", "k=5", {"top": [3.0, 2.0]})
    assert store.get_analysis(run_id, "hessian", "k=5") == {"top": [3.0, 2.0]}
    assert store.get_analysis(run_id, "hessian", "k=3") is None
    store.delete(run_id)
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM analyses").fetchone()[0] == 0


def _expire(store: RunStore, run_id: str) -> None:
    """Make `run_id`'s last heartbeat older than the lease, as if its trainer had been killed long ago."""
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET heartbeat=? WHERE run_id=?", (time.time() - 2 * store.lease_seconds, run_id))


def test_a_run_whose_lease_expired_is_interrupted_when_runs_are_read(store, quick):
    expired = store.create_run(quick)
    live = store.create_run(dataclasses.replace(quick, seed=1))
    _expire(store, expired)
    (listed,) = [r for r in store.list_runs() if r.run_id == expired]  # listing reaps it, on any host
    assert listed.status == "failed" and listed.reason.startswith("interrupted: its trainer stopped renewing")
    assert store.get(live).status == "running"  # its lease is fresh
    assert store.reap_interrupted() == 0


def test_a_heartbeat_keeps_a_short_lease_alive_and_stops_with_its_run(tmp_path, quick):
    store = RunStore(tmp_path / "runs.db", lease_seconds=0.4)
    run_id = store.create_run(quick)
    beats = []
    real = store.heartbeat
    store.heartbeat = lambda i: beats.append(i) or real(i)  # counts the beats the thread sends
    with keep_alive(store, run_id):
        deadline = time.time() + 60
        while len(beats) < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert len(beats) >= 3 and store.get(run_id).status == "running"
    after = time.time()
    while store.get(run_id).status == "running" and time.time() < after + 60:  # no more beats: it expires
        time.sleep(0.1)
    record = store.get(run_id)
    assert record.status == "failed" and "no heartbeat for 0.4 s" in record.reason
    assert not store.heartbeat(run_id)  # an interrupted run is not revived


def test_a_config_is_claimed_once_while_it_runs_and_reclaimed_after_an_interruption(store, quick):
    first = store.create_run(quick)
    with pytest.raises(ClaimHeld) as held:
        store.create_run(quick)
    assert held.value.run_id == first and held.value.status == "running"
    other_seed = store.create_run(dataclasses.replace(quick, seed=1))  # the seed is in the hash: its own claim
    assert other_seed != first
    _expire(store, first)
    second = store.create_run(quick)  # the interrupted claim is taken over
    assert store.get(first).status == "failed" and store.get(second).status == "running"


def test_a_claim_is_refused_when_the_config_finished_since_the_caller_looked(store, quick):
    from tests.factories import summary

    looked = time.time()
    done = store.create_run(quick)
    store.finish(done, summary(quick, accuracy=0.9, epsilon_spent=3.9, seconds_per_epoch=1.0), {})
    with pytest.raises(ClaimHeld) as held:
        store.create_run(quick, unless_done_since=looked)
    assert (held.value.run_id, held.value.status) == (done, "done")
    store.create_run(quick, unless_done_since=time.time() + 1)  # an older finished run (say, stale data) does not


def test_two_identical_runs_at_once_train_once_and_the_second_reuses_it(store, quick):
    config = dataclasses.replace(quick, epochs=2)
    outcomes = twice_at_once(lambda: run(config, store), timeout=300)
    assert len(outcomes) == 2 and sorted(o.reused for o in outcomes) == [False, True]
    assert outcomes[0].record.run_id == outcomes[1].record.run_id
    assert [r.status for r in store.list_runs()] == ["done"]


def test_an_old_store_with_duplicate_running_rows_opens_and_keeps_the_newest_claim(tmp_path, quick):
    path = tmp_path / "old.db"
    columns = (
        "run_id TEXT PRIMARY KEY, config_hash TEXT NOT NULL, config TEXT NOT NULL, method TEXT NOT NULL, dataset"
        " TEXT NOT NULL, target_epsilon REAL, seed INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL"
        " DEFAULT '', summary TEXT NOT NULL DEFAULT '{}', weights BLOB, host TEXT, pid INTEGER, created REAL NOT"
        " NULL, updated REAL NOT NULL"
    )
    config = quick.normalized()
    now = time.time()
    with sqlite3.connect(path) as db:  # the runs table as the version before claims wrote it
        db.execute(f"CREATE TABLE runs ({columns})")
        for run_id, created, status in (
            ("old", now - 9, "running"),
            ("new", now - 1, "running"),
            ("d1", 1, "done"),
            ("d2", 2, "done"),
        ):
            db.execute(
                "INSERT INTO runs (run_id, config_hash, config, method, dataset, seed, status, created, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    config.config_hash(),
                    json.dumps(config.to_dict()),
                    "dpsgd",
                    config.dataset,
                    0,
                    status,
                    created,
                    created,
                ),
            )
    store = RunStore(path)
    status = {r.run_id: (r.status, r.reason) for r in store.list_runs()}
    assert status["new"] == ("running", "") and status["d1"][0] == status["d2"][0] == "done"
    assert status["old"][0] == "failed" and "newer run of the same settings held the claim" in status["old"][1]
    with pytest.raises(ClaimHeld):
        store.create_run(quick)
    RunStore(path)  # opening it again changes nothing
    assert {r.run_id: r.status for r in store.list_runs()}["new"] == "running"


def test_a_running_run_is_not_deleted_under_its_trainer_but_a_dead_one_is(store, quick):
    live_id = store.create_run(quick)  # this process is alive: the run is training
    with pytest.raises(StoreError, match="still training: cancel it first"):
        store.delete(live_id)
    assert store.get(live_id).status == "running"
    _expire(store, live_id)  # its trainer died long ago: it is interrupted, and may be deleted
    store.delete(live_id)
    with pytest.raises(StoreError, match="no run"):
        store.get(live_id)


def test_a_killed_run_shows_the_epsilon_of_what_it_stored(store, quick):
    from dpsat_core import EpochMetrics

    run_id = store.create_run(quick)
    for epoch, spent in ((1, 0.8), (2, 1.3)):
        metrics = dict(train_loss=0.5, test_loss=0.5, test_accuracy=0.9, seconds=epoch, steps=6 * epoch)
        store.add_epoch(run_id, EpochMetrics(epoch=epoch, epsilon_spent=spent, releases=6 * epoch, **metrics))
    assert store.get(run_id).epsilon_spent == 1.3  # while it runs: ε so far
    _expire(store, run_id)  # its process died without writing a summary
    store.reap_interrupted()
    (listed,) = store.list_runs()  # listed without asking for epochs: still its last epoch's ε
    assert listed.status == "failed" and listed.summary is None and listed.epsilon_spent == 1.3
    assert listed.to_dict()["epsilon_spent"] == 1.3


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot be used"):
        RunStore(path)


def test_a_listing_with_epochs_attaches_each_runs_own_epochs(store, quick):
    two = TrainConfig(**{**quick.to_dict(), "epochs": 2, "method": "sgd"})
    ids = [run(quick, store).record.run_id, run(two, store).record.run_id]
    listed = {r.run_id: r.epochs for r in store.list_runs(with_epochs=True)}
    assert [len(listed[i]) for i in ids] == [1, 2]
    assert all(listed[i] == store.get(i).epochs for i in ids)
    assert all(r.epochs == () for r in store.list_runs())


def test_the_default_store_is_per_user_unless_dpsat_store_says_otherwise(tmp_path, monkeypatch):
    from dpsat_core.store import default_store_path

    monkeypatch.delenv("DPSAT_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_store_path() == str(tmp_path / "data" / "dpsat-lab" / "runs.db")
    assert RunStore().path == tmp_path / "data" / "dpsat-lab" / "runs.db"
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "mine.db"))
    assert RunStore().path == tmp_path / "mine.db"


def test_the_dpsat_command_works_from_any_directory_on_the_per_user_store(tmp_path):
    import shutil

    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("DPSAT_STORE")
    command = shutil.which("dpsat")
    assert command, "the dpsat command is installed by `pip install -e .` (requirements-dev.txt does it)"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run([command, "runs"], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"store: {tmp_path / 'data' / 'dpsat-lab' / 'runs.db'} (0 runs listed)" in proc.stdout
    assert not any(cwd.iterdir())  # nothing written where it was started


def test_a_run_on_a_file_is_not_reused_once_the_file_changes(store, tmp_path):
    path = tmp_path / "t.csv"
    rows = lambda n: "a,b,y\n" + "".join(f"{i % 7},{(i * 3) % 11},{i % 2}\n" for i in range(n))  # noqa: E731
    path.write_text(rows(60))
    config = TrainConfig(dataset=str(path), target="y", method="sgd", epochs=1, batch_size=16)
    first = run(config, store)
    assert run(config, store).reused  # same bytes: reused
    path.write_text(rows(120))
    second = run(config, store)
    assert not second.reused and second.record.summary.n_train > first.record.summary.n_train
    assert first.record.summary.data_fingerprint != second.record.summary.data_fingerprint
