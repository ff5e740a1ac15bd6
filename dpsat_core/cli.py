"""Command line: `dpsat` (or `python -m dpsat_core`)
train|sweep|audit|runs|show|analyze|report|export|delete|dashboard.

Errors caused by input print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from .analysis import ANALYSES, analysed_cells, analyze, cached_analyses
from .caveats import TRAINING_DATA, randomness_note
from .compare import (
    Comparison,
    PairedRatio,
    SharpnessRatio,
    comparisons,
    describe_setting,
    diverged_left_out,
    diverged_note,
    interval_scope,
    one_class_note,
    pick_setting,
    setting_key,
    verdict,
)
from .config import (
    ACCOUNTANTS,
    AUDIT_MODES,
    CLIPPINGS,
    DEFAULT_CANARIES,
    DEVICES,
    HESSIAN_BACKENDS,
    MIN_CANARIES,
    MODELS,
    PREPROCESSINGS,
    TrainConfig,
    parse_numbers,
)
from .data import FILE_TYPES
from .data.builtin import BUILTIN
from .devices import check_device
from .errors import ConfigError, DpsatError
from .interrupts import StopRequest, stop_on_signals
from .methods import METHODS, rho_methods
from .progress import Cancelled, Progress, no_progress
from .results import RunRecord, counted, strict_json
from .results import format_number as _fmt
from .store import STATUSES, STORE_ENV, RunStore, default_store_path
from .sweeps import default_workers


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, `error: … (see dpsat COMMAND --help)`, with exit status 2, like every other
    bad input (argparse's default prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


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
        help=f"built-in name ({', '.join(BUILTIN)}) or a path: {' or '.join(FILE_TYPES)} "
        "(a CSV needs --target), or a folder of IDX/CIFAR-10 files",
    )
    p.add_argument("--target", help="label column of a CSV file")
    p.add_argument(
        "--schema",
        help="JSON or TOML file of public facts about your table: column bounds (min, max), categories, classes; "
        "columns without bounds are scaled by statistics released with noise and charged to ε",
    )
    p.add_argument(
        "--preprocessing-share",
        type=float,
        default=d.preprocessing_share,
        help="share of ε for the released scaling statistics of numeric columns without public bounds "
        f"(default {d.preprocessing_share:g}; composed with training, so the run's total ε stays the target)",
    )
    p.add_argument(
        "--preprocessing",
        default=d.preprocessing,
        choices=PREPROCESSINGS,
        help="private: fixed scales, schema bounds or noisy statistics, all covered by ε; "
        "fitted: earlier versions' scaling from the training rows without noise (not covered by ε)",
    )
    p.add_argument("--dataset-size", type=int, help="examples to generate for mnist1d/synthetic")
    if with_method:
        p.add_argument("--method", default=d.method, choices=list(METHODS))
        p.add_argument("--epsilon", type=float, help="target ε (σ is calibrated); default 3 for private methods")
        p.add_argument("--sigma", type=float, help="noise multiplier σ instead of a target ε")
        p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--delta", type=float, help="δ (default: the largest power of ten ≤ 1/(10n))")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="expected batch size under Poisson sampling")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--clip", type=float, default=d.clip_norm, help="per-example clipping norm C")
    p.add_argument("--rho", type=float, default=d.rho, help=f"perturbation radius ρ of {rho_methods()}")
    p.add_argument("--accountant", default=d.accountant, choices=ACCOUNTANTS)
    p.add_argument(
        "--clipping",
        default=d.clipping,
        choices=CLIPPINGS,
        help="per-example clipping of private methods: fast (exact, one backward pass) or hooks (Opacus, reference)",
    )
    p.add_argument("--model", default=d.model, choices=MODELS)
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the train/validation/test split")
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=d.validation_fraction,
        help="share of the training rows held out to choose ρ, lr or C on (0: none); verdicts use test accuracy",
    )
    p.add_argument(
        "--physical-batch-size",
        type=int,
        default=d.max_physical_batch_size,
        help="largest chunk per backward pass (memory only)",
    )
    p.add_argument(
        "--device", default=d.device, help=f"one of {', '.join(DEVICES)} or cuda:N (auto: CUDA when present)"
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="release mode: noise and batch sampling from the OS entropy source, never stored (runs differ); "
        "default: research mode, seeded from --seed (reproducible, for research, not for release)",
    )


def _absolute(path: Optional[str]) -> Optional[str]:
    """A file the user named, made absolute so that its stored runs find it from any directory; a built-in name,
    or a path that does not exist (its error then quotes what was typed), as it is."""
    if path is None or path in BUILTIN or not os.path.exists(os.path.expanduser(path)):
        return path
    return os.path.realpath(os.path.expanduser(path))


def _config(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    fields = dict(
        dataset=_absolute(args.dataset),
        target=args.target,
        schema=_absolute(args.schema),
        preprocessing_share=args.preprocessing_share,
        preprocessing=args.preprocessing,
        dataset_size=args.dataset_size,
        delta=args.delta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        clip_norm=args.clip,
        rho=args.rho,
        accountant=args.accountant,
        clipping=args.clipping,
        model=args.model,
        split_seed=args.split_seed,
        validation_fraction=args.validation_fraction,
        max_physical_batch_size=args.physical_batch_size,
        device=args.device,
        randomness="release" if args.secure else "research",
    )
    fields.update(overrides)
    return TrainConfig(**fields)


class _StderrProgress:
    """One overwritten line on a terminal; in a pipe or a log, one line per stage, per finished stage and per
    sweep cell planned, started or finished (a report with an "event")."""

    def __init__(self) -> None:
        self.last: Optional[tuple[str, bool]] = None
        self.open = False  # a terminal line drawn and not yet ended

    def __call__(self, p: Progress) -> None:
        count = f"{p.done}/{p.total} " if p.total else ""  # a sweep with nothing to train counts nothing
        if sys.stderr.isatty():
            print(f"\r[{p.stage}] {count}{p.message[:70]:<70}", end="", file=sys.stderr, flush=True)
            self.open = True
            return
        mark = (p.stage, p.done >= p.total)
        if mark != self.last or "event" in p.metrics:
            self.last = mark
            print(f"[{p.stage}] {count}{p.message}", file=sys.stderr, flush=True)

    def end_line(self) -> None:
        """End the terminal line progress drew, if it drew one (no blank line when nothing was shown)."""
        if self.open:
            print(file=sys.stderr)
            self.open = False


_stderr_progress = _StderrProgress()


def _print_json(data: Any) -> None:
    """One strict JSON document on stdout (an infinite ε is written "inf", never the invalid Infinity)."""
    print(json.dumps(strict_json(data), allow_nan=False))


def _print_run(record: RunRecord) -> None:
    s = record.summary
    rho = f" ρ={record.config.rho:g}" if METHODS[record.method].uses_rho else ""
    print(
        f"run {record.run_id}  {record.method}{rho} on {record.config.dataset}  status={record.status}"
        + (f"  ({record.reason})" if record.reason else "")
    )
    if s is not None and s.noise_multiplier is not None:
        print(
            f"  privacy: ε spent={_fmt(s.epsilon_spent, '.3f')} (target {_fmt(s.target_epsilon, 'g')}), "
            f"δ={s.delta:g}, σ={s.noise_multiplier:.4f}, q={s.sample_rate:.4f}, "
            f"{s.steps} steps, {s.releases} releases, {s.accountant}"
        )
    print(f"  {record.privacy_note}")
    if randomness_note(record.config):
        print(f"  {randomness_note(record.config)}")
    print(
        f"  {'epoch':>5} {'train loss':>10} {'test loss':>10} {'test acc':>8} {'val acc':>7} {'ε spent':>7} "
        f"{'seconds':>8}"
    )
    for e in record.epochs:
        print(
            f"  {e.epoch:>5} {e.train_loss:>10.4f} {e.test_loss:>10.4f} {e.test_accuracy:>8.4f} "
            f"{_fmt(e.validation_accuracy, '.4f'):>7} {_fmt(e.epsilon_spent, '.3f'):>7} {e.seconds:>8.2f}"
        )
    if record.epochs:
        print(f"  train loss and seconds (which track the Poisson batch sizes): {TRAINING_DATA}")
    note = one_class_note([record])
    if note:
        print(f"  note: {note}")


def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_config_dataset
    from .planning import plan_run
    from .runner import run  # heavy: only for this command, so --help and runs start fast

    config = _config(args, method=args.method, epsilon=args.epsilon, noise_multiplier=args.sigma, seed=args.seed)
    progress = no_progress if args.json else _stderr_progress
    with stop_on_signals() as stop:
        try:
            if not _store_file(args.store).exists():  # bad input must leave no file behind: plan before creating it
                plan_run(config, load_config_dataset(config), should_stop=stop)
            store = RunStore(args.store)
            outcome = run(config, store, on_progress=progress, should_stop=stop, reuse=not args.no_reuse)
        except Cancelled:  # stopped before it trained (while planning, or waiting for the same settings elsewhere)
            print(f"\nstopped by {stop.name} before training: nothing was stored; {_RESUME}", file=sys.stderr)
            return stop.exit_code
    record = outcome.record
    _stderr_progress.end_line()
    if stop():
        print(f"stopped by {stop.name}: run {record.run_id} is stored as {record.status}; {_RESUME}", file=sys.stderr)
    if args.json:
        _print_json(
            {
                "run_id": record.run_id,
                "reused": outcome.reused,
                **(record.summary.readable_dict() if record.summary else {}),
                "status": record.status,
                "reason": record.reason,
                "privacy_note": record.privacy_note,
            }
        )
    else:
        if outcome.reused:
            print(f"reused finished run {record.run_id} with the same settings (pass --no-reuse to retrain)")
        _print_run(record)
    return stop.exit_code if stop() else 0 if record.status == "done" else 1


_RESUME = "run the same command again to resume (finished runs are reused)"


def _stopped(stop: StopRequest, result: Any) -> str:
    """What a sweep stopped by a signal did and left, and how to resume it."""
    return (
        f"stopped by {stop.name}: {counted(len(result.trained), 'run')} trained, {len(result.stopped)} cancelled"
        f" while training (stored as cancelled), {counted(len(result.skipped), 'cell')} not started; {_RESUME}"
    )


def _cluster(args: argparse.Namespace) -> Any:
    """The Ray cluster of `sweep --executor ray` (address: --address, else $DPSAT_RAY_ADDRESS), or None."""
    from .cluster import ADDRESS_ENV, RayCluster

    if args.executor != "ray":
        if args.address is not None or args.gpus_per_run is not None:
            raise ConfigError("--address and --gpus-per-run apply to --executor ray only")
        return None
    address = args.address or os.environ.get(ADDRESS_ENV) or None
    return RayCluster(address=address, gpus_per_run=args.gpus_per_run or 0.0)


def cmd_audit(args: argparse.Namespace) -> int:
    from .auditing import audit  # heavy: only for this command, so --help and runs start fast

    config = _config(args, method=args.method, epsilon=args.epsilon, noise_multiplier=args.sigma, seed=args.seed)
    outcome = audit(
        config,
        RunStore(args.store),
        mode=args.mode,
        canaries=args.canaries,
        on_progress=no_progress if args.json else _stderr_progress,
    )
    result = outcome.result
    _stderr_progress.end_line()
    if result is None:
        record = outcome.record
        print(f"audit run {record.run_id} ended {record.status} ({record.reason}): no bound", file=sys.stderr)
        return 1
    if args.json:
        _print_json(result.cli_dict())
    else:
        print(
            f"audit run {result.run_id}: {result.method} on {result.dataset}, {result.mode}, "
            f"{result.canaries} canaries ({result.included} trained on), {result.releases} noisy releases\n"
            f"  {result.correct} of {result.guesses} guesses right → ε ≥ {result.epsilon_lower_bound:.3f} "
            f"at {result.confidence:.0%} confidence (δ={result.delta:g}); the accountant's ε = "
            f"{_fmt(result.epsilon_spent, '.3f')}\n"
            f"  membership AUC on the canaries: {result.auc:.3f} ± {result.auc_stderr:.3f} (standard error)"
        )
    return 0


def _store_file(store_path: Optional[str]) -> Path:
    """The file `RunStore(store_path)` opens (and creates), found without creating it."""
    return Path(default_store_path() if store_path is None else store_path).expanduser()


def _cells_left(spec: Any, store_path: Optional[str]) -> list[TrainConfig]:
    """The cells of `spec` without a finished run that the sweep will reuse (same settings and data; cheap, before
    torch or Opacus is imported). A store not written yet has none, and is not created here: bad input must leave
    no file behind."""
    from .runner import reusable_run

    cells = spec.cells()
    if not _store_file(store_path).exists():
        return cells
    store = RunStore(store_path)
    return [cell for cell in cells if reusable_run(store, cell) is None]


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweeps import SweepSpec, check_cells, sweep  # heavy: only for this command, so --help and runs start fast
    from .workers import warming

    spec = SweepSpec(
        base=_config(args), methods=args.methods, epsilons=args.epsilons, seeds=args.seeds, rhos=args.rhos or ()
    )
    cluster = _cluster(args)
    if cluster is None:  # as `dpsat train`: CUDA asked for but absent is an error even where every cell is reused
        check_device(spec.base.device)
    left = _cells_left(spec, args.store)
    pool = cluster is None and args.workers > 1 and len(left) > 1
    with warming(pool):  # the pool's fork server imports torch and Opacus while the grid is checked, not after
        check_cells(left, device_here=cluster is None)  # a cell to be reused needs no check, nor torch
    store = RunStore(args.store)
    progress = no_progress if args.json else _stderr_progress
    with stop_on_signals() as stop:
        result = sweep(spec, store, workers=args.workers, cluster=cluster, on_progress=progress, should_stop=stop)
    if args.json:
        _print_json(
            {
                "reused": result.reused,
                "trained": result.trained,
                "failed": result.failed,
                "errors": result.errors,
                "cancelled": result.cancelled,
                "stopped": result.stopped,
                "skipped": result.skipped,
            }
        )
    else:
        _stderr_progress.end_line()
        # every failed cell leaves one error, also those that wrote no row (a worker that died, a refused cell)
        print(f"sweep: {len(result.trained)} trained, {len(result.reused)} reused, {len(result.errors)} failed")
        for error in result.errors:
            print(f"  error: {error}")
        records = [store.get(r) for r in result.run_ids + result.stopped]
        if records:  # a sweep stopped before training, or whose cells all failed, prints no empty table
            _print_table(records)
        note = one_class_note(records)
        if note:
            print(f"note: {note}")
    if stop():
        print(_stopped(stop, result), file=sys.stderr)
        return stop.exit_code
    return 0 if not (result.failed or result.errors) else 1


def _print_table(records: Sequence[RunRecord]) -> None:
    print(
        f"{'run_id':<12} {'status':<9} {'method':<6} {'dataset':<14} {'seed':>4} {'noise':<8} {'target ε':>8} "
        f"{'ρ':>5} {'ε spent':>7} {'acc':>7}"
    )
    for r in records:
        rho = _fmt(r.config.rho if METHODS[r.method].uses_rho else None, "g")
        noise = r.config.randomness if r.config.private else "–"  # research (seeded) or release
        print(
            f"{r.run_id:<12} {r.status:<9} {r.method:<6} {r.config.dataset[:14]:<14} {r.config.seed:>4} {noise:<8} "
            f"{_fmt(r.target_epsilon, 'g'):>8} {rho:>5} {_fmt(r.epsilon_spent, '.3f'):>7} "
            f"{_fmt(r.test_accuracy, '.4f'):>7}"
            + (f"  audit run ({r.config.audit_mode})" if r.config.audit else "")
            + ("  one class predicted" if one_class_note([r]) else "")
        )


def cmd_runs(args: argparse.Namespace) -> int:
    store = RunStore(args.store)
    records = store.list_runs(status=args.status, dataset=_absolute(args.dataset), method=args.method)
    # the store in use goes to stderr with --json, so stdout stays one JSON document
    print(f"store: {store.path} ({counted(len(records), 'run')} listed)", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json([r.to_dict() for r in records])
    else:
        _print_table(records)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    record = RunStore(args.store).get(args.run_id)
    if args.json:
        _print_json(record.to_dict(with_epochs=True))
    else:
        _print_run(record)
    return 0


# CLI option -> analysis setting it sets (for every chosen kind that has that setting)
_ANALYSIS_OPTIONS = {
    "k": "k",
    "probes": "trace_probes",
    "samples": "n_samples",
    "backend": "backend",
    "steps": "steps",
    "span": "span",
    "draws": "draws",
    "scales": "scales",
    "other": "other",
}


def _describe(kind: str, result: Any) -> str:
    """One line per analysis for the terminal."""
    if kind == "hessian":
        return (
            f"Hessian ({result.backend}, {result.n_samples} training examples): top eigenvalues "
            + ", ".join(f"{v:.4g}" for v in result.top)
            + f"; trace {result.trace:.4g} ± {result.trace_stderr:.2g} ({result.trace_probes} probes)"
        )
    if kind == "adaptive":
        return (
            f"adaptive sharpness ({result.n_samples} training examples): λ_max of diag(|w|)·H·diag(|w|) "
            f"{result.lambda_max:.4g}"
        )
    if kind == "surface":
        values = [v for row in result.loss for v in row if v is not None]
        return (
            f"landscape {len(result.axis)}×{len(result.axis)} (filter-normalised): loss at the weights "
            f"{result.center_loss:.4f}, min {min(values):.4f}, max {max(values):.4f}"
        )
    if kind == "noise":
        return "noise robustness: " + ", ".join(
            f"s={s:g}: +{m:.4f}" for s, m in zip(result.scales, result.mean_increase)
        )
    values = [v for v in result.loss if v is not None]
    return f"{ANALYSES[kind].label}: {len(result.axis)} points, loss {min(values):.4f} to {max(values):.4f}"


def cmd_analyze(args: argparse.Namespace) -> int:
    store = RunStore(args.store)
    chosen = [*(args.kind or []), *(["hessian"] if args.hessian else []), *(["surface"] if args.landscape else [])]
    kinds = list(dict.fromkeys(chosen)) or ["hessian", "surface"]
    given = {setting: getattr(args, option) for option, setting in _ANALYSIS_OPTIONS.items()}
    progress = no_progress if args.json else _stderr_progress
    out: dict[str, Any] = {"run_id": args.run_id}
    for kind in kinds:
        settings = {k: v for k, v in given.items() if k in ANALYSES[kind].defaults and v is not None}
        result = analyze(
            store, args.run_id, kind, recompute=args.recompute, device=args.device, on_progress=progress, **settings
        )
        out[kind] = result.to_dict()
        if not args.json:
            _stderr_progress.end_line()
            print(_describe(kind, result))
    if args.json:
        _print_json(out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, write_report  # heavy: only for this command, so --help and runs start fast

    report = build_report(RunStore(args.store), dataset=_absolute(args.dataset), setting=args.setting)
    files = write_report(report, args.out)
    print(f"wrote {files.html}" + (f" and {files.pdf}" if files.pdf else f" ({files.note})"))
    for row in report.headline:
        for comparison in row.comparisons:
            print(f"  {verdict(comparison)}")
    print(f"  caveat: {report.caveat}")
    print(f"  not covered by ε: {report.uncovered}")
    return 0


def _ratio_json(key: str, ratio: Optional[SharpnessRatio]) -> dict[str, Any]:
    """`key` (the geometric mean), `key_ci` ([low, high], null with one pair), `key_pairs` and `key_withheld` (the
    seeds with an analysed value ≤ 0, where no ratio is shown; else null); all null when not analysed."""
    if not isinstance(ratio, PairedRatio):
        withheld = list(ratio.nonpositive_seeds) if ratio is not None else None
        return {key: None, f"{key}_ci": None, f"{key}_pairs": None, f"{key}_withheld": withheld}
    ci = None if ratio.ci_low is None else [ratio.ci_low, ratio.ci_high]
    return {key: ratio.ratio, f"{key}_ci": ci, f"{key}_pairs": ratio.n_pairs, f"{key}_withheld": None}


def _comparison_json(c: Comparison) -> dict[str, Any]:
    """One compared cell as `dpsat compare --json` prints it (keys documented in the README)."""
    low, high = c.ci_points
    return {
        "method": c.method,
        "baseline": c.baseline,
        "target_epsilon": c.target_epsilon,
        "noise_multiplier": c.noise_multiplier,
        "epsilon_spent": c.epsilon_spent,
        "rho": c.rho,
        "n_pairs": c.accuracy.n_pairs,
        "gain_points": c.gain_points,
        "ci_low": low,
        "ci_high": high,
        "n_test": c.accuracy.n_test,
        "exact_test_pairs": c.accuracy.exact_pairs,
        "cost_ratio": None if c.cost is None else c.cost.ratio,
        "cost_ratio_spread": None if c.cost is None else [c.cost.ratio_low, c.cost.ratio_high],
        "cost_ratio_ci": None
        if c.cost is None or c.cost.ratio_ci_low is None
        else [c.cost.ratio_ci_low, c.cost.ratio_ci_high],
        "backward_passes_ratio": c.backward_passes_ratio,
        "releases_ratio": c.releases_ratio,
        **_ratio_json("lambda_max_ratio", c.lambda_max_ratio),
        **_ratio_json("sharpness_ratio", c.sharpness_ratio),
        "chosen_by_validation": c.chosen_by_validation,
        "validation_pick": c.validation_pick,
        "verdict": verdict(c),
    }


def cmd_compare(args: argparse.Namespace) -> int:
    from .probe import step_cost  # heavy: only for this command, so --help and runs start fast

    store = RunStore(args.store)
    records = store.list_runs()
    runs = pick_setting(
        records, dataset=_absolute(args.dataset), setting=args.setting, include_diverged=args.include_diverged
    )
    stats = analysed_cells(store, runs, include_diverged=args.include_diverged)
    left_out = diverged_note(diverged_left_out(records, setting_key(runs[0])), included=args.include_diverged)
    notes = [n for n in (left_out, one_class_note(runs)) if n]
    methods = [c.method for c in stats if c.private]
    progress = no_progress if args.json else _stderr_progress
    cost = step_cost(store, runs[0].config, methods, cached_only=args.no_probe, on_progress=progress)
    _stderr_progress.end_line()
    compared = comparisons(stats, cost=cost)
    if args.json:
        for note in notes:  # stdout stays one JSON document
            print(f"note: {note}", file=sys.stderr)
        _print_json([_comparison_json(c) for c in compared])
        return 0
    print(f"setting {describe_setting(runs[0])} ({len(runs)} runs)")
    for note in notes:
        print(f"  note: {note}")
    for c in compared:
        print(f"  {verdict(c)}")
    if interval_scope(compared):
        print(f"  {interval_scope(compared)}")
    if not compared:
        print("  no method has both its own runs and its baseline's at one privacy level yet")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import results_csv, results_json  # heavy: only for this command, so --help and runs start fast

    store = RunStore(args.store)
    records = store.list_runs()
    spectra = cached_analyses(store, [r.run_id for r in records], "hessian")
    data = results_csv(records, spectra) if args.format == "csv" else results_json(records, spectra)
    sys.stdout.write(data.decode())
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    RunStore(args.store).delete(args.run_id)
    print(f"deleted run {args.run_id}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .serve import launch

    os.environ[STORE_ENV] = str(args.store)  # the dashboard's server reads the same store
    if args.operator:
        os.environ["DPSAT_OPERATOR"] = "1"  # every session may cancel and clear every job
    return launch(port=args.port, address=args.address, production=args.production)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dpsat",
        description=f"Train and compare {', '.join(m.label for m in METHODS.values() if m.private)}; runs are stored.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        # help is %-formatted by argparse, a description is not: it gets the text as printed
        p = sub.add_parser(name, help=help_text, description=help_text.replace("%%", "%"))
        p.add_argument(
            "--store",
            default=default_store_path(),
            help=f"run store file (default ${STORE_ENV}, else the per-user data folder: %(default)s)",
        )
        p.set_defaults(handler=handler)
        return p

    p = command("train", cmd_train, "train one configuration (reuses a finished run with the same settings)")
    _add_training_options(p, with_method=True)
    p.add_argument("--no-reuse", action="store_true", help="train even if an identical run is stored")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("sweep", cmd_sweep, "train methods × ε values × seeds; cells already done are reused")
    _add_training_options(p, with_method=False)
    private = tuple(name for name, m in METHODS.items() if m.private)
    p.add_argument("--methods", type=_names, default=private, help=f"comma-separated (default: {','.join(private)})")
    p.add_argument(
        "--epsilons",
        type=_list("--epsilons", float),
        default=(1.0, 2.0, 4.0, 8.0),
        help="comma-separated target ε values",
    )
    p.add_argument("--seeds", type=_list("--seeds", int), default=(0,), help="comma-separated")
    p.add_argument(
        "--rhos",
        type=_list("--rhos", float),
        help=f"comma-separated ρ values for {rho_methods()}, one cell each (default: --rho)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker processes of the local executor (default: up to 2; 1 trains in this process)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: processes on this machine; ray: one Ray task per cell, results stored here",
    )
    p.add_argument(
        "--address", help="Ray cluster address (host:6379, ray://host:10001, auto; default $DPSAT_RAY_ADDRESS)"
    )
    p.add_argument("--gpus-per-run", type=float, help="GPUs each Ray task asks for (default 0; a fraction shares one)")
    p.add_argument("--json", action="store_true")

    p = command(
        "audit",
        cmd_audit,
        "train one audit run with canaries and bound its ε from below at 95%% confidence (Steinke et al. 2023)",
    )
    _add_training_options(p, with_method=True)
    p.add_argument(
        "--mode",
        default=AUDIT_MODES[0],
        choices=AUDIT_MODES,
        help="whitebox: gradient canaries, every released noisy gradient observed; blackbox: mislabelled "
        "training rows, final model only",
    )
    p.add_argument(
        "--canaries",
        type=int,
        default=DEFAULT_CANARIES,
        help=f"canaries, each trained on with probability 1/2 (≥ {MIN_CANARIES})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("runs", cmd_runs, "list stored runs")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--dataset")
    p.add_argument("--method", choices=list(METHODS))
    p.add_argument("--json", action="store_true")

    p = command("show", cmd_show, "show one run with its per-epoch metrics")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")

    p = command("analyze", cmd_analyze, "sharpness analyses of a stored run (cached in the store)")
    p.add_argument("run_id")
    kinds_help = "; ".join(f"{name}: {kind.help}" for name, kind in ANALYSES.items())
    p.add_argument(
        "--kind",
        action="append",
        choices=list(ANALYSES),
        help=f"analysis to run, repeatable (default: hessian and surface). {kinds_help}",
    )
    p.add_argument("--hessian", action="store_true", help="shorthand for --kind hessian")
    p.add_argument("--landscape", action="store_true", help="shorthand for --kind surface")

    def defaults(setting: str) -> str:
        found = [f"{name} {kind.defaults[setting]}" for name, kind in ANALYSES.items() if setting in kind.defaults]
        return "default: " + ", ".join(found)

    p.add_argument("--k", type=int, help=f"number of top eigenvalues ({defaults('k')})")
    p.add_argument("--probes", type=int, help=f"Hutchinson probes for the trace ({defaults('trace_probes')})")
    p.add_argument("--samples", type=int, help=f"training examples in the evaluation subset ({defaults('n_samples')})")
    p.add_argument(
        "--backend", choices=HESSIAN_BACKENDS, help=f"pyhessian is the slower cross-check ({defaults('backend')})"
    )
    p.add_argument("--steps", type=int, help=f"grid points per axis, odd ({defaults('steps')})")
    p.add_argument("--span", type=float, help=f"the grid covers [-span, span] ({defaults('span')})")
    p.add_argument("--draws", type=int, help=f"noise draws per scale ({defaults('draws')})")
    p.add_argument("--scales", type=_list("--scales", float), help=f"relative noise sizes ({defaults('scales')})")
    p.add_argument("--other", help="the other run of the line analysis (t = 1)")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} or cuda:N")
    p.add_argument("--recompute", action="store_true", help="ignore a cached result")
    p.add_argument("--json", action="store_true", help="print one JSON object: run_id and one entry per analysis")

    p = command("compare", cmd_compare, "each method against its baseline, paired by seed, with 95%% intervals")
    p.add_argument("--dataset", help="data set to compare on (default: the setting with the most runs)")
    p.add_argument("--setting", help="setting key (or its prefix), as `dpsat compare` prints it")
    p.add_argument("--json", action="store_true", help="print one JSON list: one object per compared cell")
    p.add_argument(
        "--no-probe", action="store_true", help="use a stored step-cost probe only; never measure (about 30 s)"
    )
    p.add_argument(
        "--include-diverged",
        action="store_true",
        help="count runs whose training loss ended over 10× its start (left out by default)",
    )

    p = command("report", cmd_report, "write the pilot report (report.html and report.pdf) from the store")
    p.add_argument("--out", required=True, help="folder for report.html and report.pdf")
    p.add_argument("--setting", help="setting key (or its prefix), as `dpsat compare` prints it")
    p.add_argument("--dataset", help="data set to report on (default: the setting with the most runs)")

    p = command("export", cmd_export, "print one row per run (config, ε spent, accuracy, λ_max, trace, seconds)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")

    p = command("delete", cmd_delete, "delete one run")
    p.add_argument("run_id")

    p = command("dashboard", cmd_dashboard, "start the Streamlit dashboard with the project's server settings")
    p.add_argument("--port", type=int, help="port to serve on (default: Streamlit's, 8501)")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument(
        "--production",
        action="store_true",
        help="for a server others use: errors show no details or tracebacks (they go to the log), no file watcher",
    )
    p.add_argument(
        "--operator",
        action="store_true",
        help="let every session cancel and clear every job (default: only its own; or set DPSAT_OPERATOR=1)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="opacus")  # its known-harmless warnings (shared/NOTES.md)
            return args.handler(args)
    except DpsatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`dpsat show ID | head -1`): nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail again
        return 128 + 13  # as a shell reports a command ended by SIGPIPE
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second signal, or one before the command could stop cleanly
        resumable = args.command in ("train", "sweep")  # the commands whose finished runs a rerun reuses
        print("\ninterrupted" + (f": {_RESUME}" if resumable else ""), file=sys.stderr)
        return 130


def main_entry() -> None:
    """The `dpsat` console script."""
    sys.exit(main())
