"""Accounting's share of the one-click comparison's compute, as the CLI sweep runs it (2 worker processes).

    python bench/accounting_share.py [--json] [--epochs 5]

Trains `default_comparison("digits")` (20 runs) into a fresh store with the sweep's
own process pool, then the same grid again with new seeds (new runs, the same
accountant questions). In every process (parent and workers) the time inside
accounting (`epsilon_spent`, `epsilon_curve` and `calibrate_noise`, which hold every
accountant call; one inside another counted once) is summed; compute is the time the
workers spend in their cells plus the parent's accounting. `accountant_calls` counts
the accountant's evaluations (`_epsilon_with`; an older checkout's whole
`get_noise_multiplier` bisection counts as one, also given as `bisections`; one PRV
curve, every epoch of one history on one domain, counts as one, also given as `curves`).
Runs against any checkout whose `dpsat_core` is on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

LOG_ENV = "DPSAT_BENCH_ACCOUNTING_LOG"


_DEPTH = [0]  # accounting calls in progress in this process: only the outermost is timed


def _timed(fn, seconds: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        _DEPTH[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH[0] -= 1
            if not _DEPTH[0]:
                seconds.append(time.perf_counter() - start)

    return wrapper


_EVALUATING = [0]  # accountant evaluations in progress: a PRV curve inside one is that evaluation, not a curve


def _counted(fn, calls: list[str], name: str):
    def wrapper(*args, **kwargs):
        if name != "curve" or not _EVALUATING[0]:
            calls.append(name)
        _EVALUATING[0] += name == "evaluation"
        try:
            return fn(*args, **kwargs)
        finally:
            _EVALUATING[0] -= name == "evaluation"

    return wrapper


def _instrument(seconds: list[float], calls: list[str]) -> None:
    """Time every accounting question asked in this process (ε, per-epoch ε curves and σ, cache hits included:
    microseconds; a question asked inside another is timed once) and count the accountant's evaluations (each a
    PRV or RDP `get_epsilon`, a PRV curve of one history's per-epoch ε where the checkout has `epsilon_curve`, or
    one Opacus bisection where an older checkout still calls `get_noise_multiplier`)."""
    import dpsat_core.accounting as accounting

    accounting.epsilon_spent = _timed(accounting.epsilon_spent, seconds)
    accounting.calibrate_noise = _timed(accounting.calibrate_noise, seconds)
    accounting._epsilon_with = _counted(accounting._epsilon_with, calls, "evaluation")
    if hasattr(accounting, "epsilon_curve"):
        accounting.epsilon_curve = _timed(accounting.epsilon_curve, seconds)
        accounting._prv_curve = _counted(accounting._prv_curve, calls, "curve")
    if hasattr(accounting, "get_noise_multiplier"):
        accounting.get_noise_multiplier = _counted(accounting.get_noise_multiplier, calls, "bisection")


def timed_cell_worker(*args):
    """The sweep's worker, timed: busy and accountant seconds go to the log file as one JSON line."""
    import dpsat_core.sweeps as sweeps

    seconds: list[float] = []
    calls: list[str] = []
    _instrument(seconds, calls)
    start = time.perf_counter()
    outcome = sweeps._cell_worker(*args)
    busy = time.perf_counter() - start
    with open(os.environ[LOG_ENV], "a") as log:
        log.write(json.dumps({"busy": busy, "accounting": sum(seconds), "calls": calls}) + "\n")
    return outcome


def measure(
    epochs: int, seeds: tuple[int, ...], store_path: Path, log_path: Path, parent: list[float], parent_calls: list[str]
) -> dict:
    """Sweep the comparison at `seeds`; `parent` and `parent_calls` collect this process's accounting seconds and
    accountant evaluations."""
    import dpsat_core.sweeps as sweeps

    spec = sweeps.default_comparison("digits")
    spec = dataclasses.replace(spec, base=dataclasses.replace(spec.base, epochs=epochs), seeds=seeds)
    before, calls_before = len(parent), len(parent_calls)
    log_path.write_text("")
    start = time.perf_counter()
    sweeps.check_sweep(spec)
    result = sweeps.sweep(spec, sweeps.RunStore(store_path), workers=2)
    wall = time.perf_counter() - start
    cells = [json.loads(line) for line in log_path.read_text().splitlines()]
    own = parent[before:]
    evaluations = parent_calls[calls_before:] + [call for c in cells for call in c["calls"]]
    compute = sum(c["busy"] for c in cells) + sum(own)
    accounting = sum(own) + sum(c["accounting"] for c in cells)
    return {
        "runs": len(result.trained),
        "wall_seconds": round(wall, 2),
        "compute_seconds": round(compute, 2),
        "accounting_seconds": round(accounting, 2),
        "accountant_calls": len(evaluations),
        "bisections": evaluations.count("bisection"),
        "curves": evaluations.count("curve"),
        "parent_accounting_seconds": round(sum(own), 2),
        "accounting_share": round(accounting / compute, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # workers import this module by name
    import accounting_share

    import dpsat_core.sweeps as sweeps

    parent: list[float] = []
    parent_calls: list[str] = []
    _instrument(parent, parent_calls)
    sweeps._cell_worker = accounting_share.timed_cell_worker  # what the pool submits, looked up at call time
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        os.environ[LOG_ENV] = str(Path(folder) / "cells.jsonl")
        for name, seeds in (("first_sweep", (0, 1)), ("second_sweep_new_seeds", (2, 3))):
            log = Path(os.environ[LOG_ENV])
            out[name] = measure(args.epochs, seeds, Path(folder) / "runs.db", log, parent, parent_calls)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
