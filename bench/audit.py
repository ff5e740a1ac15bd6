"""White-box audit lower bounds against the accountant's ε, and the time one audit takes.

For each method and target ε: one audit run (m canaries) on a built-in data set; prints the accountant's
ε, the audit's ε lower bound at 95% confidence, the guesses, the membership AUC and the seconds the
audit took (training, scoring and the bound; data loading and σ calibration excluded).

    python bench/audit.py [--dataset digits] [--epochs 5] [--canaries 1000] [--epsilons 1,2,4,8]
                          [--methods dpsgd,dpsat] [--mode whitebox] [--json]

Audit runs go to a temporary store (they trained on canaries and are worth nothing else).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dpsat_core import RunStore, TrainConfig, audit
from dpsat_core.config import AUDIT_MODES, DEFAULT_CANARIES, parse_numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--canaries", type=int, default=DEFAULT_CANARIES)
    parser.add_argument("--epsilons", default="1,2,4,8")
    parser.add_argument("--methods", default="dpsgd,dpsat")
    parser.add_argument("--mode", default="whitebox", choices=AUDIT_MODES)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "audits.db")
        for epsilon in parse_numbers(args.epsilons, name="--epsilons"):
            for method in args.methods.split(","):
                config = TrainConfig(dataset=args.dataset, method=method, epsilon=epsilon, epochs=args.epochs)
                start = time.perf_counter()
                result = audit(config, store, mode=args.mode, canaries=args.canaries).result
                wall = time.perf_counter() - start
                row = {**result.to_dict(), "wall_seconds": wall}
                rows.append(row)
                if not args.json:
                    print(
                        f"{method:<6} ε={epsilon:g}: accountant {result.epsilon_spent:.3f}, audit ≥ "
                        f"{result.epsilon_lower_bound:.3f} (95%), {result.correct}/{result.guesses} right, "
                        f"AUC {result.auc:.3f} ± {result.auc_stderr:.3f}, {result.seconds:.1f} s "
                        f"({wall:.1f} s with calibration)",
                        flush=True,
                    )
    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps({"machine": machine, "settings": vars(args), "audits": rows}))
    else:
        print(f"machine: {machine}")


if __name__ == "__main__":
    main()
