"""Validate once: a config plus its data set become the run's plan (privacy, model, device) or one clear error.

`run`, `prepare` and the sweep's pre-check all call `plan_run`, so every check
that depends on the data (batch ≤ n, δ < 1/n, the model fits the data, CUDA
present, ε reachable) happens before anything is written to a store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .accounting import (
    AnswerBook,
    History,
    PrivacySpent,
    calibrate_noise,
    recorded_calibration,
    recorded_epsilon,
    recorded_epsilon_curve,
)
from .config import TrainConfig, resolve_for_data
from .data import Dataset
from .data.scaling import STATISTICS_RELEASES
from .devices import device_name
from .methods import method_info
from .progress import StopFn
from .results import ModelSpec, model_spec


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """The privacy parameters fixed before training: σ, q, δ and the planned releases."""

    noise_multiplier: Optional[float]
    sample_rate: float
    delta: Optional[float]
    steps: int
    planned_releases: int
    target_epsilon: Optional[float]
    planned_epsilon: Optional[float]  # ε after all planned releases (≤ the target; for σ runs, what σ gives)
    accountant: Optional[str]
    note: str = ""
    prior: History = ()  # releases before training (the scaling statistics), composed into every ε


def epoch_releases(plan: PrivacyPlan, epochs: int) -> tuple[int, ...]:
    """The releases a run of this plan has made after each epoch when every step makes its declared releases."""
    return tuple(plan.planned_releases // epochs * epoch for epoch in range(1, epochs + 1))


def record_epoch_epsilons(
    plan: PrivacyPlan, epochs: int, book: Optional[AnswerBook], *, should_stop: Optional[StopFn] = None
) -> tuple[PrivacySpent, ...]:
    """The ε a run of this plan reports after each epoch, as training asks it (`epoch_releases`; one PRV domain for
    all, `epsilon_curve`), from `book` where it holds them, else computed and written there; a sweep's parent
    does this once per distinct question, so its workers, and each seed, only read them. () for a non-private
    plan. `should_stop()` can end the computation between two epochs' compositions (`Cancelled`)."""
    if plan.noise_multiplier is None:
        return ()
    return recorded_epsilon_curve(
        book,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        releases=epoch_releases(plan, epochs),
        delta=plan.delta,
        accountant=plan.accountant,
        prior=plan.prior,
        should_stop=should_stop,
    )


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What training a config on a data set will do: its privacy plan, model and device."""

    privacy: PrivacyPlan
    model: ModelSpec
    device: str


def plan_privacy(
    config: TrainConfig,
    n_train: int,
    book: Optional[AnswerBook] = None,
    *,
    prior: History = (),
    should_stop: Optional[StopFn] = None,
) -> PrivacyPlan:
    """Fix σ (calibrated for all planned releases after the `prior` ones when a target ε is given, so that
    their composition is the target), q, δ and steps; accountant answers come from `book` (the run store)
    when it holds them. `should_stop()` can end σ's search between evaluations (`Cancelled`)."""
    delta = resolve_for_data(config, n_train)
    sample_rate = config.batch_size / n_train
    steps = config.epochs * max(1, round(n_train / config.batch_size))
    info = method_info(config.method)
    common = dict(sample_rate=sample_rate, steps=steps)
    if not info.private:
        return PrivacyPlan(
            noise_multiplier=None,
            delta=None,
            planned_releases=0,
            target_epsilon=None,
            planned_epsilon=None,
            accountant=None,
            **common,
        )
    releases = steps * info.releases_per_step
    if config.noise_multiplier is not None:  # account the whole run now: an accountant failure stops it here
        planned = recorded_epsilon(
            book,
            noise_multiplier=config.noise_multiplier,
            sample_rate=sample_rate,
            releases=releases,
            delta=delta,
            accountant=config.accountant,
            prior=prior,
        )
        return PrivacyPlan(
            noise_multiplier=config.noise_multiplier,
            delta=delta,
            planned_releases=releases,
            target_epsilon=None,
            planned_epsilon=planned.epsilon,
            accountant=planned.accountant,
            note=planned.note,
            prior=prior,
            **common,
        )
    calibration = recorded_calibration(
        book,
        target_epsilon=config.epsilon,
        delta=delta,
        sample_rate=sample_rate,
        releases=releases,
        accountant=config.accountant,
        prior=prior,
        should_stop=should_stop,
    )
    return PrivacyPlan(
        noise_multiplier=calibration.noise_multiplier,
        delta=delta,
        planned_releases=releases,
        target_epsilon=config.epsilon,
        planned_epsilon=config.epsilon,
        accountant=calibration.accountant,
        note=calibration.note,
        prior=prior,
        **common,
    )


def statistics_share(config: TrainConfig) -> str:
    """What part of the budget the released scaling statistics take, in words ("" for a non-private run)."""
    if not config.private:
        return ""
    of = f"the target ε={config.epsilon:g}" if config.noise_multiplier is None else "the training releases' ε"
    return f"{config.preprocessing_share:.0%} of {of} on their own, composed with training by the accountant"


def statistics_noise(config: TrainConfig, n_train: int) -> Optional[float]:
    """The noise multiplier of the scaling statistics a private run releases: calibrated so that they alone spend
    `preprocessing_share` of the target ε (with σ given: of the training releases' ε), at the run's δ. None for
    a non-private run, which computes them without noise and claims no ε."""
    if not config.private:
        return None
    delta = resolve_for_data(config, n_train)
    if config.noise_multiplier is None:
        budget = config.preprocessing_share * config.epsilon
    else:
        budget = config.preprocessing_share * plan_privacy(config, n_train).planned_epsilon
        if not math.isfinite(budget):  # σ = 0: no privacy anywhere, so no noise on the statistics either
            return 0.0
    return calibrate_noise(
        target_epsilon=budget,
        delta=delta,
        sample_rate=1.0,
        releases=STATISTICS_RELEASES,
        accountant=config.accountant,
    ).noise_multiplier


def plan_run(
    config: TrainConfig,
    dataset: Dataset,
    book: Optional[AnswerBook] = None,
    *,
    device_here: bool = True,
    should_stop: Optional[StopFn] = None,
) -> RunPlan:
    """Check `config` against `dataset` (as `load_config_dataset` gives it) and fix its plan, composing any
    released scaling statistics into its ε (accountant answers from `book` when it has them); raises
    `ConfigError` with the fix, `Cancelled` when `should_stop()` ends σ's search. With `device_here=False` (a run
    trained on another machine) the device stays a name for that machine to resolve."""
    if dataset.pending:  # a programming error: the features' scale has not been released yet
        raise RuntimeError(f"{dataset.name}: {len(dataset.pending)} features are unscaled: use load_config_dataset")
    noise = dataset.statistics_noise
    prior = () if noise is None or not config.private else ((noise, 1.0, STATISTICS_RELEASES),)
    model = model_spec(config.model, kind=dataset.kind, input_shape=dataset.input_shape, n_classes=dataset.n_classes)
    resolve_for_data(config, dataset.n_train)  # δ and batch against n: refused before torch is imported below
    device = device_name(config.device) if device_here else config.device
    return RunPlan(
        privacy=plan_privacy(config, dataset.n_train, book, prior=prior, should_stop=should_stop),
        model=model,
        device=device,
    )
