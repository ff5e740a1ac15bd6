import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from functools import partial

import pytest

from dpsat_core import ConfigError, Progress, RunStore, SweepSpec, TrainConfig, tasks
from dpsat_core.jobs import JobManager, NotYourJob
from dpsat_core.progress import check_stop
from dpsat_core.workers import process_context, warm_up
from tests import job_tasks
from tests.processes import alive, wait_for


def test_jobs_report_progress_and_end_done_failed_or_cancelled():
    jobs = JobManager(max_workers=2)
    started = threading.Event()

    def good(progress, stop):
        progress(Progress("train", 1, 2, "half", {"epsilon": 1.5, "test_accuracy": 0.7}))
        return 42

    def bad(progress, stop):
        raise ConfigError("epsilon must be > 0")

    def slow(progress, stop):
        progress(Progress("sweep", 1, 4, "run 1 of 4 finished"))
        started.set()
        while True:
            check_stop(stop)
            time.sleep(0.01)

    ids = [jobs.submit("x", "good", good), jobs.submit("x", "bad", bad), jobs.submit("x", "slow", slow)]
    done, failed = jobs.wait(ids[0]), jobs.wait(ids[1])
    assert done.status == "done" and done.fraction == 1.0 and done.metrics == {}  # the job's, not its last run's
    assert jobs.result(ids[0]) == 42
    assert failed.status == "failed" and failed.error == "epsilon must be > 0"
    assert started.wait(10)
    jobs.cancel(ids[2])
    cancelled = jobs.wait(ids[2])
    assert cancelled.status == "cancelled" and cancelled.fraction == 0.25  # the bar stops where the job did
    assert [j.label for j in jobs.jobs()] == ["slow", "bad", "good"]
    jobs.clear_finished()
    assert jobs.jobs() == []
    jobs.shutdown()


def test_a_running_sweep_shows_only_the_current_runs_numbers():
    jobs = JobManager(max_workers=1)
    step, seen = threading.Event(), []

    def sweep_like(progress, stop):
        progress(
            Progress("sweep", 0, 2, "a: epoch 1/1 done", {"cell": "a", "epsilon_spent": 0.9, "test_accuracy": 0.8})
        )
        seen.append(jobs.jobs()[0].metrics)
        progress(Progress("sweep", 1, 2, "b: epoch 1/5", {"cell": "b", "loss": 2.0}))
        seen.append(jobs.jobs()[0].metrics)
        step.set()

    job = jobs.submit("sweep", "two runs", sweep_like)
    assert step.wait(30) and jobs.wait(job).status == "done"
    assert seen[0]["epsilon_spent"] == 0.9 and seen[1] == {"cell": "b", "loss": 2.0}  # nothing left from run a
    jobs.shutdown()


def test_a_session_cancels_and_clears_only_its_own_jobs():
    jobs = JobManager(max_workers=2)
    release = threading.Event()
    a = jobs.submit("x", "a's", lambda progress, stop: release.wait(60) and not stop(), owner="A")
    b = jobs.submit("x", "b's", lambda progress, stop: 1, owner="B")
    assert jobs.wait(b).status == "done"
    with pytest.raises(NotYourJob, match="belongs to another session"):
        jobs.cancel(a, by="B")
    assert jobs.get(a).active  # untouched
    jobs.clear_finished(owner="A")  # A has nothing finished: B's finished job stays
    assert [j.owner for j in jobs.jobs()] == ["B", "A"]
    jobs.cancel(a, by="A")
    release.set()
    assert jobs.wait(a).status == "cancelled"
    jobs.clear_finished(owner="B")
    assert [j.owner for j in jobs.jobs()] == ["A"]
    jobs.clear_finished()  # an operator: everyone's
    assert jobs.jobs() == []
    jobs.shutdown()


def test_a_cancel_shows_on_the_job_at_once_and_a_queued_job_ends_without_waiting_for_a_worker():
    jobs = JobManager(max_workers=1)
    release = threading.Event()
    busy = jobs.submit("x", "ignores stop until released", lambda progress, stop: release.wait(60))
    queued = jobs.submit("x", "waits for the one worker", lambda progress, stop: 1)
    assert not jobs.get(busy).cancel_requested and not jobs.get(busy).cancelling
    jobs.cancel(busy)
    view = jobs.get(busy)
    assert view.cancelling and view.active  # asked, and still winding down: every reader of the record sees it
    jobs.cancel(queued)
    assert jobs.get(queued).status == "cancelled" and jobs.get(queued).message == "cancelled before it started"
    release.set()
    ended = jobs.wait(busy)
    assert ended.status == "cancelled" and ended.cancel_requested and not ended.cancelling
    jobs.shutdown()
    assert jobs.result(queued) is None  # the queued job never ran


