from pathlib import Path

from streamlit.testing.v1 import AppTest

from dpsat_core import RunStore, TrainConfig, run

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def test_overview_renders_on_an_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "No runs yet" in at.info[0].value
    assert "DP-SAT" in at.dataframe[0].value["method"].tolist()


def test_overview_lists_stored_runs(tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    record = run(TrainConfig(dataset="breast_cancer", method="dpsat", epochs=1, batch_size=64), RunStore(db)).record
    monkeypatch.setenv("DPSAT_STORE", str(db))
    monkeypatch.chdir(tmp_path)  # the app must not depend on the working directory
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.dataframe[1].value["run_id"].tolist() == [record.run_id]
