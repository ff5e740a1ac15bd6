"""The one-click comparison's grid in the real dashboard (Chromium, 1 and 4 tabs open) against the same grid as a
CLI sweep.

    python bench/dashboard.py [--json] [--epochs 5] [--idle-seconds 20]

In one run, each on a fresh store: the grid of `default_comparison("digits")` (its
methods, ε values and seeds; `--epochs` per run, 5 as the button trains) as
`dpsat sweep` (its default 2 workers; wall time of the whole command, imports
included); the same grid started from Train & sweep (the same `start_sweep` job the
Overview's button starts, without the analyses that follow it) in a new server with
one tab open, then with four (three more tabs opened on the Overview once the job
runs, so each refreshes its job panel); the dashboard's time runs from the click to
the last of its runs stored as done. Also: a cold server to the Overview's title
(`first_page_seconds`) and the server's CPU use with one tab and no job for
`--idle-seconds` (`idle_cpu_cores`). One pass of each, in this order: on a shared
machine read the ratios with the load average it prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.browser import TITLE, cold_title_seconds, launch_chromium, served  # noqa: E402
from dpsat_core.methods import METHODS  # noqa: E402
from dpsat_core.sweeps import SweepSpec, default_comparison  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


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


def cli_sweep(store: Path, spec: SweepSpec) -> float:
    """Wall seconds of `dpsat sweep` over `spec`'s grid."""
    command = [sys.executable, "-m", "dpsat_core", "sweep", "--dataset", "digits", "--store", str(store)]
    command += ["--methods", ",".join(spec.methods), "--epsilons", ",".join(f"{e:g}" for e in spec.epsilons)]
    command += ["--seeds", ",".join(map(str, spec.seeds)), "--epochs", str(spec.base.epochs), "--json"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def dashboard_sweep(browser, store: Path, tabs: int, spec: SweepSpec) -> float:
    """Seconds from clicking Start training (`spec`'s grid) to all its runs stored, with `tabs` tabs open."""
    from playwright.sync_api import expect

    cells = len(spec.cells())
    with served(store) as (url, _):
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
        start = time.perf_counter()
        first.get_by_role("button", name="Start training").click()
        expect(first.get_by_text(f"Started {cells} runs")).to_be_visible(timeout=120_000)
        for _ in range(tabs - 1):  # opened while the job runs: their job panels refresh every second
            context.new_page().goto(url)
        while done_runs(store) < cells:
            time.sleep(0.25)
        seconds = time.perf_counter() - start
        context.close()
    return seconds


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs a run (the button trains 5)")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    spec = grid(args.epochs)
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as p:
        root = Path(folder)
        stores = {name: root / name / "runs.db" for name in ("cli", "tab1", "tab4", "cold", "idle")}
        for store in stores.values():
            store.parent.mkdir()
        browser = launch_chromium(p)
        first_page = cold_title_seconds(browser, stores["cold"])
        cli = cli_sweep(stores["cli"], spec)
        one_tab = dashboard_sweep(browser, stores["tab1"], 1, spec)
        four_tabs = dashboard_sweep(browser, stores["tab4"], 4, spec)
        idle = idle_cores(browser, stores["idle"], args.idle_seconds)
        browser.close()
    report = {
        "runs": len(spec.cells()),
        "epochs": args.epochs,
        "cli_seconds": round(cli, 2),
        "dashboard_1tab_seconds": round(one_tab, 2),
        "dashboard_4tabs_seconds": round(four_tabs, 2),
        "dashboard_over_cli": round(four_tabs / cli, 3),
        "dashboard_over_cli_1tab": round(one_tab / cli, 3),
        "first_page_seconds": round(first_page, 2),
        "idle_cpu_cores": round(idle, 3),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
