"""Sharpness benchmark: Lanczos vs PyHessian top-5, and the 2D landscape vs a copy-the-model-per-point loop.

    python bench/sharpness.py [--json] [--samples 1024]

Hessian: a ~400k-parameter tanh CNN (widths 48/96/192 on 3×32×32 inputs),
briefly trained on random images. PyHessian runs twice: with its defaults
(tol 1e-3, 100 iterations), and at tol 1e-5, the first setting whose error is
≤ 0.1%; the speedup at equal accuracy is the headline. The reference is `eigsh`
at tol 1e-10. Landscape: the default
digits CNN after 3 epochs of DP-SGD, 21×21 grid on 1,024 training examples.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dpsat_core import TrainConfig, build_model, train  # noqa: E402
from dpsat_core.data import load_dataset  # noqa: E402
from dpsat_core.hessian import HessianOperator, top_eigenvalues  # noqa: E402
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


def hessian_case(samples: int) -> dict:
    torch.manual_seed(0)
    model = TanhCNN((3, 32, 32), 10, widths=(48, 96, 192))
    x, y = torch.randn(samples, 3, 32, 32), torch.randint(0, 10, (samples,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    start = time.perf_counter()
    op = HessianOperator(model, x, y)
    ours = top_eigenvalues(op, 5)
    lanczos = time.perf_counter() - start
    products = op.products
    reference = top_eigenvalues(op, 5, tol=1e-10)
    default, default_seconds = _pyhessian_top5(model, x, y)  # its defaults: tol 1e-3, 100 iterations
    matched, matched_seconds = _pyhessian_top5(model, x, y, tol=1e-5, maxIter=1000)  # first tol under 0.1% error
    return {
        "n_params": count_parameters(model),
        "hessian_samples": samples,
        "hvp_mode": op.mode,
        "lanczos_products": products,
        "lanczos_seconds": round(lanczos, 2),
        "pyhessian_seconds": round(matched_seconds, 2),
        "pyhessian_default_seconds": round(default_seconds, 2),
        "lanczos_speedup_vs_pyhessian": round(matched_seconds / lanczos, 2),
        "lanczos_speedup_vs_pyhessian_defaults": round(default_seconds / lanczos, 2),
        "max_rel_eig_diff": _max_rel(ours, matched),
        "max_rel_error_vs_reference": _max_rel(ours, reference),
        "pyhessian_max_rel_error_vs_reference": _max_rel(matched, reference),
        "pyhessian_default_max_rel_error_vs_reference": _max_rel(default, reference),
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {
        **hessian_case(args.hessian_samples),
        **landscape_case(args.samples),
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"Hessian top-5, {report['n_params']:,}-parameter CNN, {report['hessian_samples']} samples, "
        f"{report['threads']} threads, HVP mode {report['hvp_mode']}:"
    )
    print(
        f"  Lanczos {report['lanczos_seconds']:.1f} s ({report['lanczos_products']} products), "
        f"error vs eigsh(tol=1e-10) {report['max_rel_error_vs_reference']:.1e}"
    )
    print(
        f"  PyHessian defaults {report['pyhessian_default_seconds']:.1f} s, error "
        f"{report['pyhessian_default_max_rel_error_vs_reference']:.2%} "
        f"→ Lanczos {report['lanczos_speedup_vs_pyhessian_defaults']:.1f}× faster"
    )
    print(
        f"  PyHessian tol=1e-5 (≤ 0.1% error) {report['pyhessian_seconds']:.1f} s, error "
        f"{report['pyhessian_max_rel_error_vs_reference']:.3%} "
        f"→ Lanczos {report['lanczos_speedup_vs_pyhessian']:.1f}× faster; "
        f"max difference {report['max_rel_eig_diff']:.3%}"
    )
    print(
        f"Landscape 21×21, default digits CNN, {args.samples} samples: "
        f"coarse {report['landscape_coarse_seconds']:.2f} s, "
        f"full {report['landscape_seconds']:.2f} s; copy-per-point loop {report['landscape_loop_seconds']:.2f} s "
        f"({report['landscape_speedup']:.1f}×); max |diff| {report['landscape_max_abs_diff_vs_loop']:.1e}"
    )


if __name__ == "__main__":
    main()
