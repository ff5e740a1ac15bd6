"""Per-step cost of each method on the default CNN (digits) and MLP (mnist1d), and their ratios.

    python bench/step_cost.py [--rounds 300] [--batch-size 256] [--threads 1] [--device auto] [--json]

Uses the library's probe (`dpsat_core.probe.probe_step_cost`): one fixed batch of
exactly `batch_size` examples, one step of every method per round in a fresh
(seeded) order, each ratio taken within a round; the median over rounds is
reported with the interquartile range of the per-round ratios. Ratios come from
this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpsat_core import METHODS, TrainConfig, probe_step_cost  # noqa: E402

warnings.filterwarnings("ignore")
MODELS = {"cnn": "digits", "mlp": "mnist1d"}
# key -> (method, the reference its ratio is taken against in the probe)
RATIOS = {
    "dpsgd_over_sgd": ("dpsgd", "sgd"),
    "dpsat_over_dpsgd": ("dpsat", "dpsgd"),
    "dpsam_over_dpsgd": ("dpsam", "dpsgd"),
}


def measure(dataset: str, *, rounds: int, batch_size: int, threads: int, device: str) -> dict:
    """One probe of every registered method on `dataset`'s default model, as a JSON-ready dict."""
    config = TrainConfig(dataset=dataset, batch_size=batch_size, device=device)
    probe = probe_step_cost(config, list(METHODS), rounds=rounds, threads=threads)
    report = {
        "dataset": dataset,
        "device": probe.device,
        "threads": probe.threads,
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
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = dict(rounds=args.rounds, batch_size=args.batch_size, threads=args.threads, device=args.device)
    report = {model: measure(dataset, **options) for model, dataset in MODELS.items()}
    if args.json:
        print(json.dumps(report))
        return
    for model, r in report.items():
        print(
            f"{model} ({r['dataset']}) on {r['device']}, {r['clock']}, median of {r['rounds']} rounds, "
            f"batch {args.batch_size}, probe {r['probe_seconds']} s"
        )
        print("  " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r["seconds_per_step"].items()))
        print("  " + "  ".join(f"{k} {r[k]:.2f}× (IQR {r[k + '_iqr'][0]:.2f}–{r[k + '_iqr'][1]:.2f})" for k in RATIOS))


if __name__ == "__main__":
    main()
