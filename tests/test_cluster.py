"""dpsat_core.cluster: sweeps on Ray against a local Ray instance that this module starts once: the same results
as the local executor, failed cells reported, done cells reused, cancel, the CLI flags and the Train page."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dashboard.state import get_jobs
from dpsat_core import ConfigError, RayCluster, RunStore, SweepSpec, TrainConfig, sweep
from dpsat_core.cli import main
from dpsat_core.cluster import cluster_from_env
from dpsat_core.sweeps import check_sweep
from tests.test_dashboard import fresh_server_state, open_page  # noqa: F401 (an autouse fixture of the page test)

pytestmark = pytest.mark.xdist_group("ray")  # under `pytest -n`: one worker runs this module, so one Ray starts
BASE = TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64)
GRID = SweepSpec(base=BASE, methods=("sgd", "dpsgd", "dpsat"), epsilons=(3.0,), seeds=(0,))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for this module (started once: it takes seconds), shut down after it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def on_ray(local_ray, tmp_path_factory) -> tuple[RunStore, object]:
    """GRID swept once on Ray into a fresh store."""
    store = RunStore(tmp_path_factory.mktemp("ray") / "runs.db")
    return store, sweep(GRID, store, cluster=RayCluster())


def outcomes(store: RunStore, run_ids) -> list[tuple]:
    """(method, seed, status, test accuracy, ε spent, epochs stored) of each run, sorted."""
    records = [store.get(r) for r in run_ids]
    return sorted((r.method, r.config.seed, r.status, r.test_accuracy, r.epsilon_spent, len(r.epochs)) for r in records)


@pytest.mark.ray
def test_ray_cells_give_the_same_accuracies_epsilons_and_weights_as_the_local_executor(on_ray, tmp_path):
    ray_store, on_cluster = on_ray
    local_store = RunStore(tmp_path / "local.db")
    here = sweep(GRID, local_store)
    assert len(on_cluster.trained) == 3 and not on_cluster.errors and not on_cluster.failed
    assert outcomes(ray_store, on_cluster.trained) == outcomes(local_store, here.trained)
    dpsgd = {s: next(r for r in s.list_runs() if r.method == "dpsgd") for s in (ray_store, local_store)}
    assert dpsgd[ray_store].epsilon_spent <= 3.0 and dpsgd[ray_store].summary.releases > 0
    assert dpsgd[ray_store].config_hash == dpsgd[local_store].config_hash  # reusable by either executor
    assert dpsgd[ray_store].summary.n_test == dpsgd[local_store].summary.n_test is not None  # for the intervals
    assert dpsgd[ray_store].summary.test_correct == dpsgd[local_store].summary.test_correct is not None  # likewise
    weights = [s.load_weights(dpsgd[s].run_id) for s in (ray_store, local_store)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.ray
def test_a_second_submission_reuses_the_done_cells(on_ray):
    store, first = on_ray
    second = sweep(GRID, store, cluster=RayCluster())
    assert second.trained == [] and sorted(second.reused) == sorted(first.trained)
    assert len(store.list_runs()) == 3


@pytest.mark.ray
def test_a_diverging_cell_fails_with_the_same_reasons_on_ray_and_locally(local_ray, tmp_path):
    diverging = SweepSpec(
        base=TrainConfig(**{**BASE.to_dict(), "lr": 1e38}), methods=("dpsgd",), epsilons=(3.0,), seeds=(0,)
    )
    on_cluster = sweep(diverging, RunStore(tmp_path / "ray.db"), cluster=RayCluster())
    here = sweep(diverging, RunStore(tmp_path / "local.db"))
    assert on_cluster.errors == here.errors and len(on_cluster.failed) == len(here.failed) == 1
    first = on_cluster.errors[0]
    assert first.startswith("DP-SGD, ε = 3, seed 0: training diverged") and "lower lr" in first


@pytest.mark.ray
def test_a_cell_that_raises_on_the_worker_is_reported_and_its_row_says_why(local_ray, tmp_path):
    # CUDA is the workers' business (this machine need not have it), so the check here passes and the
    # CPU-only worker raises: the cell fails with the worker's message, and no row is left running
    cuda = SweepSpec(
        base=TrainConfig(**{**BASE.to_dict(), "device": "cuda"}), methods=("sgd",), epsilons=(), seeds=(0, 1)
    )
    check_sweep(cuda, device_here=False)
    with pytest.raises(ConfigError, match="asked for CUDA"):
        check_sweep(cuda)
    store = RunStore(tmp_path / "runs.db")
    result = sweep(cuda, store, cluster=RayCluster())
    assert not result.trained and len(result.failed) == 2 and len(result.errors) == 2
    assert all("on the Ray worker: device='cuda' asked for CUDA but none is available" in e for e in result.errors)
    rows = store.list_runs()
    assert {r.status for r in rows} == {"failed"} and all("asked for CUDA" in r.reason for r in rows)
    assert result.problems().startswith("2 of the cells failed: SGD (non-private), seed ")


@pytest.mark.ray
def test_cancelling_a_ray_sweep_submits_no_more_cells_and_leaves_no_row_running(local_ray, tmp_path):
    spec = SweepSpec(base=BASE, methods=("dpsgd",), epsilons=(3.0,), seeds=(1, 2, 3))  # σ calibrated once
    store = RunStore(tmp_path / "runs.db")
    finished = [0]
    result = sweep(
        spec,
        store,
        cluster=RayCluster(),
        on_progress=lambda p: p.message.endswith("finished") and finished.append(p.done),
        should_stop=lambda: max(finished) >= 1,
    )
    rows = store.list_runs()
    assert result.cancelled and len(result.trained) >= 1
    assert len(rows) == 2  # the two cells running when the first finished (2 CPUs); the rest never started
    assert len(result.skipped) == 1  # and the sweep says so
    assert {r.status for r in rows} <= {"done", "cancelled"}


@pytest.mark.ray
def test_the_cli_sweeps_on_ray_and_refuses_what_the_cluster_cannot_run(local_ray, tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "sgd", "--seeds", "0", "--epochs", "1", "--store", db]
    assert main([*args, "--executor", "ray", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["trained"]) == 1
    assert main([*args, "--executor", "ray", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["reused"]) == 1
    # a GPU the cluster lacks would wait forever: refused before anything is written
    assert main([*args, "--seeds", "1", "--executor", "ray", "--gpus-per-run", "1"]) == 2
    assert capsys.readouterr().err.endswith(
        "each run asks for 1 GPU but the Ray cluster has 0: lower --gpus-per-run or add GPU nodes\n"
    )
    assert main([*args, "--address", "127.0.0.1:6379"]) == 2
    assert capsys.readouterr().err == "error: --address and --gpus-per-run apply to --executor ray only\n"
    assert len(RunStore(db).list_runs()) == 1


@pytest.mark.ray
def test_the_train_page_sends_sweeps_to_the_configured_ray_address(local_ray, tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    monkeypatch.setenv("DPSAT_STORE", str(db))
    address = local_ray.get_runtime_context().gcs_address
    monkeypatch.setenv("DPSAT_RAY_ADDRESS", address)
    at = open_page("train")
    assert any(f"Runs train on the Ray cluster at {address}" in c.value.replace("\\", "") for c in at.caption)
    for name in ("dpsat", "dpsam"):
        at.checkbox(key=f"train-method-{name}").uncheck()
    at.text_input(key="train-epsilons").input("3")
    at.text_input(key="train-seeds").input("0")
    at.number_input(key="train-epochs").set_value(1)
    at.button(key="train-start").click().run()
    assert not at.exception and "Started 1 run" in at.success[0].value
    view = get_jobs().wait(get_jobs().jobs()[0].job_id, timeout=300)
    assert view.status == "done", view.error
    (run,) = RunStore(db).list_runs(status="done")
    assert run.method == "dpsgd"


def test_cluster_settings_are_checked_and_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("DPSAT_RAY_ADDRESS", raising=False)
    assert cluster_from_env() is None
    monkeypatch.setenv("DPSAT_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("DPSAT_RAY_GPUS_PER_RUN", "0.5")
    assert cluster_from_env() == RayCluster(address="ray://head:10001", gpus_per_run=0.5)
    monkeypatch.setenv("DPSAT_RAY_GPUS_PER_RUN", "one")
    with pytest.raises(ConfigError, match="DPSAT_RAY_GPUS_PER_RUN must be a number"):
        cluster_from_env()
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="gpus per run must be a number ≥ 0"):
            RayCluster(gpus_per_run=bad)
    with pytest.raises(ConfigError, match="the Ray address is empty"):
        RayCluster(address=" ")


def test_a_run_records_its_data_fingerprint_where_the_file_is_absent(tmp_path):
    # what a Ray worker sees: the data set arrives as an object, the file stays on the driver's machine
    import pickle

    from dpsat_core.data import data_fingerprint, load_config_dataset
    from dpsat_core.training import train

    path = tmp_path / "table.csv"
    rows = [f"{i % 7},{(i * 3) % 11},{i % 2}" for i in range(80)]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    config = TrainConfig(dataset=str(path), target="label", method="sgd", epochs=1, batch_size=16)
    dataset = load_config_dataset(config)  # scaled as the driver ships it
    expected = data_fingerprint(str(path))
    assert dataset.fingerprint == expected is not None
    path.unlink()
    summary = train(config, dataset=pickle.loads(pickle.dumps(dataset))).summary()  # shipped as Ray pickles it
    assert summary.data_fingerprint == expected
    assert summary.released_scaling == dataset.released.to_dict() is not None  # the statistics the driver released


RAY_DRIVER = """
import os, signal, time
from dpsat_core.cluster import RayCluster, connect
from dpsat_core.interrupts import stop_on_signals
with stop_on_signals() as stop:
    ray = connect(RayCluster())
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.time() + 30
    while not stop() and time.time() < deadline:
        time.sleep(0.05)
    print(stop.name, flush=True)
ray.shutdown()
"""


@pytest.mark.ray
def test_a_ray_driver_keeps_its_clean_stop_on_sigterm(local_ray, tmp_path):
    # ray.init installs a SIGTERM handler of its own (in C) that aborts the driver: connect puts ours back. It does
    # so when it joins a running instance too (without the restore this driver dies of the signal, exit 15): this
    # driver joins the module's instead of starting one of its own (~10 s)
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    proc = subprocess.run(
        [sys.executable, "-c", RAY_DRIVER], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "SIGTERM"
