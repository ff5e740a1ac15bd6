"""One job in a process of its own, so the process that shows it (the dashboard's server) cannot slow it.

`run_in_process(fn, on_progress, should_stop)` behaves like `fn(on_progress,
should_stop)` called here: progress comes back through a pipe, `should_stop` is
polled here and passed on as an event, and the job's end is raised here as it
ended there (`Cancelled`, or `JobFailed` carrying the one-line message the
thread runner would have shown). `fn` must pickle: a module-level function, or a
`functools.partial` of one (`dpsat_core.tasks`). The child dies with its parent
(`workers.die_with_parent`): a killed server leaves no training process behind,
and the run it was training is stored as cancelled.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional

from .errors import DpsatError
from .progress import Cancelled, Progress, ProgressFn, StopFn
from .workers import process_context, warm_up

POLL_SECONDS = 0.25  # how often the parent passes a cancel on while no report arrives
REPORT_SECONDS = 0.1  # training reports every step: the child sends at most ~10 reports a second
JOIN_SECONDS = 30.0  # the longest the parent waits for a stopped child to store its run and exit before killing it


class JobFailed(DpsatError):
    """The job raised in its process, or its process ended without an outcome; the message is the one to show."""


def run_in_process(fn: Callable[[ProgressFn, StopFn], Any], on_progress: ProgressFn, should_stop: StopFn) -> Any:
    """Run `fn` in a new process (`workers.process_context`) and return its result; raise `Cancelled` or `JobFailed`
    as it ended."""
    context = process_context()
    warm_up()  # its fork server, if not started yet, with SIGINT blocked (a Ctrl-C while it imports: no traceback)
    reader, writer = context.Pipe(duplex=False)
    stop = context.Event()
    args = (fn, os.getpid(), dict(os.environ), writer, stop)
    child = context.Process(target=_child_main, args=args, name="dpsat-job")
    child.start()
    writer.close()  # the child holds the only writer: end of file here once it exits
    outcome: Optional[tuple[str, Any]] = None
    try:
        while outcome is None:
            if should_stop() and not stop.is_set():
                stop.set()
            if wait([reader], timeout=POLL_SECONDS):  # a report, the outcome, or end of file: the child is gone
                outcome = _drain(reader, child, on_progress)
    finally:
        _end(child, stop)
        reader.close()
    kind, payload = outcome
    if kind == "cancelled":
        raise Cancelled()
    if kind == "failed":
        raise JobFailed(payload)
    return payload


def _drain(reader: Connection, child: mp.Process, on_progress: ProgressFn) -> Optional[tuple[str, Any]]:
    """Pass on every report waiting in the pipe; the outcome if it came (it is the child's last message)."""
    while reader.poll():
        try:
            kind, payload = reader.recv()
        except EOFError:  # it exited without an outcome: killed, out of memory, or a crash in the interpreter
            how = _how_it_ended(child)
            raise JobFailed(f"its process ended unexpectedly ({how}); finished runs are kept") from None
        if kind != "progress":
            return kind, payload
        on_progress(payload)
    return None


def _how_it_ended(child: mp.Process) -> str:
    child.join(JOIN_SECONDS)
    code = child.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _end(child: mp.Process, stop: Any) -> None:
    """Let the child exit (after its outcome it is on its way out); one still running because this side failed is
    stopped, given time to store its run as cancelled, then killed."""
    if child.is_alive():
        stop.set()
        child.join(JOIN_SECONDS)
    if child.is_alive():
        child.kill()
        child.join()
    child.close()


class _Reports:
    """The child's progress callback: sends a report at most every REPORT_SECONDS (a thread sends one held back
    that long), merging the reports in between as the job manager merges them (one run's metrics accumulate; a
    new sweep cell starts afresh)."""

    def __init__(self, writer: Connection):
        self._writer = writer
        self._pending: Optional[Progress] = None
        self._sent = 0.0
        self._lock = threading.Lock()  # the job's thread and the late sender share the pipe
        threading.Thread(target=self._send_late, name="dpsat-job-reports", daemon=True).start()

    def __call__(self, report: Progress) -> None:
        with self._lock:
            pending = self._pending
            if pending is not None and report.metrics.get("cell") != pending.metrics.get("cell"):
                self._flush()
            elif pending is not None:
                newer = {k: v for k, v in report.metrics.items() if v is not None}
                report = dataclasses.replace(report, metrics={**pending.metrics, **newer})
            self._pending = report
            if time.monotonic() - self._sent >= REPORT_SECONDS:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._pending is not None:
            _send(self._writer, ("progress", self._pending))
            self._pending, self._sent = None, time.monotonic()

    def _send_late(self) -> None:
        while True:
            time.sleep(REPORT_SECONDS)
            self.flush()


def _send(writer: Connection, message: tuple[str, Any]) -> None:
    """Send to the parent; a parent gone (the pipe closed) must never fail the job: it stops through `stopping()`."""
    try:
        writer.send(message)
    except OSError:
        pass


def _child_main(
    fn: Callable[[ProgressFn, StopFn], Any], parent_pid: int, environment: dict, writer: Connection, stop: Any
) -> None:
    """The job process: the parent's environment, die with the parent, run `fn`, send its reports, its outcome."""
    from .workers import start_child, stopping, training

    start_child(parent_pid, environment)
    reports = _Reports(writer)
    try:
        with training():  # a parent that dies meanwhile: the run stops, is stored as cancelled, then we exit
            result = fn(reports, lambda: stop.is_set() or stopping())
        outcome: tuple[str, Any] = ("done", result)
    except Cancelled:
        outcome = ("cancelled", None)
    except DpsatError as exc:
        outcome = ("failed", str(exc))
    except Exception as exc:  # the traceback goes to the server's log (our stderr is the server's)
        traceback.print_exc()
        outcome = ("failed", f"{type(exc).__name__}: {exc}")
    reports.flush()
    try:
        _send(writer, outcome)
    except Exception as exc:  # a result that does not pickle
        why = f"{type(exc).__name__}: {exc}"
        _send(writer, ("failed", f"the job finished but its result could not be sent back ({why})"))
    writer.close()
