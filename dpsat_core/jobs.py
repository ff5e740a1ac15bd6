"""Background jobs: a thread pool that runs training, sweeps and analyses and keeps their progress.

No UI code here: a job is a function `(on_progress, should_stop) -> result`; the
dashboard polls `JobManager.jobs()` and draws what it finds. A job submitted with
`own_process=True` runs in a spawned process of its own (`job_process`), its
thread here only passing progress and cancel on, so what the server does
meanwhile (every tab's reruns) cannot slow it; the pages submit all their
training and analyses that way. A job belongs to the
session that submitted it (`owner`): every session sees every job, but only its
owner cancels or clears it (`owner=None` in `cancel`/`clear_finished` acts for an
operator, on all jobs).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional, Sequence

from .errors import DpsatError
from .progress import Cancelled, Progress, ProgressFn, StopFn

JobFn = Callable[[ProgressFn, StopFn], Any]
FINISHED = ("done", "failed", "cancelled")
Work = frozenset[tuple[str, str]]  # the (run id, analysis kind) pairs a job computes
WorkList = Sequence[tuple[str, str]]  # the same, in the order a job computes them


@dataclass(frozen=True, kw_only=True)
class JobView:
    """An immutable snapshot of a job for drawing."""

    job_id: str
    kind: str
    label: str
    owner: str
    status: str
    fraction: float
    message: str
    metrics: dict[str, Any]
    error: str
    created: float
    finished: Optional[float]
    cancel_requested: bool  # Cancel was clicked (in any session), whether or not the job has ended since
    work: Work = frozenset()

    @property
    def active(self) -> bool:
        return self.status not in FINISHED

    @property
    def cancelling(self) -> bool:
        """Cancel was asked for and the job is still winding down (storing its run as cancelled)."""
        return self.active and self.cancel_requested


class NotYourJob(DpsatError):
    """A session tried to cancel a job another session submitted."""


@dataclass
class _Job:
    job_id: str
    kind: str
    label: str
    owner: str = ""
    status: str = "queued"
    fraction: float = 0.0
    message: str = "waiting for a worker"
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    result: Any = None
    created: float = field(default_factory=time.time)
    finished: Optional[float] = None
    stop: threading.Event = field(default_factory=threading.Event)
    work: Work = frozenset()

    def view(self) -> JobView:
        return JobView(
            job_id=self.job_id,
            kind=self.kind,
            label=self.label,
            owner=self.owner,
            status=self.status,
            fraction=self.fraction,
            message=self.message,
            metrics=dict(self.metrics),
            error=self.error,
            created=self.created,
            finished=self.finished,
            cancel_requested=self.stop.is_set(),
            work=self.work,
        )


class JobManager:
    """Runs jobs on `max_workers` threads; safe to share between sessions and reruns."""

    def __init__(self, max_workers: int = 2):
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dpsat-job")
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # `submit_new_work`: the check and the submit as one step

    def submit(
        self, kind: str, label: str, fn: JobFn, *, owner: str = "", own_process: bool = False, work: Work = frozenset()
    ) -> str:
        """Queue `fn` as a job of `owner` (a session id; '' for scripts) and return its id; `own_process`: run it
        in a spawned process of its own (`fn` must pickle: a module-level function or a `functools.partial` of
        one), which dies with this one. `work`: the (run id, analysis kind) pairs it computes (`pending_work`)."""
        if own_process:
            from .job_process import run_in_process

            fn = partial(run_in_process, fn)
        job = _Job(uuid.uuid4().hex[:10], kind, label, owner, work=frozenset(work))
        with self._lock:
            self._jobs[job.job_id] = job
        self._executor.submit(self._run, job, fn)
        return job.job_id

    def submit_new_work(
        self,
        kind: str,
        label: Callable[[WorkList], str],
        fn: Callable[[WorkList], JobFn],
        work: WorkList,
        **options: Any,
    ) -> Optional[str]:
        """Submit a job for the part of `work` that no queued or running job covers (`fn(part)`, labelled
        `label(part)`), checked and submitted as one step so two clicks (two tabs) never both take a pair; None
        when nothing is left."""
        with self._submit_lock:
            pending = self.pending_work()
            new = [pair for pair in dict.fromkeys(work) if pair not in pending]
            return self.submit(kind, label(new), fn(new), work=frozenset(new), **options) if new else None

    def pending_work(self) -> Work:
        """The (run id, analysis kind) pairs that queued or running jobs, not being cancelled, will compute."""
        with self._lock:
            live = [j.work for j in self._jobs.values() if j.status not in FINISHED and not j.stop.is_set()]
        return frozenset().union(*live)

    def _run(self, job: _Job, fn: JobFn) -> None:
        with self._lock:  # `cancel` ends a queued job at once: it and this start never both happen
            if job.status != "queued":
                return
            job.status, job.message = "running", "starting"

        def report(p: Progress) -> None:
            job.fraction, job.message = p.fraction, p.message
            if p.metrics.get("cell") != job.metrics.get("cell"):  # a new run of a sweep: its own numbers only
                job.metrics = {}
            job.metrics.update({k: v for k, v in p.metrics.items() if v is not None})

        try:
            job.result = fn(report, job.stop.is_set)
            cancelled = job.stop.is_set() or getattr(job.result, "cancelled", False)
            job.status = "cancelled" if cancelled else "done"
            job.fraction = job.fraction if cancelled else 1.0
            job.message = "cancelled; finished results are kept" if cancelled else "finished"
            job.metrics = {}  # the last run's numbers are not the job's
        except Cancelled:
            job.status, job.message = "cancelled", "cancelled; finished results are kept"
        except DpsatError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # shown in the UI; the traceback goes to the server log
            traceback.print_exc()
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.time()

    def cancel(self, job_id: str, *, by: Optional[str] = None) -> None:
        """Ask a job to stop; `by` (a session id) must own it (`NotYourJob` otherwise); None: any job."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return
        if by is not None and job.owner != by:
            raise NotYourJob(
                f"job {job.label!r} belongs to another session: only that session (or an operator) may cancel it"
            )
        with self._lock:
            job.stop.set()
            if job.status == "queued":  # waiting for a worker: it ends now, not when a worker frees
                job.status, job.finished, job.message = "cancelled", time.time(), "cancelled before it started"

    def jobs(self) -> list[JobView]:
        """All jobs, newest first (by submission order: clock stamps can tie)."""
        with self._lock:
            return [j.view() for j in reversed(self._jobs.values())]

    def get(self, job_id: str) -> JobView:
        with self._lock:
            return self._jobs[job_id].view()

    def result(self, job_id: str) -> Any:
        with self._lock:
            return self._jobs[job_id].result

    def clear_finished(self, *, owner: Optional[str] = None) -> None:
        """Forget the finished jobs of `owner` (a session id); None: everyone's."""
        with self._lock:
            self._jobs = {
                k: j
                for k, j in self._jobs.items()
                if j.status not in FINISHED or (owner is not None and j.owner != owner)
            }

    def wait(self, job_id: str, timeout: float = 600.0) -> JobView:
        """Block until the job ends (for scripts and tests)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            view = self.get(job_id)
            if not view.active:
                return view
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still running after {timeout} s")

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
