"""Measure the step cost of methods side by side: the "extra compute" figure a comparison shows.

Wall time of separate runs is not a cost ratio: runs overlap, the machine's load
comes and goes, and a step after a long one runs slower. The probe builds every
method on the setting's model and batch size, feeds each the same fixed batch,
runs one step of every method per round in a freshly shuffled order, and
divides each step by its reference's step *in the same round*; the ratio is the
median over rounds, with a 95% confidence interval for that median (order
statistics: the rounds' ratios need no distribution) and the rounds' spread, the
interquartile range. `step_cost` keeps the
probe in the store, keyed by setting and device.

On CPU the probe runs on one torch thread and times each step by the thread's CPU
time, which leaves out the time other work holds the core (bench/RESULTS.md: with
two OpenMP threads on a busy 2-core machine steps ran 10–50× slower and DP-SAT/DP-SGD
read 0.75). On CUDA it times wall clock between synchronisations.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from .compare import setting_key
from .config import TrainConfig
from .devices import cpu_label, cuda_impossible, describe_device, resolve_device
from .methods import METHODS, method_info
from .progress import Progress, ProgressFn, StopFn, check_stop, no_progress
from .results import CostProbe, MethodCost
from .store import RunStore

if TYPE_CHECKING:
    import torch

DEFAULT_ROUNDS = 100
DEFAULT_WARMUP = 5
PROBE_THREADS = 1
SPREAD = "interquartile range of the per-round ratios"
# σ does not change the work of a step; a fixed σ skips calibration (seconds of accountant calls).
PROBE_NOISE_MULTIPLIER = 1.0


def probe_setting(config: TrainConfig) -> str:
    """The `compare.setting_key` that stored runs of `config`'s setting carry: the probe's store key."""
    return setting_key(config)


def with_references(methods: Sequence[str]) -> list[str]:
    """`methods` plus their registry baselines (transitively), each once, in registry order."""
    wanted: set[str] = set()
    for name in methods:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = method_info(name).baseline
    return [m for m in METHODS if m in wanted]


def _reference(method: str, probed: Sequence[str]) -> Optional[str]:
    """The registry baseline; for a private baseline itself, the non-private reference if it was probed."""
    info = METHODS[method]
    if info.baseline is not None:
        return info.baseline
    if info.private:
        return next((m for m in probed if not METHODS[m].private and METHODS[m].baseline is None), None)
    return None


@contextmanager
def _torch_threads(threads: int) -> Iterator[int]:
    """Run with `threads` torch threads, then restore the process's count."""
    if threads < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _clock(device: torch.device, threads: int) -> tuple[str, Callable[[], float]]:
    """Thread CPU time for a one-thread CPU probe (blind to other work on the core), else wall clock."""
    if device.type == "cpu" and threads == 1:
        return "thread CPU time", time.thread_time
    return "wall clock", time.perf_counter


