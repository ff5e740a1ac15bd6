"""dpsat_core.serve and the packaging it relies on: options, command line, a real start, Ctrl-C, the wheel."""

import email
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from dpsat_core import serve
from dpsat_core.errors import DpsatError
from dpsat_core.serve import SERVER_OPTIONS, app_path, streamlit_command
from tests.servers import running_dashboard

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIRS = ("dpsat_core", "dashboard", "pages")
# Left out of the copy that the wheel is built from: VCS data, build outputs, local stores and uploads.
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.db*", "out", "dpsat_uploads", ".dpsat"
)


def flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_config_toml_matches_server_options():
    with open(ROOT / ".streamlit" / "config.toml", "rb") as f:
        assert flatten(tomllib.load(f)) == SERVER_OPTIONS


def test_streamlit_command_passes_every_option_and_an_existing_app():
    command = streamlit_command(port=8765, address="0.0.0.0")
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    app = Path(command[4])
    assert app == app_path() and app.name == "app.py" and app.is_file()
    assert (app.parent.parent / "pages" / "overview.py").is_file()  # app.py finds pages/ beside dashboard/
    flags = command[5:]
    assert "--server.headless=true" in flags
    assert "--browser.gatherUsageStats=false" in flags
    for key, value in SERVER_OPTIONS.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        assert f"--{key}={text}" in flags
    assert "--server.address=0.0.0.0" in flags and "--server.port=8765" in flags
    assert not any(f.startswith("--server.port") for f in streamlit_command())


def test_app_path_explains_a_missing_dashboard(monkeypatch):
    monkeypatch.setattr(serve.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DpsatError, match="pip install"):
        app_path()


def test_dashboard_serves_health_from_another_directory(tmp_path):
    with running_dashboard(tmp_path) as url:
        assert urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).read() == b"ok"


@contextmanager
def launcher(child: str, *, ask: Optional[float] = None) -> Iterator[subprocess.Popen]:
    """`serve.launch()` in a session of its own, its server a stand-in running the Python code `child` (and its
    wait `ask` seconds before passing a Ctrl-C on); the whole group is killed afterwards, whatever the test did."""
    script = (
        "import sys; from dpsat_core import serve\n"
        + ("" if ask is None else f"serve.ASK_SECONDS = {ask}\n")
        + f"serve.streamlit_command = lambda **_: [sys.executable, '-c', {child!r}]\n"
        + "raise SystemExit(serve.launch())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,  # imports this checkout's dpsat_core, installed or not
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # CI shells may start us with it ignored
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close(), proc.stderr.close()


def test_a_stopping_server_is_given_longer_than_its_jobs_take_to_store_their_runs():
    from dpsat_core.job_process import JOIN_SECONDS

    assert serve.ASK_SECONDS < serve.STOP_SECONDS and serve.STOP_SECONDS > JOIN_SECONDS + 5


def test_launch_returns_the_exit_code_and_130_after_ctrl_c(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "streamlit_command", lambda **_: [sys.executable, "-c", "raise SystemExit(3)"])
    assert serve.launch() == 3
    # Ctrl-C in a terminal signals the whole process group: launch() and the Streamlit child alike.
    with launcher("import signal; print('ready', flush=True); signal.pause()") as proc:
        assert proc.stdout.readline() == b"ready\n"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130


def test_terminating_the_launcher_stops_the_server_too(tmp_path):
    # `kill PID` reaches the launcher only (not its group): it must pass the signal on, leaving no orphan
    with launcher("import os, signal; print(os.getpid(), flush=True); signal.pause()") as proc:
        child = int(proc.stdout.readline())
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # as a shell reports a process killed by TERM
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)


def test_a_ctrl_c_sent_to_the_launcher_alone_asks_the_server_to_stop_instead_of_killing_it(tmp_path):
    # `kill -INT PID` reaches the launcher only: after ASK_SECONDS the server gets SIGTERM (a clean stop that cancels
    # its jobs), where it used to be killed (its resource tracker then warned of leaked semaphores)
    child = (
        "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(print('term', flush=True)));"
        " print('ready', flush=True); signal.pause()"
    )
    with launcher(child, ask=0.5) as proc:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stdout.read() == b"term\n"


def test_a_second_ctrl_c_to_the_launcher_stops_the_server_at_once_and_leaves_none(tmp_path):
    # a server slow to stop (it ignores SIGINT, and SIGTERM too here): the second Ctrl-C kills it, quietly
    child = (
        "import os, signal; [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)];"
        " print(os.getpid(), flush=True); signal.pause()"
    )
    with launcher(child, ask=0.3) as proc:
        server = int(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)  # past ASK_SECONDS: the server was sent SIGTERM, which it ignores
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert b"Traceback" not in proc.stderr.read()
        with pytest.raises(ProcessLookupError):
            os.kill(server, 0)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built offline with the installed setuptools from a copy of the checkout (bench/ and tests/ included)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    out = tmp / "out"
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(out)], cwd=src, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, "wheel build failed (setuptools from requirements-dev.txt?):\n" + done.stderr[-3000:]
    with zipfile.ZipFile(out / done.stdout.strip().splitlines()[-1]) as whl:
        yield whl


def test_wheel_ships_exactly_the_library_dashboard_and_pages(wheel):
    shipped = {n for n in wheel.namelist() if ".dist-info/" not in n}
    expected = {p.relative_to(ROOT).as_posix() for d in SHIPPED_DIRS for p in (ROOT / d).rglob("*.py")}
    assert shipped == expected
    assert {"dashboard/app.py", "pages/overview.py", "dpsat_core/serve.py", "dpsat_core/data/__init__.py"} <= shipped


def test_wheel_declares_requirements_txt_and_the_console_script(wheel):
    info = {n.split("/")[-1]: n for n in wheel.namelist() if ".dist-info/" in n}
    metadata = email.message_from_bytes(wheel.read(info["METADATA"]))
    pins = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == pins
    # the optional Ray executor is an extra, from requirements-ray.txt: `pip install "dpsat-lab[ray]"`
    assert [r for r in requires if "extra ==" in r] == ['ray[client]==2.60.0; extra == "ray"']
    assert metadata.get_all("Provides-Extra") == ["ray"]
    assert "platformdirs==4.14.8" in pins
    scripts = wheel.read(info["entry_points.txt"]).decode()
    assert "dpsat = dpsat_core.cli:main_entry" in scripts.splitlines()


def test_processes_the_server_starts_do_not_run_the_app(monkeypatch):
    # multiprocessing imports the server's main module (app.py) again in each job process and sweep worker, as
    # `__mp_main__`: there it must draw nothing (it used to draw the whole Overview in bare mode first)
    import runpy

    import streamlit as st

    drawn = []
    monkeypatch.setattr(st, "set_page_config", lambda *a, **k: drawn.append("page"))
    namespace = runpy.run_path(str(app_path()), run_name="__mp_main__")
    assert drawn == [] and callable(namespace["main"])
