import threading
import time

import pytest

from dpsat_core import ConfigError, Progress
from dpsat_core.jobs import JobManager, NotYourJob
from dpsat_core.progress import check_stop


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