def _long_run(store: RunStore) -> partial:
    """A sweep task of one DP-SGD run far too long to finish within a test: it trains until stopped."""
    spec = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=400, batch_size=64, accountant="rdp"),
        methods=("dpsgd",),
        epsilons=(3.0,),
        seeds=(0,),
    )
    return partial(tasks.sweep_task, spec=spec, store=store)


def _trainer_pid(store: RunStore) -> int:
    """The pid the store recorded for its one run's trainer (the claim's owner)."""
    (run,) = store.list_runs()
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT pid FROM runs WHERE run_id=?", (run.run_id,)).fetchone()[0]


def test_a_job_in_its_own_process_reports_back_and_its_errors_read_as_in_a_thread():
    jobs = JobManager(max_workers=2)
    good = jobs.submit("x", "pid", job_tasks.report_pid, own_process=True)
    bad = partial(job_tasks.fail, error=ConfigError("epsilon must be > 0"))
    bad_input = jobs.submit("x", "bad", bad, own_process=True)
    crash = jobs.submit("x", "crash", partial(job_tasks.fail, error=ValueError("no such layer")), own_process=True)
    done = jobs.wait(good, timeout=120)
    assert done.status == "done" and done.fraction == 1.0 and done.message == "finished"
    child = jobs.result(good)
    assert child != os.getpid() and not alive(child)  # it ran elsewhere, and that process has ended
    failed, crashed = jobs.wait(bad_input, timeout=120), jobs.wait(crash, timeout=120)
    assert failed.status == "failed" and failed.error == "epsilon must be > 0"  # the same line as from a thread
    assert crashed.status == "failed" and crashed.error == "ValueError: no such layer"
    assert crashed.fraction == 0.25  # its last report came back before its error
    jobs.shutdown()


def test_a_job_process_starts_with_training_loaded_and_the_callers_environment(monkeypatch):
    # forked from a fork server that imported torch and Opacus once, it does not import them again (~6 s); its
    # environment is the caller's at submit time, not the fork server's from when it started
    warm_up()
    monkeypatch.setenv("DPSAT_TEST_MARK", "set after the fork server started")
    jobs = JobManager(max_workers=1)
    job = jobs.submit("x", "start", partial(job_tasks.report_start, name="DPSAT_TEST_MARK"), own_process=True)
    assert jobs.wait(job, timeout=120).status == "done"
    expected_loaded = process_context().get_start_method() == "forkserver"
    assert jobs.result(job) == ("set after the fork server started", expected_loaded)
    jobs.shutdown()


@pytest.mark.skipif("forkserver" not in mp.get_all_start_methods(), reason="processes are spawned here")
def test_a_job_process_starts_its_pool_from_its_own_fork_server_or_a_fresh_one_if_that_is_gone():
    # a second fork server in the job process would import torch and Opacus again before its first worker started
    jobs = JobManager(max_workers=1)
    job = jobs.submit("x", "pool", job_tasks.pool_worker_parent, own_process=True)
    assert jobs.wait(job, timeout=120).status == "done"
    server, workers_parent = jobs.result(job)
    assert workers_parent == server
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job = jobs.submit("x", "gone", partial(job_tasks.pool_worker_parent, server_gone=gone.pid), own_process=True)
    assert jobs.wait(job, timeout=120).status == "done"
    server, workers_parent = jobs.result(job)
    assert workers_parent not in (server, gone.pid)  # a server of its own
    jobs.shutdown()


def test_job_processes_forked_from_one_server_draw_from_global_generators_of_their_own():
    # dpsat draws noise and batches from per-run generators; a global one shared by every fork would repeat its
    # draws in every job, so each process starts its own
    jobs = JobManager(max_workers=2)
    draws = [jobs.submit("x", f"draw {i}", job_tasks.report_global_draws, own_process=True) for i in range(2)]
    first, second = (jobs.wait(job, timeout=120) and jobs.result(job) for job in draws)
    assert first[0] != second[0] and first[1] != second[1]
    jobs.shutdown()