def probe_step_cost(
    config: TrainConfig,
    methods: Sequence[str],
    *,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = DEFAULT_WARMUP,
    seed: int = 0,
    threads: int = PROBE_THREADS,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> CostProbe:
    """Time one step of every method (and its baseline) per round, interleaved; ratios within rounds."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be ≥ 1 and warmup ≥ 0, got rounds={rounds}, warmup={warmup}")
    names = with_references(methods)
    if not names:
        raise ValueError("probe at least one method")
    import torch

    from .data import load_config_dataset
    from .training import prepare, quiet_hooks  # Opacus: only when measuring

    start = time.perf_counter()
    with _torch_threads(threads) as used_threads, quiet_hooks():
        dataset = load_config_dataset(config)
        trainers = {}
        for name in names:
            private = METHODS[name].private
            trainers[name] = prepare(
                dataclasses.replace(
                    config,
                    method=name,
                    seed=seed,
                    epsilon=None,
                    noise_multiplier=PROBE_NOISE_MULTIPLIER if private else None,
                ),
                dataset,
            )
        first = trainers[names[0]]
        device = first.device
        # One fixed batch of exactly batch_size examples for every step: identical work per method and round.
        rows = torch.randperm(dataset.n_train, generator=torch.Generator().manual_seed(seed))[: config.batch_size]
        batch = (first.x_train[rows.to(device)], first.y_train[rows.to(device)])

        def draw():
            return batch

        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        clock_name, clock = _clock(device, used_threads)
        total = warmup + rounds
        for i in range(warmup):
            check_stop(should_stop)
            for trainer in trainers.values():
                trainer.step_fn(draw)
            on_progress(Progress("probe", i + 1, total, "warming up"))
        times: dict[str, list[float]] = {name: [] for name in names}
        order, shuffler = list(names), random.Random(seed)
        for r in range(rounds):
            check_stop(should_stop)
            # A fresh order each round: a rotation would keep each method's predecessor fixed, and a step
            # after a long one runs slower (shared/NOTES.md).
            shuffler.shuffle(order)
            for name in order:
                sync()
                t0 = clock()
                trainers[name].step_fn(draw)
                sync()
                times[name].append(clock() - t0)
            on_progress(Progress("probe", warmup + r + 1, total, f"round {r + 1}/{rounds}"))
        label = describe_device(device)
    costs = tuple(_method_cost(name, _reference(name, names), times) for name in names)
    return CostProbe(
        setting=probe_setting(config),
        device=label,
        threads=used_threads,
        clock=clock_name,
        batch_size=config.batch_size,
        rounds=rounds,
        warmup=warmup,
        spread=SPREAD,
        costs=costs,
        seconds=time.perf_counter() - start,
        created=time.time(),
    )


def median_interval(values: Sequence[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """A distribution-free `level` confidence interval for the median of `values` (i.i.d. draws): the order
    statistics x₍ⱼ₎ ≤ median ≤ x₍ₙ₊₁₋ⱼ₎ with j the largest index whose binomial(n, ½) tail P(B < j) ≤ (1 − level)/2;
    None when n is too small for any such interval (n < 6 at 95%)."""
    n = len(values)
    tail, j, below = (1 - level) / 2, 0, 0.0  # below = P(B ≤ j − 1), B ~ binomial(n, ½)
    while j < n // 2:
        next_below = below + math.comb(n, j) / 2**n
        if next_below > tail:
            break
        j, below = j + 1, next_below
    if j == 0:
        return None
    ordered = sorted(values)
    return ordered[j - 1], ordered[n - j]


def _method_cost(method: str, reference: Optional[str], times: dict[str, list[float]]) -> MethodCost:
    info = METHODS[method]
    ratio = low = high = passes = interval = None
    if reference is not None:
        per_round = [a / b for a, b in zip(times[method], times[reference])]
        ratio = statistics.median(per_round)
        low, high = (ratio, ratio) if len(per_round) < 2 else _quartiles(per_round)
        interval = median_interval(per_round)
        passes = info.backward_passes_per_step / METHODS[reference].backward_passes_per_step
    return MethodCost(
        method=method,
        reference=reference,
        seconds_per_step=statistics.median(times[method]),
        ratio=ratio,
        ratio_low=low,
        ratio_high=high,
        backward_passes_per_step=info.backward_passes_per_step,
        releases_per_step=info.releases_per_step,
        backward_passes_ratio=passes,
        ratio_ci_low=None if interval is None else interval[0],
        ratio_ci_high=None if interval is None else interval[1],
    )


def _quartiles(values: list[float]) -> tuple[float, float]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def probe_device_label(device: str, threads: int) -> str:
    """The device label a probe on `device` with `threads` threads is stored under; without importing torch
    where it can only be the CPU (so a page can read stored probes before any heavy import)."""
    if threads >= 1 and (device == "cpu" or (device == "auto" and cuda_impossible())):
        return cpu_label(threads)
    with _torch_threads(threads):
        return describe_device(resolve_device(device))


def step_cost(
    store: RunStore,
    config: TrainConfig,
    methods: Sequence[str],
    *,
    device: Optional[str] = None,
    threads: int = PROBE_THREADS,
    recompute: bool = False,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = DEFAULT_WARMUP,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    cached_only: bool = False,
) -> Optional[CostProbe]:
    """The stored probe of this setting and device if it covers `methods`, else a new one (then stored;
    with `cached_only`, None instead of measuring).

    `device` None means the config's. A re-probe also covers the methods the stored probe had, so the
    row never loses a method.
    """
    config = dataclasses.replace(config, device=config.device if device is None else device)
    label = probe_device_label(config.device, threads)
    wanted = with_references(methods)
    stored = store.find_probe(probe_setting(config), label)
    if stored is not None and not recompute and set(wanted) <= set(stored.methods):
        return stored
    if cached_only:
        return None
    if stored is not None:
        wanted = with_references([*wanted, *stored.methods])
    probe = probe_step_cost(
        config,
        wanted,
        rounds=rounds,
        warmup=warmup,
        threads=threads,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    store.save_probe(probe)
    return probe
