"""The dashboard as `dpsat dashboard` starts it, on a free loopback port, for tests that need a live server."""

from __future__ import annotations

import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dpsat_core.serve import streamlit_command, wait_until_healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_dashboard(folder: Path, *, timeout: float = 90) -> Iterator[str]:
    """Start the app from `folder` (its store there too), wait until `/_stcore/health` says ok, yield its URL,
    then stop it; a server that never answers, or writes a traceback, fails with its stderr."""
    port = free_port()
    env = {**os.environ, "DPSAT_STORE": str(folder / "runs.db")}
    log = folder / "server.log"  # a file, not a pipe: a full pipe would block the server
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            streamlit_command(port=port), cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_healthy(url, proc, timeout=timeout, poll=0.2):
            raise AssertionError(f"streamlit did not serve (exit {proc.poll()}): {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if "Traceback" in log.read_text():
        raise AssertionError(log.read_text()[-2000:])
