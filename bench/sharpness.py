"""Sharpness benchmark: Lanczos vs PyHessian top-5, and the 2D landscape vs a copy-the-model-per-point loop.

    python bench/sharpness.py [--json] [--samples 1024] [--hessian-samples 256] [--repeats 3] [--threads N]
                              [--device auto|cpu|cuda] [--hessian-only | --landscape-only]
                              [--pyhessian-tols 1e-4,7e-5,5e-5,3e-5,2e-5,1.5e-5,1.2e-5,1e-5]

Hessian: a ~400k-parameter tanh CNN (widths 48/96/192 on 3×32×32 inputs),
briefly trained on random images. The reference is scipy's `eigsh` (implicitly
restarted Lanczos, ARPACK) at tol 1e-10. Ours is `lanczos_top` at tol 1e-3 (and
1e-2), with `eigsh` at its old default (residual tol 1e-3) beside it; PyHessian
runs with its defaults (tol 1e-3, 100 iterations) and on the tolerance grid
(1,000 iterations), coarse to fine, up to the first setting with ≤ 0.1% error
(finer ones only add iterations). Every error is against the reference; products
are counted for both. Then `--repeats` timed rounds of ours (tol 1e-3) and PyHessian's
matched setting (the one with the fewest products at ≤ 0.1% error), the order
alternating per round, each round's ratio taken within it; the first round is the
grid pass. Seconds are wall clock and process CPU time (the headline: CPU time, at a
fixed thread count, moves least with other load; on CUDA, wall clock after a
synchronisation); load averages are recorded per round.
Landscape: the default digits CNN after 3 epochs of DP-SGD, 21×21 grid on 1,024 training examples,
against a copy-the-model-per-point loop and against our own evaluator one point at a time
(on CUDA ours batches points with `vmap`; on CPU it loops, so that ratio is ~1 there).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from dpsat_core import TrainConfig, build_model, train  # noqa: E402
from dpsat_core.data import load_dataset  # noqa: E402
from dpsat_core.devices import describe_device, resolve_device  # noqa: E402
from dpsat_core.hessian import HessianOperator, lanczos_top  # noqa: E402
from dpsat_core.landscape import LossEvaluator, iter_surface, random_direction  # noqa: E402
from dpsat_core.models import TanhCNN, count_parameters  # noqa: E402
from dpsat_core.results import Surface  # noqa: E402

ACCURACY = 1e-3  # "equal accuracy": at most 0.1% relative error on every one of the top 5
OUR_TOLS = (1e-3, 1e-2)

warnings.filterwarnings("ignore")


class Clock:
    """Wall and process-CPU seconds since creation."""

    def __init__(self):
        _sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        _sync()
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _sync() -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _pyhessian_top5(model, x, y, **settings) -> dict:
    """PyHessian's top 5 with its own power iteration, its products counted by wrapping its HVP function."""
    from pyhessian import hessian as PyHessian

    module = sys.modules["pyhessian.hessian"]
    original, count = module.hessian_vector_product, [0]

    def counted(*args):
        count[0] += 1
        return original(*args)

    module.hessian_vector_product = counted
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            clock = Clock()
            engine = PyHessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
            values, _ = engine.eigenvalues(top_n=5, **settings)
            wall, cpu = clock.read()
    finally:
        module.hessian_vector_product = original
    return {"values": sorted(values, reverse=True), "wall": wall, "cpu": cpu, "products": count[0]}


def _ours(model, x, y, tol: float) -> dict:
    clock = Clock()
    op = HessianOperator(model, x, y)
    estimate = lanczos_top(op, 5, tol=tol)
    wall, cpu = clock.read()
    return {"values": estimate.values, "wall": wall, "cpu": cpu, "products": estimate.products, "mode": op.mode}


def _eigsh(model, x, y, tol: float) -> dict:
    clock = Clock()
    op = HessianOperator(model, x, y)
    start = np.random.default_rng(0).standard_normal(op.size)
    values = eigsh(op.as_scipy(), k=5, which="LA", tol=tol, v0=start, ncv=20, return_eigenvectors=False)
    wall, cpu = clock.read()
    return {"values": sorted(values, reverse=True), "wall": wall, "cpu": cpu, "products": op.products}


def _log(label: str, run: dict, reference: Optional[list] = None) -> dict:
    """Each finished run on stderr as it ends (a 256-sample grid pass takes tens of minutes)."""
    error = f", max rel. error {_max_rel(run['values'], reference):.2e}" if reference is not None else ""
    print(
        f"{label}: {run['products']} products, {run['cpu']:.1f} s CPU, {run['wall']:.1f} s wall{error}, load "
        f"{os.getloadavg()[0]:.2f}",
        file=sys.stderr,
        flush=True,
    )
    return run


