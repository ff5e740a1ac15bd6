"""Sharpness benchmark: Lanczos vs PyHessian top-5, and the 2D landscape vs a copy-the-model-per-point loop.

    python bench/sharpness.py [--json] [--samples 1024] [--repeats 2] [--pyhessian-tols 1e-4,5e-5,2e-5,1e-5]
                              [--hessian-only]

Hessian: a ~400k-parameter tanh CNN (widths 48/96/192 on 3×32×32 inputs),
briefly trained on random images. The reference is scipy's `eigsh` (implicitly
restarted Lanczos, ARPACK) at tol 1e-10. Ours (the same `eigsh`) runs at the
default tol (1e-3) and a coarser one; PyHessian runs with its defaults (tol 1e-3, 100
iterations) and on the tolerance grid (1,000 iterations). Each setting runs
`--repeats` times (median seconds). The headline: PyHessian's cheapest setting
with ≤ 0.1% error against our default, both at ≤ 0.1% error. Landscape: the
default digits CNN after 3 epochs of DP-SGD, 21×21 grid on 1,024 training examples.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402

from dpsat_core import TrainConfig, build_model, train  # noqa: E402
from dpsat_core.data import load_dataset  # noqa: E402
from dpsat_core.hessian import HessianOperator, top_eigenvalues  # noqa: E402

ACCURACY = 1e-3  # "equal accuracy": at most 0.1% relative error on every one of the top 5
OUR_TOLS = (1e-3, 1e-2)
from dpsat_core.landscape import LossEvaluator, iter_surface, random_direction  # noqa: E402
from dpsat_core.models import TanhCNN, count_parameters  # noqa: E402

warnings.filterwarnings("ignore")


def _pyhessian_top5(model, x, y, **settings) -> tuple[list[float], float]:
    from pyhessian import hessian as PyHessian

    with torch.random.fork_rng():
        torch.manual_seed(0)
        begin = time.perf_counter()
        values, _ = PyHessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(
            top_n=5, **settings
        )
        return sorted(values, reverse=True), time.perf_counter() - begin


def _max_rel(a, b) -> float:
    return float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))


def _ours(model, x, y, tol: float) -> tuple[list[float], float, int]:
    begin = time.perf_counter()
    op = HessianOperator(model, x, y)
    values = top_eigenvalues(op, 5, tol=tol)
    return values, time.perf_counter() - begin, op.products


def hessian_case(samples: int, repeats: int, pyhessian_tols: list[float]) -> dict:
    torch.manual_seed(0)
    model = TanhCNN((3, 32, 32), 10, widths=(48, 96, 192))
    x, y = torch.randn(samples, 3, 32, 32), torch.randint(0, 10, (samples,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    op = HessianOperator(model, x, y)
    start = np.random.default_rng(0).standard_normal(op.size)
    reference = sorted(eigsh(op.as_scipy(), k=5, which="LA", tol=1e-10, v0=start, return_eigenvectors=False))[::-1]
    ours = {}
    for tol in OUR_TOLS:
        runs = [_ours(model, x, y, tol) for _ in range(repeats)]
        ours[f"{tol:g}"] = {
            "seconds": round(statistics.median(r[1] for r in runs), 2),
            "products": runs[0][2],
            "max_rel_error": _max_rel(runs[0][0], reference),
        }
    pyhessian = {}
    for label, settings in [("defaults", {})] + [(f"{t:g}", {"tol": t, "maxIter": 1000}) for t in pyhessian_tols]:
        runs = [_pyhessian_top5(model, x, y, **settings) for _ in range(repeats)]
        pyhessian[label] = {
            "seconds": round(statistics.median(r[1] for r in runs), 2),
            "max_rel_error": _max_rel(runs[0][0], reference),
        }
    accurate = [v for k, v in pyhessian.items() if k != "defaults" and v["max_rel_error"] <= ACCURACY]
    matched = min(accurate, key=lambda v: v["seconds"]) if accurate else None
    default = ours[f"{OUR_TOLS[0]:g}"]
    return {
        "n_params": count_parameters(model),
        "hessian_samples": samples,
        "hvp_mode": op.mode,
        "repeats": repeats,
        "lanczos": ours,
        "pyhessian": pyhessian,
        "lanczos_products": default["products"],
        "lanczos_seconds": default["seconds"],
        "max_rel_error_vs_reference": default["max_rel_error"],
        "pyhessian_seconds": None if matched is None else matched["seconds"],
        "lanczos_speedup_vs_pyhessian": None if matched is None else round(matched["seconds"] / default["seconds"], 2),
        "lanczos_speedup_vs_pyhessian_defaults": round(pyhessian["defaults"]["seconds"] / default["seconds"], 2),
    }


def landscape_case(samples: int) -> dict:
    result = train(TrainConfig(dataset="digits", method="dpsgd", epochs=3))
    model = build_model(result.model, seed=0)
    model.load_state_dict(result.state_dict)
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train[:samples]), torch.tensor(data.y_train[:samples])
    start = time.perf_counter()
    evaluator = LossEvaluator(model, x, y)
    d1, d2 = random_direction(evaluator.weights, seed=0), random_direction(evaluator.weights, seed=1)
    times = []
    for surface in iter_surface(evaluator, d1, d2, steps=21, span=1.0):
        times.append(time.perf_counter() - start)
    axis = surface.axis
    start = time.perf_counter()
    loop = []
    for b in axis:  # the naive way: copy the model, write the point's weights, evaluate
        for a in axis:
            point = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in point.named_parameters():
                    p.copy_(evaluator.weights[name] + a * d1[name] + b * d2[name])
                loop.append(F.cross_entropy(point(x), y).item())
    loop_seconds = time.perf_counter() - start
    ours = [v for row in surface.loss for v in row]
    return {
        "landscape_coarse_seconds": round(times[0], 3),
        "landscape_seconds": round(times[-1], 3),
        "landscape_loop_seconds": round(loop_seconds, 3),
        "landscape_speedup": round(loop_seconds / times[-1], 2),
        "landscape_max_abs_diff_vs_loop": float(np.max(np.abs(np.subtract(ours, loop)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="examples for the landscape")
    parser.add_argument(
        "--hessian-samples", type=int, default=256, help="examples for the Hessian (memory: ~2 GB at 256)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pyhessian-tols", default="1e-4,5e-5,2e-5,1e-5", help="PyHessian's tolerance grid")
    parser.add_argument("--hessian-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tols = [float(t) for t in args.pyhessian_tols.split(",")]
    report = {
        **hessian_case(args.hessian_samples, args.repeats, tols),
        **({} if args.hessian_only else landscape_case(args.samples)),
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
