"""The dashboard served as `dpsat dashboard` serves it, and Chromium driving it: shared by the browser benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpsat_core.export import find_chromium  # noqa: E402
from dpsat_core.serve import streamlit_command, wait_until_healthy  # noqa: E402

TITLE = "Do flat minima help under differential privacy?"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(
    store: Path, *, app: Optional[Path] = None, port: Optional[int] = None, timeout: float = 120
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server (the dashboard, or `app`) on `store` (on `port`, else a free one) and yield (url, process) once
    `/_stcore/health` is ok."""
    port = port or free_port()
    command = streamlit_command(port=port)
    if app is not None:
        command[4] = str(app)  # `python -m streamlit run <app> …`: the same options for a reference app
    env = {**os.environ, "DPSAT_STORE": str(store)}
    log = store.parent / f"server-{port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(command, cwd=store.parent, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_healthy(url, proc, timeout=timeout, poll=0.05):
            raise RuntimeError(f"streamlit did not serve: {log.read_text()[-2000:]}")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # still finishing a background job: stop it
            proc.kill()
            proc.wait(timeout=20)


def launch_chromium(playwright):
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium on PATH or BROWSER_PATH (Debian: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def cold_title_seconds(
    browser, store: Path, *, title: str = TITLE, app: Optional[Path] = None, context=None, port: Optional[int] = None
) -> float:
    """Seconds from starting a new server process to `title` visible in a new Chromium tab: of a fresh browser
    context (nothing cached), or of `context` on a fixed `port`, where a returning user's browser has Streamlit's
    hashed bundles cached from an earlier visit to the same address."""
    from playwright.sync_api import expect

    page = (context or browser).new_page()
    start = time.perf_counter()
    with served(store, app=app, port=port) as (url, _):
        page.goto(url)
        expect(page.get_by_text(title)).to_be_visible(timeout=120_000)
        seconds = time.perf_counter() - start
        page.close()
    return seconds
