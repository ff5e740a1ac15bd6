"""First paint of every dashboard page with a store of 100 runs (script time in AppTest, per page), and a cold
server to the Overview's title in Chromium.

    python bench/first_paint.py [--runs 100] [--repeats 3] [--no-browser] [--json]

One real run is trained, then copied into 100 runs over methods × ε × seeds
(metrics and weights are the real run's). Each page is opened in a fresh
AppTest after a warm-up of the app, so imports are not counted; the time is
the server-side script run, which is what delays the first paint.

In the browser: a new server process is started (as `dpsat dashboard` starts it) and
Chromium opens it; the time runs from the process start to the Overview's title
visible (median of `--repeats`), beside the same for a bare one-title Streamlit app:
for a first visit (a fresh browser context, nothing cached) and for a returning user
(the same address visited before: Streamlit's hashed bundles come from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from dpsat_core import RunStore, TrainConfig, run  # noqa: E402

PAGES = ["overview", "data", "train", "privacy_utility", "sharpness", "landscape", "runs"]


def build_store(path: Path, runs: int) -> None:
    store = RunStore(path)
    template = run(TrainConfig(dataset="digits", method="dpsgd", epsilon=3.0, epochs=3), store).record
    grid = [(m, e, s) for s in range(20) for m in ("dpsgd", "dpsam", "dpsat") for e in (1.0, 2.0, 4.0, 8.0)]
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT * FROM runs WHERE run_id=?", (template.run_id,)).fetchone()
        epochs = db.execute("SELECT epoch, metrics FROM epochs WHERE run_id=?", (template.run_id,)).fetchall()
        for method, eps, seed in grid[: runs - 1]:
            config = TrainConfig(**{**template.config.to_dict(), "method": method, "epsilon": eps, "seed": seed})
            run_id = uuid.uuid4().hex[:12]
            values = list(row)
            values[0:8] = [
                run_id,
                config.config_hash(),
                json.dumps(config.to_dict()),
                method,
                "digits",
                eps,
                seed,
                "done",
            ]
            db.execute(f"INSERT INTO runs VALUES ({','.join('?' * len(values))})", values)
            db.executemany("INSERT INTO epochs VALUES (?,?,?)", [(run_id, e, m) for e, m in epochs])


def browser_first_paint(store: Path, repeats: int) -> dict:
    """Median seconds from a cold server to the Overview's title in Chromium, and to a bare app's title: with a
    fresh browser (a first visit: nothing cached) and with a returning user's browser (the same address visited
    before, so Streamlit's hashed bundles come from its cache). Each kind alternates with the bare app."""
    from playwright.sync_api import sync_playwright

    from bench.browser import TITLE, cold_title_seconds, free_port, launch_chromium

    bare = store.parent / "bare_app.py"
    bare.write_text('import streamlit as st\n\nst.title("A bare Streamlit app")\n')
    bare_title = "A bare Streamlit app"
    times: dict[str, list[float]] = {"first": [], "first_bare": [], "returning": [], "returning_bare": []}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        port = free_port()
        returning = browser.new_context()
        for app, title in ((None, TITLE), (bare, bare_title)):  # an earlier visit fills the cache of each address
            cold_title_seconds(browser, store, title=title, app=app, context=returning, port=port)
        for _ in range(repeats):
            times["first"].append(cold_title_seconds(browser, store))
            times["first_bare"].append(cold_title_seconds(browser, store, title=bare_title, app=bare))
            times["returning"].append(cold_title_seconds(browser, store, context=returning, port=port))
            times["returning_bare"].append(
                cold_title_seconds(browser, store, title=bare_title, app=bare, context=returning, port=port)
            )
        browser.close()
    median = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {
        "cold_to_overview_title_seconds": median["first"],
        "cold_to_overview_title_all": [round(s, 2) for s in times["first"]],
        "cold_to_bare_app_title_seconds": median["first_bare"],
        "returning_cold_to_overview_title_seconds": median["returning"],
        "returning_cold_to_overview_title_all": [round(s, 2) for s in times["returning"]],
        "returning_cold_to_bare_app_title_seconds": median["returning_bare"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true", help="only the AppTest script times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.db"
        build_store(path, args.runs)
        os.environ["DPSAT_STORE"] = str(path)
        app = str(ROOT / "dashboard" / "app.py")
        AppTest.from_file(app, default_timeout=120).run()  # warm-up: imports
        seconds = {}
        for page in PAGES:
            at = AppTest.from_file(app, default_timeout=120)
            start = time.perf_counter()
            at.run()
            if page != "overview":
                start = time.perf_counter()
                at.switch_page(f"../pages/{page}.py").run()
            seconds[page] = round(time.perf_counter() - start, 3)
            assert not at.exception, at.exception
        report = {"runs": args.runs, "seconds": seconds, "max_seconds": max(seconds.values())}
        if not args.no_browser:
            report |= browser_first_paint(path, args.repeats)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"first paint with {args.runs} runs (server script time):")
        for page, s in seconds.items():
            print(f"  {page:<16} {s:.2f} s")
        for key in (
            "cold_to_overview_title_seconds",
            "cold_to_bare_app_title_seconds",
            "returning_cold_to_overview_title_seconds",
            "returning_cold_to_bare_app_title_seconds",
        ):
            if key in report:
                print(f"{key}: {report[key]} s")


if __name__ == "__main__":
    main()
