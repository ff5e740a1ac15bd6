"""Per-step time of each method on the default CNN (digits) and MLP (mnist1d), and their ratios.

    python bench/step_cost.py [--steps 30] [--batch-size 256] [--device auto] [--json]

Every step uses the same fixed batch of exactly `batch_size` examples, methods
are interleaved round by round (so drift hits all alike), and the median is
reported. Ratios come from this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dpsat_core import METHODS, TrainConfig, prepare  # noqa: E402

warnings.filterwarnings("ignore")
MODELS = {"cnn": "digits", "mlp": "mnist1d"}


def time_steps(dataset: str, *, steps: int, batch_size: int, device: str) -> dict[str, float]:
    """Median seconds per step of each method, measured round-robin."""
    trainers = {}
    for name, info in METHODS.items():
        extra = {"noise_multiplier": 1.0} if info.private else {}
        trainers[name] = prepare(
            TrainConfig(dataset=dataset, method=name, batch_size=batch_size, device=device, **extra)
        )
    any_trainer = next(iter(trainers.values()))
    batch = (any_trainer.x_train[:batch_size], any_trainer.y_train[:batch_size])
    sync = torch.cuda.synchronize if any_trainer.device.type == "cuda" else (lambda: None)
    for trainer in trainers.values():  # warm-up
        for _ in range(3):
            trainer.step_fn(lambda: batch)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(steps):
        for name, trainer in trainers.items():
            sync()
            start = time.perf_counter()
            trainer.step_fn(lambda: batch)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {}
    for model, dataset in MODELS.items():
        t = time_steps(dataset, steps=args.steps, batch_size=args.batch_size, device=args.device)
        report[model] = {
            "dataset": dataset,
            "seconds_per_step": {k: round(v, 6) for k, v in t.items()},
            "dpsat_over_dpsgd": round(t["dpsat"] / t["dpsgd"], 3),
            "dpsam_over_dpsgd": round(t["dpsam"] / t["dpsgd"], 3),
            "dpsgd_over_sgd": round(t["dpsgd"] / t["sgd"], 3),
        }
    if args.json:
        print(json.dumps(report))
        return
    device = prepare(TrainConfig(dataset="breast_cancer", device=args.device)).device
    print(f"device: {device}, batch {args.batch_size}, median of {args.steps} steps")
    for model, r in report.items():
        per_step = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r["seconds_per_step"].items())
        print(f"{model} ({r['dataset']}): {per_step}")
        print(
            f"  DP-SAT/DP-SGD {r['dpsat_over_dpsgd']:.2f}×  DP-SAM/DP-SGD {r['dpsam_over_dpsgd']:.2f}×  "
            f"DP-SGD/SGD {r['dpsgd_over_sgd']:.2f}×"
        )


if __name__ == "__main__":
    main()
