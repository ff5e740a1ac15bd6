import os
import sqlite3
import subprocess
import sys

import pytest
import torch

from dpsat_core import RunStore, StoreError, TrainConfig, build_model, run
from dpsat_core.store import _pid_alive


def test_round_trip_of_config_metrics_and_weights(store, quick):
    outcome = run(quick, store)
    assert not outcome.reused
    again = store.get(outcome.record.run_id)
    assert again.config == quick.normalized() and again.status == "done" and len(again.epochs) == 1
    assert again.summary.releases == again.summary.steps > 0
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


def test_runs_of_a_dead_process_are_marked_interrupted(store, quick):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    assert not _pid_alive(dead_pid) and _pid_alive(os.getpid())
    run_id = store.create_run(quick)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET pid=? WHERE run_id=?", (dead_pid, run_id))
    live_id = store.create_run(quick)
    assert store.reap_interrupted() == 0  # the first call (inside create_run) already reaped it
    assert store.get(run_id).status == "failed" and "interrupted" in store.get(run_id).reason
    assert store.get(live_id).status == "running"


def test_a_running_run_is_not_deleted_under_its_trainer_but_a_dead_one_is(store, quick):
    live_id = store.create_run(quick)  # this process is alive: the run is training
    with pytest.raises(StoreError, match="still training: cancel it first"):
        store.delete(live_id)
    assert store.get(live_id).status == "running"
    with sqlite3.connect(store.path) as db:  # its process dies: it is interrupted, and may be deleted
        db.execute("UPDATE runs SET pid=? WHERE run_id=?", (_dead_pid(), live_id))
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
    with sqlite3.connect(store.path) as db:  # its process dies without writing a summary
        db.execute("UPDATE runs SET pid=? WHERE run_id=?", (_dead_pid(), run_id))
    store.reap_interrupted()
    (listed,) = store.list_runs()  # listed without asking for epochs: still its last epoch's ε
    assert listed.status == "failed" and listed.summary is None and listed.epsilon_spent == 1.3
    assert listed.to_dict()["epsilon_spent"] == 1.3


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


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
