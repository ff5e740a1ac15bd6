"""Per-step cost of each method on the default CNN (digits) and MLP (mnist1d), and their ratios.

    python bench/step_cost.py [--rounds 300] [--warmup 10] [--batch-size 256] [--threads 1]
                              [--clipping fast|hooks] [--device auto] [--json]

Uses the library's probe (`dpsat_core.probe.probe_step_cost`): one fixed batch of
exactly `batch_size` examples, one step of every method per round in a fresh
(seeded) order, so no method always follows the same one (a step after DP-SAM's
long one runs slower), each ratio taken within a round; the median over rounds is
reported with its 95% confidence interval (`_ci95`, order statistics: no distribution
assumed, but the rounds are taken as independent; it covers this run's round-to-round
noise, not a rerun's) and the interquartile range of the per-round ratios (`_iqr`, their
spread). Ratios come from
this one run. Torch and the BLAS/OpenMP pools run on `--threads` threads (set here,
and recorded with the allocator's state: warm-up steps, glibc, malloc settings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from pathlib import Path

import torch
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpsat_core import METHODS, TrainConfig, probe_step_cost  # noqa: E402
from dpsat_core.config import CLIPPINGS  # noqa: E402

warnings.filterwarnings("ignore")
MODELS = {"cnn": "digits", "mlp": "mnist1d"}
# key -> (method, the reference its ratio is taken against in the probe)
RATIOS = {
    "dpsgd_over_sgd": ("dpsgd", "sgd"),
    "dpsat_over_dpsgd": ("dpsat", "dpsgd"),
    "dpsam_over_dpsgd": ("dpsam", "dpsgd"),
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_state(torch_threads: int) -> dict:
    """Threads as the measurement saw them: torch's (set by the probe) and every OpenMP/BLAS pool loaded."""
    return {
        "torch": torch_threads,
        "torch_interop": torch.get_num_interop_threads(),
        "pools": {f"{p['internal_api']} ({p['prefix']})": p["num_threads"] for p in threadpool_info()},
        "environment": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }


def allocator_state(warmup: int) -> dict:
    """What decides whether a step's large buffers cost page faults: the C library and its malloc settings."""
    libc, version = platform.libc_ver()
    tuning = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    return {"libc": f"{libc} {version}".strip(), "settings": tuning or "defaults", "warmup_steps_per_method": warmup}


def measure(
    dataset: str, *, rounds: int, warmup: int, batch_size: int, threads: int, clipping: str, device: str
) -> dict:
    """One probe of every registered method on `dataset`'s default model, as a JSON-ready dict."""
    config = TrainConfig(dataset=dataset, batch_size=batch_size, clipping=clipping, device=device)
    with threadpool_limits(limits=threads):
        probe = probe_step_cost(config, list(METHODS), rounds=rounds, warmup=warmup, threads=threads)
        threading = thread_state(probe.threads)
    report = {
        "dataset": dataset,
        "clipping": clipping,
        "batch_size": batch_size,
        "device": probe.device,
        "threads": probe.threads,
        "thread_state": threading,
        "allocator": allocator_state(probe.warmup),
        "clock": probe.clock,
        "rounds": probe.rounds,
        "probe_seconds": round(probe.seconds, 1),
        "seconds_per_step": {k: round(v, 6) for k, v in probe.seconds_per_step.items()},
    }
    for key, (method, reference) in RATIOS.items():
        cost = probe.cost(method)
        if cost.reference != reference:
            raise RuntimeError(f"the registry compares {method} with {cost.reference}, not {reference}")
        report[key] = round(cost.ratio, 3)
        report[f"{key}_iqr"] = [round(cost.ratio_low, 3), round(cost.ratio_high, 3)]
        report[f"{key}_ci95"] = [round(cost.ratio_ci_low, 3), round(cost.ratio_ci_high, 3)]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10, help="steps of every method before timing")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clipping", default=TrainConfig().clipping, choices=CLIPPINGS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 300:
        parser.error(f"--rounds must be ≥ 300 for a fair median (shared/NOTES.md), got {args.rounds}")
    options = dict(
        rounds=args.rounds,
        warmup=args.warmup,
        batch_size=args.batch_size,
        threads=args.threads,
        clipping=args.clipping,
        device=args.device,
    )
    report = {model: measure(dataset, **options) for model, dataset in MODELS.items()}
    if args.json:
        print(json.dumps(report))
        return
    for model, r in report.items():
        print(
            f"{model} ({r['dataset']}) on {r['device']}, {r['clipping']} clipping, {r['clock']}, median of "
            f"{r['rounds']} rounds, batch {args.batch_size}, threads {r['thread_state']}, probe {r['probe_seconds']} s"
        )
        print("  " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r["seconds_per_step"].items()))
        print(
            "  "
            + "  ".join(
                f"{k} {r[k]:.3f}× (95% CI {r[k + '_ci95'][0]:.3f}–{r[k + '_ci95'][1]:.3f}; "
                f"IQR {r[k + '_iqr'][0]:.2f}–{r[k + '_iqr'][1]:.2f})"
                for k in RATIOS
            )
        )


if __name__ == "__main__":
    main()
