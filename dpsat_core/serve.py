"""Launch the dashboard as a Streamlit subprocess, so the library never imports the UI."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .errors import DpsatError

# Passed on every launch (and mirrored in .streamlit/config.toml, which Streamlit reads only from the
# working directory), so the app behaves the same when started from anywhere.
SERVER_OPTIONS: dict[str, Any] = {
    "server.headless": True,
    "browser.gatherUsageStats": False,  # else the page fetches data.streamlit.io: 3 console errors offline
    "server.maxUploadSize": 50,
    "theme.base": "light",
    "client.toolbarMode": "minimal",  # no "Deploy" button: this app is not deployed to Streamlit's cloud
    # no full garbage collection after every script run: with torch loaded it takes ~250 ms and holds the
    # GIL, so each 1 s job-panel refresh in every open tab stalled the training thread
    "runner.postScriptGC": False,
}
# Added by `dpsat dashboard --production` (the Docker image's command): users see a generic message instead of
# exception details and tracebacks (these go to the server's log), and no file watcher reruns edited code.
PRODUCTION_OPTIONS: dict[str, Any] = {
    "client.showErrorDetails": "none",
    "server.fileWatcherType": "none",
}


# After a Ctrl-C, how long the launcher waits for a server that the terminal's SIGINT reached before it passes the
# request on itself (a `kill -INT` of the launcher alone reached only the launcher)
ASK_SECONDS = 10.0
# How long a server asked to stop may take before it is killed: it waits up to `job_process.JOIN_SECONDS` (30 s) for
# a cancelled job to store its run and exit (tests/test_serve.py keeps the two in order)
STOP_SECONDS = 40.0


_UNSET = object()  # no SIGTERM handler installed yet


class DashboardNotFound(DpsatError):
    """The `dashboard` package (shipped with dpsat-lab) cannot be found on this Python's path."""


def app_path() -> Path:
    """Path of the dashboard's `app.py`, located without importing the dashboard (or Streamlit)."""
    spec = importlib.util.find_spec("dashboard")
    if spec is None or spec.origin is None:
        raise DashboardNotFound(
            "the dpsat-lab dashboard is not installed for this Python "
            f"({sys.executable}); run `pip install -e .` in the repository, or `pip install dpsat-lab`"
        )
    app = Path(spec.origin).parent / "app.py"
    if not app.is_file():
        raise DashboardNotFound(
            f"found the dashboard package at {app.parent}, but no app.py in it; reinstall dpsat-lab"
        )
    return app


def wait_until_healthy(url: str, process: subprocess.Popen, *, timeout: float, poll: float = 0.1) -> bool:
    """Poll the server at `url` until `/_stcore/health` says ok (True), or `process` exits or `timeout` passes."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return True
        except OSError:
            time.sleep(poll)
    return False


def _flag(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def streamlit_command(*, port: Optional[int] = None, address: str = "127.0.0.1", production: bool = False) -> list[str]:
    """The `python -m streamlit run …/app.py --key=value …` command line for SERVER_OPTIONS (and
    PRODUCTION_OPTIONS when `production`), address and port."""
    options = {**SERVER_OPTIONS, **(PRODUCTION_OPTIONS if production else {})}
    command = [sys.executable, "-m", "streamlit", "run", str(app_path())]
    command += [f"--{key}={_flag(value)}" for key, value in options.items()]
    command.append(f"--server.address={address}")
    if port is not None:
        command.append(f"--server.port={port}")
    return command


def _stop(process: subprocess.Popen) -> None:
    """`kill PID` of the launcher stops the server too (no orphan); a server still busy finishing a
    background job after `STOP_SECONDS` is killed."""
    process.terminate()
    timer = threading.Timer(STOP_SECONDS, lambda: process.poll() is None and process.kill())
    timer.daemon = True  # never keeps the launcher alive once the server has gone
    timer.start()


def launch(*, port: Optional[int] = None, address: str = "127.0.0.1", production: bool = False) -> int:
    """Run the dashboard until it stops; return Streamlit's exit code (130 after Ctrl-C, 143 after `kill`)."""
    command = streamlit_command(port=port, address=address, production=production)
    with subprocess.Popen(command) as process:
        previous: Any = _UNSET
        try:
            previous = signal.signal(signal.SIGTERM, lambda *_: _stop(process))
            code = process.wait()
            return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
        except KeyboardInterrupt:
            # A terminal's Ctrl-C reached Streamlit too: let it shut down (cancelling its jobs) before returning. A
            # `kill -INT` of this process alone did not reach it: still running after ASK_SECONDS, it is asked to
            # stop (a killed server would leave its job's queue to the resource tracker's "leaked semaphore" warning).
            try:
                try:
                    process.wait(timeout=ASK_SECONDS)
                except subprocess.TimeoutExpired:
                    _stop(process)
                    process.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: the server is killed below (its jobs' processes with it)
                pass
            return 130
        finally:
            if process.poll() is None:  # never leave the server behind: Popen's exit would not wait for it here
                process.kill()
                process.wait()
            if previous is not _UNSET:
                signal.signal(signal.SIGTERM, previous)
