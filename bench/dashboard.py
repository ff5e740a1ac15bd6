"""The one-click comparison's grid in the real dashboard (Chromium, 1 and 4 tabs open) against the same grid as a
CLI sweep.

    python bench/dashboard.py [--json] [--epochs 5] [--passes 3] [--idle-seconds 20]

Each pass runs, each on a fresh store and in an order rotated from pass to pass
(CLI, 1 tab, 4 tabs; then 1 tab, 4 tabs, CLI; ...): the grid of
`default_comparison("digits")` (its methods, ε values and seeds; `--epochs` per
run, 5 as the button trains) as `dpsat sweep` (its default 2 workers; wall time of
the whole command, imports included); the same grid started from Train & sweep
(the same `start_sweep` job the Overview's button starts, without the analyses that
follow it) in a new server with one tab open, and with four (three more tabs opened
on the Overview once the job runs, so each refreshes its job panel); the
dashboard's time runs from the click to the last of its runs stored as done. Each
timing also records the CPU cores each process group used meanwhile (`cores`:
server, job process, pool workers; the CLI and its workers; Chromium's renderers
and the rest of the browser), sampled from /proc. The top-level keys are medians
over the passes (the ratios: medians of each pass's own ratio); `passes` holds
every pass with the load average at its end. Once: a cold server to the
Overview's title (`first_page_seconds`) and the server's CPU use with one tab and
no job for `--idle-seconds` (`idle_cpu_cores`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.browser import TITLE, cold_title_seconds, launch_chromium, served  # noqa: E402
from bench.processes import Sampler, cpu_seconds, tree_groups  # noqa: E402
from dpsat_core.methods import METHODS  # noqa: E402
from dpsat_core.sweeps import SweepSpec, default_comparison  # noqa: E402

ORDER = ("cli", "tab1", "tab4")


def done_runs(store: Path) -> int:
    try:
        with sqlite3.connect(store, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def grid(epochs: int) -> SweepSpec:
    """The default comparison's grid at `epochs` epochs a run."""
    spec = default_comparison("digits")
    return dataclasses.replace(spec, base=dataclasses.replace(spec.base, epochs=epochs))


def cli_sweep(store: Path, spec: SweepSpec) -> tuple[float, dict]:
    """Wall seconds of `dpsat sweep` over `spec`'s grid, and the cores its processes used."""
    command = [sys.executable, "-m", "dpsat_core", "sweep", "--dataset", "digits", "--store", str(store)]
    command += ["--methods", ",".join(spec.methods), "--epsilons", ",".join(f"{e:g}" for e in spec.epsilons)]
    command += ["--seeds", ",".join(map(str, spec.seeds)), "--epochs", str(spec.base.epochs), "--json"]
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with Sampler(tree_groups(proc.pid, ("cli", "pool workers"))) as sampler:
        _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"dpsat sweep failed: {err.decode()[-2000:]}")
    return time.perf_counter() - start, sampler.cores()


def dashboard_sweep(browser, store: Path, tabs: int, spec: SweepSpec) -> tuple[float, dict]:
    """Seconds from clicking Start training (`spec`'s grid) to all its runs stored, with `tabs` tabs open, and the
    cores each process group used meanwhile."""
    from playwright.sync_api import expect

    cells = len(spec.cells())
    with served(store) as (url, server):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        first = context.new_page()
        first.goto(url)
        expect(first.get_by_text(TITLE)).to_be_visible(timeout=120_000)
        first.get_by_role("link", name="Train & sweep").click()
        expect(first.get_by_role("heading", name="Train & sweep")).to_be_visible(timeout=120_000)
        for name, info in METHODS.items():
            if info.private != (name in spec.methods):  # private methods start ticked
                first.get_by_text(info.label, exact=True).click()
        for label, value in (
            ("Target ε values (comma-separated)", ", ".join(f"{e:g}" for e in spec.epsilons)),
            ("Seeds (comma-separated)", ", ".join(map(str, spec.seeds))),
            ("Epochs", str(spec.base.epochs)),
        ):
            field = first.get_by_label(label)
            field.fill(value)
            field.press("Enter")
            expect(field).to_have_value(value)
        with Sampler(tree_groups(server.pid, ("server", "job process", "pool workers"))) as sampler:
            start = time.perf_counter()
            first.get_by_role("button", name="Start training").click()
            expect(first.get_by_text(f"Started {cells} runs")).to_be_visible(timeout=120_000)
            for _ in range(tabs - 1):  # opened while the job runs: their job panels refresh every second
                context.new_page().goto(url)
            while done_runs(store) < cells:
                time.sleep(0.25)
            seconds = time.perf_counter() - start
        context.close()
    return seconds, sampler.cores()


def idle_cores(browser, store: Path, seconds: float) -> float:
    """CPU cores the server uses with one Overview tab open and no job, after the page has settled."""
    from playwright.sync_api import expect

    with served(store) as (url, proc):
        page = browser.new_page()
        page.goto(url)
        expect(page.get_by_text(TITLE)).to_be_visible(timeout=120_000)
        time.sleep(3)
        before, start = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        cores = (cpu_seconds(proc.pid) - before) / (time.perf_counter() - start)
        page.close()
    return cores


def one_pass(browser, root: Path, spec: SweepSpec, index: int) -> dict:
    """The CLI sweep and the dashboard with 1 and 4 tabs, in ORDER rotated by `index`, each on a fresh store."""
    order = ORDER[index % 3 :] + ORDER[: index % 3]
    seconds, cores = {}, {}
    for name in order:
        store = root / f"{name}-{index}" / "runs.db"
        store.parent.mkdir()
        if name == "cli":
            seconds[name], cores[name] = cli_sweep(store, spec)
        else:
            seconds[name], cores[name] = dashboard_sweep(browser, store, int(name[3:]), spec)
    return {
        "order": list(order),
        "cli_seconds": round(seconds["cli"], 2),
        "dashboard_1tab_seconds": round(seconds["tab1"], 2),
        "dashboard_4tabs_seconds": round(seconds["tab4"], 2),
        "dashboard_over_cli": round(seconds["tab4"] / seconds["cli"], 3),
        "dashboard_over_cli_1tab": round(seconds["tab1"] / seconds["cli"], 3),
        "cores": cores,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs a run (the button trains 5)")
    parser.add_argument("--passes", type=int, default=1, help="CLI / 1 tab / 4 tabs trios, order rotated")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error(f"--passes must be >= 1, got {args.passes}")
    from playwright.sync_api import sync_playwright

    spec = grid(args.epochs)
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as p:
        root = Path(folder)
        for name in ("cold", "idle"):
            (root / name).mkdir()
        browser = launch_chromium(p)
        first_page = cold_title_seconds(browser, root / "cold" / "runs.db")
        passes = [one_pass(browser, root, spec, i) for i in range(args.passes)]
        idle = idle_cores(browser, root / "idle" / "runs.db", args.idle_seconds)
        browser.close()
    medians = {
        key: round(statistics.median(p[key] for p in passes), 3)
        for key in passes[0]
        if key.endswith("seconds") or key.startswith("dashboard_over")
    }
    report = {
        "runs": len(spec.cells()),
        "epochs": args.epochs,
        **medians,
        "first_page_seconds": round(first_page, 2),
        "idle_cpu_cores": round(idle, 3),
        "load_average": os.getloadavg(),
        "passes": passes,
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