def test_reports_from_a_job_process_are_batched_without_losing_numbers():
    jobs = JobManager(max_workers=1)
    seen: list[dict] = []
    job = jobs.submit("sweep", "reports", job_tasks.many_reports, own_process=True)
    assert wait_for(lambda: seen.append(jobs.get(job).metrics) or "epoch" in seen[-1])
    # as if every report had arrived: run a's numbers gone once run b reports, run b's two reports merged
    assert seen[-1] == {"cell": "b", "loss": 2.0, "epoch": 1} and jobs.get(job).fraction == 0.75
    assert not any("epsilon_spent" in m and m.get("cell") == "b" for m in seen)
    jobs.cancel(job)
    assert jobs.wait(job, timeout=60).status == "cancelled"
    jobs.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_training_runs_in_the_jobs_own_process_and_cancel_stores_the_run_as_cancelled(store):
    jobs = JobManager(max_workers=1)
    job = jobs.submit("sweep", "long run", _long_run(store), own_process=True)
    assert wait_for(lambda: "epoch" in jobs.get(job).message), jobs.get(job)  # training, reported back here
    trainer = _trainer_pid(store)
    assert trainer != os.getpid() and alive(trainer)
    jobs.cancel(job)
    view = jobs.wait(job, timeout=120)
    assert view.status == "cancelled" and 0 < view.fraction < 1
    (run,) = store.list_runs()
    assert run.status == "cancelled" and run.reason.startswith("cancelled at epoch")
    assert not alive(trainer)
    jobs.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_job_process_fails_its_job_with_the_reason():
    jobs = JobManager(max_workers=1)
    job = jobs.submit("x", "waits", job_tasks.wait_for_stop, own_process=True)
    assert wait_for(lambda: "pid" in jobs.get(job).metrics)
    child = jobs.get(job).metrics["pid"]
    os.kill(child, signal.SIGKILL)
    view = jobs.wait(job, timeout=60)
    assert view.status == "failed"
    assert view.error == "its process ended unexpectedly (killed by SIGKILL); finished runs are kept"
    assert not alive(child)  # reaped, not a zombie
    jobs.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_server_leaves_no_training_process_and_its_run_is_stored_as_cancelled(store, tmp_path):
    # a stand-in for the dashboard's server: a process with a job manager training in a job process
    server = (
        "import sys, time, functools\n"
        "from dpsat_core import RunStore, SweepSpec, TrainConfig, tasks\n"
        "from dpsat_core.jobs import JobManager\n"
        "spec = SweepSpec(base=TrainConfig(dataset='breast_cancer', epochs=400, batch_size=64, accountant='rdp'),"
        " methods=('dpsgd',), epsilons=(3.0,), seeds=(0,))\n"
        "task = functools.partial(tasks.sweep_task, spec=spec, store=RunStore(sys.argv[1]))\n"
        "JobManager().submit('sweep', 'long run', task, own_process=True)\n"
        "time.sleep(600)\n"
    )
    err = open(tmp_path / "server.err", "w+")  # noqa: SIM115 - a file, not a pipe an orphan could hold open
    process = subprocess.Popen([sys.executable, "-c", server, str(store.path)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_for(lambda: process.poll() is None and store.list_runs(status="running")), err.read()
        trainer = _trainer_pid(store)
        assert trainer != process.pid and alive(trainer)
    finally:
        process.kill()  # SIGKILL: the server cannot clean up anything itself
        process.wait(timeout=60)
    assert wait_for(lambda: not alive(trainer), timeout=60)
    (run,) = store.list_runs()
    assert run.status == "cancelled"  # the job process stopped its run and stored it before it exited


def test_two_asks_for_the_same_analyses_compute_each_pair_once():
    jobs = JobManager(max_workers=2)
    release, done = threading.Event(), []

    def task(part):
        def fn(progress, stop):
            release.wait(30)
            done.extend(part)

        return fn

    label = lambda part: f"{len(part)} pairs"  # noqa: E731
    first = jobs.submit_new_work("analysis", label, task, [("a", "hessian"), ("b", "hessian")])
    assert jobs.pending_work() == {("a", "hessian"), ("b", "hessian")}
    # a second tab asks while the first job waits: only the pair nobody covers is taken, and none twice
    assert jobs.submit_new_work("analysis", label, task, [("b", "hessian"), ("a", "hessian")]) is None
    second = jobs.submit_new_work("analysis", label, task, [("b", "hessian"), ("b", "noise")])
    assert jobs.get(second).work == {("b", "noise")} and jobs.get(second).label == "1 pairs"
    release.set()
    assert {jobs.wait(j, timeout=30).status for j in (first, second)} == {"done"}
    assert sorted(done) == [("a", "hessian"), ("b", "hessian"), ("b", "noise")]  # each pair computed once
    assert jobs.pending_work() == frozenset()  # finished jobs cover nothing: a new ask is taken again
    again = jobs.submit_new_work("analysis", label, task, [("a", "hessian")])
    assert again is not None and jobs.wait(again, timeout=30).status == "done"
    jobs.shutdown()