def _max_rel(a, b) -> float:
    return float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))


def _summary(run: dict, reference) -> dict:
    return {
        **({"hvp_mode": run["mode"]} if "mode" in run else {}),
        "wall_seconds": round(run["wall"], 2),
        "cpu_seconds": round(run["cpu"], 2),
        "products": run["products"],
        "max_rel_error": _max_rel(run["values"], reference),
    }


def hessian_case(samples: int, repeats: int, pyhessian_tols: list[float], device: torch.device) -> dict:
    torch.manual_seed(0)
    model = TanhCNN((3, 32, 32), 10, widths=(48, 96, 192))
    x, y = torch.randn(samples, 3, 32, 32), torch.randint(0, 10, (samples,))
    model, x, y = model.to(device), x.to(device), y.to(device)
    clock_used = "wall" if device.type == "cuda" else "cpu"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    reference = _log("reference eigsh 1e-10", _eigsh(model, x, y, 1e-10))
    load = [os.getloadavg()]
    ours = {
        f"{tol:g}": _summary(_log(f"ours {tol:g}", _ours(model, x, y, tol), reference["values"]), reference["values"])
        for tol in OUR_TOLS
    }
    previous = _summary(_log("eigsh 1e-3", _eigsh(model, x, y, 1e-3), reference["values"]), reference["values"])
    pyhessian = {
        "defaults": _summary(
            _log("pyhessian defaults", _pyhessian_top5(model, x, y), reference["values"]), reference["values"]
        )
    }
    matched_tol = None
    for tol in sorted(pyhessian_tols, reverse=True):
        run = _log(f"pyhessian {tol:g}", _pyhessian_top5(model, x, y, tol=tol, maxIter=1000), reference["values"])
        pyhessian[f"{tol:g}"] = _summary(run, reference["values"])
        if pyhessian[f"{tol:g}"]["max_rel_error"] <= ACCURACY:
            matched_tol = tol
            break
    rounds = []
    if matched_tol is not None:
        default = ours[f"{OUR_TOLS[0]:g}"]
        rounds.append({"ours": default, "pyhessian": pyhessian[f"{matched_tol:g}"], "load": load[0]})
        for r in range(1, repeats):
            load.append(os.getloadavg())
            order = ("pyhessian", "ours") if r % 2 else ("ours", "pyhessian")
            runs = {}
            for name in order:
                run = (
                    _ours(model, x, y, OUR_TOLS[0])
                    if name == "ours"
                    else _pyhessian_top5(model, x, y, tol=matched_tol, maxIter=1000)
                )
                runs[name] = _summary(_log(f"round {r + 1} {name}", run, reference["values"]), reference["values"])
            rounds.append({**runs, "load": load[-1]})
    load.append(os.getloadavg())
    ratios = {
        clock: [r["pyhessian"][f"{clock}_seconds"] / r["ours"][f"{clock}_seconds"] for r in rounds]
        for clock in ("cpu", "wall")
    }
    median = lambda values: round(statistics.median(values), 2) if values else None  # noqa: E731
    return {
        "n_params": count_parameters(model),
        "hessian_samples": samples,
        "hvp_mode": ours[f"{OUR_TOLS[0]:g}"]["hvp_mode"],
        "reference": {"method": "eigsh tol 1e-10", "products": reference["products"], "values": reference["values"]},
        "lanczos": ours,
        "eigsh_tol_1e-3": previous,
        "pyhessian": pyhessian,
        "pyhessian_matched_tol": matched_tol,
        "rounds": rounds,
        "load_averages": [[round(v, 2) for v in entry] for entry in load],
        "lanczos_products": ours[f"{OUR_TOLS[0]:g}"]["products"],
        "max_rel_error_vs_reference": ours[f"{OUR_TOLS[0]:g}"]["max_rel_error"],
        "speedup_clock": clock_used,
        "lanczos_speedup_vs_pyhessian": median(ratios[clock_used]),
        "lanczos_speedup_vs_pyhessian_range": [round(min(ratios[clock_used]), 2), round(max(ratios[clock_used]), 2)]
        if rounds
        else None,
        "lanczos_speedup_vs_pyhessian_wall": median(ratios["wall"]),
        "lanczos_speedup_vs_pyhessian_defaults": round(
            pyhessian["defaults"][f"{clock_used}_seconds"] / ours[f"{OUR_TOLS[0]:g}"][f"{clock_used}_seconds"], 2
        ),
    }


