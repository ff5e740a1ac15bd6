"""Command line: `python -m dpsat_core train|sweep|runs|show|analyze|report|export|delete`.

Errors caused by input print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

from .analysis import DEFAULT_SAMPLES, run_hessian, run_surface
from .config import ACCOUNTANTS, MODELS, TrainConfig, parse_numbers
from .errors import ConfigError, DpsatError
from .export import results_csv, results_json
from .hessian import BACKENDS
from .methods import METHODS
from .progress import Progress, no_progress
from .report import build_report, cost_phrase, write_report
from .runner import run
from .store import DEFAULT_STORE, STATUSES, STORE_ENV, RunRecord, RunStore, default_store_path
from .sweep import SweepSpec, check_sweep, sweep


def _list(name: str, kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return parse_numbers(text, name=name, kind=kind)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_training_options(p: argparse.ArgumentParser, *, with_method: bool) -> None:
    d = TrainConfig()
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="built-in name (digits, breast_cancer, mnist1d, synthetic) "
        "or a path: .csv (with --target), .npz, or a folder of IDX/CIFAR-10 files",
    )
    p.add_argument("--target", help="label column of a CSV file")
    p.add_argument("--dataset-size", type=int, help="examples to generate for mnist1d/synthetic")
    if with_method:
        p.add_argument("--method", default=d.method, choices=list(METHODS))
        p.add_argument("--epsilon", type=float, help="target ε (σ is calibrated); default 3 for private methods")
        p.add_argument("--sigma", type=float, help="noise multiplier σ instead of a target ε")
        p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--delta", type=float, help="δ (default: 1/n rounded down to a power of ten)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="expected batch size under Poisson sampling")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--clip", type=float, default=d.clip_norm, help="per-example clipping norm C")
    p.add_argument("--rho", type=float, default=d.rho, help="SAM/DP-SAM/DP-SAT perturbation radius ρ")
    p.add_argument("--accountant", default=d.accountant, choices=ACCOUNTANTS)
    p.add_argument("--model", default=d.model, choices=MODELS)
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the train/test split")
    p.add_argument(
        "--physical-batch-size",
        type=int,
        default=d.max_physical_batch_size,
        help="largest chunk per backward pass (memory only)",
    )
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu or cuda")


def _config(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    fields = dict(
        dataset=args.dataset,
        target=args.target,
        dataset_size=args.dataset_size,
        delta=args.delta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        clip_norm=args.clip,
        rho=args.rho,
        accountant=args.accountant,
        model=args.model,
        split_seed=args.split_seed,
        max_physical_batch_size=args.physical_batch_size,
        device=args.device,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def _stderr_progress(p: Progress) -> None:
    print(f"\r[{p.stage}] {p.done}/{p.total} {p.message[:70]:<70}", end="", file=sys.stderr, flush=True)


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_run(record: RunRecord) -> None:
    s = record.summary
    print(
        f"run {record.run_id}  {record.method} on {record.config.dataset}  status={record.status}"
        + (f"  ({record.reason})" if record.reason else "")
    )
    if s.get("noise_multiplier") is not None:
        print(
            f"  privacy: ε={_fmt(s.get('epsilon'), '.3f')} (target {_fmt(s.get('target_epsilon'), 'g')}), "
            f"δ={s.get('delta'):g}, σ={s['noise_multiplier']:.4f}, q={s['sample_rate']:.4f}, "
            f"{s['steps']} steps, {s['releases']} releases, {s['accountant']}"
        )
    print(f"  {'epoch':>5} {'train loss':>10} {'test loss':>10} {'test acc':>8} {'ε':>7} {'seconds':>8}")
    for e in record.epochs:
        print(
            f"  {e.epoch:>5} {e.train_loss:>10.4f} {e.test_loss:>10.4f} {e.test_accuracy:>8.4f} "
            f"{_fmt(e.epsilon, '.3f'):>7} {e.seconds:>8.2f}"
        )


def cmd_train(args: argparse.Namespace) -> int:
    config = _config(args, method=args.method, epsilon=args.epsilon, noise_multiplier=args.sigma, seed=args.seed)
    store = RunStore(args.store)
    outcome = run(config, store, on_progress=no_progress if args.json else _stderr_progress, reuse=not args.no_reuse)
    record = outcome.record
    if not args.json:
        print(file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": record.run_id,
                    "reused": outcome.reused,
                    **record.summary,
                    "status": record.status,
                    "reason": record.reason,
                }
            )
        )
    else:
        if outcome.reused:
            print(f"reused finished run {record.run_id} with the same settings (pass --no-reuse to retrain)")
        _print_run(record)
    return 0 if record.status == "done" else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = SweepSpec(base=_config(args), methods=args.methods, epsilons=args.epsilons, seeds=args.seeds)
    check_sweep(spec)
    store = RunStore(args.store)
    result = sweep(spec, store, workers=args.workers, on_progress=no_progress if args.json else _stderr_progress)
    if args.json:
        print(
            json.dumps(
                {
                    "reused": result.reused,
                    "trained": result.trained,
                    "failed": result.failed,
                    "errors": result.errors,
                    "cancelled": result.cancelled,
                }
            )
        )
    else:
        print(file=sys.stderr)
        print(f"sweep: {len(result.trained)} trained, {len(result.reused)} reused, {len(result.failed)} failed")
        for error in result.errors:
            print(f"  error: {error}")
        _print_table([store.get(r) for r in result.run_ids])
    return 0 if not (result.failed or result.errors) else 1


def _print_table(records: Sequence[RunRecord]) -> None:
    print(f"{'run_id':<12} {'status':<9} {'method':<6} {'dataset':<14} {'seed':>4} {'target ε':>8} {'ε':>7} {'acc':>7}")
    for r in records:
        print(
            f"{r.run_id:<12} {r.status:<9} {r.method:<6} {r.config.dataset[:14]:<14} {r.config.seed:>4} "
            f"{_fmt(r.config.epsilon, 'g'):>8} {_fmt(r.epsilon, '.3f'):>7} {_fmt(r.test_accuracy, '.4f'):>7}"
        )


def cmd_runs(args: argparse.Namespace) -> int:
    records = RunStore(args.store).list_runs(status=args.status, dataset=args.dataset, method=args.method)
    if args.json:
        print(json.dumps([r.to_dict() for r in records]))
    else:
        _print_table(records)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    record = RunStore(args.store).get(args.run_id)
    if args.json:
        print(json.dumps(record.to_dict(with_epochs=True)))
    else:
        _print_run(record)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    store = RunStore(args.store)
    both = not (args.hessian or args.landscape)
    progress = no_progress if args.json else _stderr_progress
    out: dict[str, Any] = {"run_id": args.run_id}
    if args.hessian or both:
        spectrum = run_hessian(
            store,
            args.run_id,
            k=args.k,
            trace_probes=args.probes,
            n_samples=args.samples,
            backend=args.backend,
            recompute=args.recompute,
            device=args.device,
            on_progress=progress,
        )
        out.update(
            top_eigenvalues=spectrum.top,
            trace=spectrum.trace,
            trace_stderr=spectrum.trace_stderr,
            trace_probes=spectrum.trace_probes,
            hessian_backend=spectrum.backend,
            hessian_seconds=spectrum.seconds,
            n_samples=spectrum.n_samples,
        )
    if args.landscape or both:
        surface = run_surface(
            store,
            args.run_id,
            steps=args.steps,
            span=args.span,
            n_samples=args.samples,
            recompute=args.recompute,
            device=args.device,
            on_progress=progress,
        )
        out.update(
            grid=surface.axis, loss=surface.loss, center_loss=surface.center_loss, landscape_seconds=surface.seconds
        )
    if args.json:
        print(json.dumps(out))
        return 0
    print(file=sys.stderr)
    if "top_eigenvalues" in out:
        print(
            f"Hessian ({out['hessian_backend']}, {out['n_samples']} training examples): top eigenvalues "
            + ", ".join(f"{v:.4g}" for v in out["top_eigenvalues"])
            + f"; trace {out['trace']:.4g} ± {out['trace_stderr']:.2g} ({out['trace_probes']} probes)"
        )
    if "loss" in out:
        values = [v for row in out["loss"] for v in row if v is not None]
        print(
            f"landscape {len(out['grid'])}×{len(out['grid'])} over ±{args.span:g} (filter-normalised): "
            f"loss at the weights {out['center_loss']:.4f}, min {min(values):.4f}, max {max(values):.4f}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    report = build_report(RunStore(args.store), dataset=args.dataset)
    files = write_report(report, args.out)
    print(f"wrote {files.html}" + (f" and {files.pdf}" if files.pdf else f" ({files.note})"))
    for row in report.headline:
        for comparison in row.comparisons:
            print(f"  ε={row.epsilon:g}: {cost_phrase(comparison)}")
    print(f"  caveat: {report.caveat}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = RunStore(args.store)
    records = store.list_runs()
    spectra = {r.run_id: s for r in records if (s := run_hessian(store, r.run_id, cached_only=True))}
    data = results_csv(records, spectra) if args.format == "csv" else results_json(records, spectra)
    sys.stdout.write(data.decode())
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    RunStore(args.store).delete(args.run_id)
    print(f"deleted run {args.run_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpsat_core", description="Train and compare DP-SGD, DP-SAM and DP-SAT; runs are stored."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--store", default=default_store_path(), help=f"run store file (default ${STORE_ENV} or {DEFAULT_STORE})"
        )
        p.set_defaults(handler=handler)
        return p

    p = command("train", cmd_train, "train one configuration (reuses a finished run with the same settings)")
    _add_training_options(p, with_method=True)
    p.add_argument("--no-reuse", action="store_true", help="train even if an identical run is stored")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("sweep", cmd_sweep, "train methods × ε values × seeds; cells already done are reused")
    _add_training_options(p, with_method=False)
    p.add_argument("--methods", type=_names, default=("dpsgd", "dpsam", "dpsat"), help="comma-separated")
    p.add_argument(
        "--epsilons",
        type=_list("--epsilons", float),
        default=(1.0, 2.0, 4.0, 8.0),
        help="comma-separated target ε values",
    )
    p.add_argument("--seeds", type=_list("--seeds", int), default=(0,), help="comma-separated")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: up to 2; 1 trains in this process)",
    )
    p.add_argument("--json", action="store_true")

    p = command("runs", cmd_runs, "list stored runs")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--dataset")
    p.add_argument("--method", choices=list(METHODS))
    p.add_argument("--json", action="store_true")

    p = command("show", cmd_show, "show one run with its per-epoch metrics")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")

    p = command("analyze", cmd_analyze, "Hessian spectrum and/or 2D loss landscape of a stored run (cached)")
    p.add_argument("run_id")
    p.add_argument("--hessian", action="store_true", help="top eigenvalues and trace (default: both analyses)")
    p.add_argument("--landscape", action="store_true", help="2D loss surface (default: both analyses)")
    p.add_argument("--k", type=int, default=5, help="number of top eigenvalues")
    p.add_argument("--probes", type=int, default=100, help="Hutchinson probes for the trace")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="training examples in the evaluation subset")
    p.add_argument("--backend", default="lanczos", choices=BACKENDS, help="pyhessian is the slower cross-check")
    p.add_argument("--steps", type=int, default=21, help="grid points per axis (odd)")
    p.add_argument("--span", type=float, default=1.0, help="grid covers [-span, span] on both axes")
    p.add_argument("--device", default="auto")
    p.add_argument("--recompute", action="store_true", help="ignore a cached result")
    p.add_argument("--json", action="store_true")

    p = command("report", cmd_report, "write the pilot report (report.html and report.pdf) from the store")
    p.add_argument("--out", required=True, help="folder for report.html and report.pdf")
    p.add_argument("--dataset", help="data set to report on (default: the setting with the most runs)")

    p = command("export", cmd_export, "print one row per run (config, ε spent, accuracy, λ_max, trace, seconds)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")

    p = command("delete", cmd_delete, "delete one run")
    p.add_argument("run_id")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="opacus")
    try:
        return args.handler(args)
    except DpsatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