def _timed_surface(evaluator: LossEvaluator, d1, d2) -> tuple[float, float, Surface]:
    """Seconds to the coarse and to the full 21×21 surface, after a 3×3 warm-up (first kernels, vmap's tracing)."""
    for _ in iter_surface(evaluator, d1, d2, steps=3):
        pass
    clock, times = Clock(), []
    for surface in iter_surface(evaluator, d1, d2, steps=21, span=1.0):
        times.append(clock.read()[0])
    return times[0], times[-1], surface


def _copy_loop(model, weights, d1, d2, axis, x, y) -> list[float]:
    """The naive way: copy the model, write the point's weights, evaluate."""
    losses = []
    for b in axis:
        for a in axis:
            point = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in point.named_parameters():
                    p.copy_(weights[name] + a * d1[name] + b * d2[name])
                losses.append(F.cross_entropy(point(x), y).item())
    return losses


def landscape_case(samples: int, device: torch.device, repeats: int) -> dict:
    result = train(TrainConfig(dataset="digits", method="dpsgd", epochs=3, device=str(device)))
    model = build_model(result.model, seed=0).to(device)
    model.load_state_dict(result.state_dict)
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train[:samples]).to(device), torch.tensor(data.y_train[:samples]).to(device)
    evaluator = LossEvaluator(model, x, y)
    d1, d2 = random_direction(evaluator.weights, seed=0), random_direction(evaluator.weights, seed=1)
    point_loop = LossEvaluator(model, x, y, batch_points=False)
    *_, surface = iter_surface(evaluator, d1, d2, steps=21, span=1.0)  # untimed: its axis, and a warm-up
    _copy_loop(model, evaluator.weights, d1, d2, [0.0], x, y)
    rounds = []
    for r in range(repeats):  # each round times all three, in an order rotated per round
        timed = {}
        for name in ("ours", "point_loop", "copy_loop")[r % 3 :] + ("ours", "point_loop", "copy_loop")[: r % 3]:
            if name == "copy_loop":
                clock = Clock()
                loop = _copy_loop(model, evaluator.weights, d1, d2, surface.axis, x, y)
                timed[name] = clock.read()[0]
            else:
                coarse, timed[name], found = _timed_surface(evaluator if name == "ours" else point_loop, d1, d2)
                if name == "ours":
                    coarse_seconds, ours = coarse, [v for row in found.loss for v in row]
        rounds.append(timed)
    median = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    seconds, points_seconds, loop_seconds = median("ours"), median("point_loop"), median("copy_loop")
    by_batch = {}
    if evaluator.batch_points:  # what the points-per-call rule chose against its neighbours
        for points in (16, 32, 64, 128, 256):
            by_batch[points] = round(_timed_surface(LossEvaluator(model, x, y, points_per_batch=points), d1, d2)[1], 4)
    return {
        "landscape_batched": evaluator.batch_points,
        "landscape_points_per_batch": evaluator.points_per_batch,
        "landscape_coarse_seconds": round(coarse_seconds, 4),
        "landscape_seconds": round(seconds, 4),
        "landscape_loop_seconds": round(loop_seconds, 4),
        "landscape_point_loop_seconds": round(points_seconds, 4),
        "landscape_speedup": round(loop_seconds / seconds, 2),
        "landscape_speedup_vs_point_loop": round(points_seconds / seconds, 2),
        "landscape_speedup_rounds": [round(r["copy_loop"] / r["ours"], 2) for r in rounds],
        "landscape_speedup_vs_point_loop_rounds": [round(r["point_loop"] / r["ours"], 2) for r in rounds],
        "landscape_seconds_by_points_per_batch": by_batch,
        "landscape_max_abs_diff_vs_loop": float(np.max(np.abs(np.subtract(ours, loop)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="examples for the landscape")
    parser.add_argument(
        "--hessian-samples", type=int, default=256, help="examples for the Hessian (memory: ~2 GB at 256)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds of ours vs PyHessian's, and of the surfaces"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and BLAS threads")
    parser.add_argument(
        "--pyhessian-tols", default="1e-4,7e-5,5e-5,3e-5,2e-5,1.5e-5,1.2e-5,1e-5", help="PyHessian's tolerance grid"
    )
    parser.add_argument("--device", default="auto", help="auto: CUDA when present")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--hessian-only", action="store_true")
    only.add_argument("--landscape-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tols = [float(t) for t in args.pyhessian_tols.split(",")]
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with threadpool_limits(limits=args.threads):
        report = {
            **({} if args.landscape_only else hessian_case(args.hessian_samples, args.repeats, tols, device)),
            **({} if args.hessian_only else landscape_case(args.samples, device, args.repeats)),
            "device": describe_device(device),
            "threads": torch.get_num_threads(),
        }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
