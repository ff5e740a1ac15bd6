"""Validate once: a config plus its data set become the run's plan (privacy, model, device) or one clear error.

`run`, `prepare` and the sweep's pre-check all call `plan_run`, so every check
that depends on the data (batch ≤ n, δ < 1/n, the model fits the data, CUDA
present, ε reachable) happens before anything is written to a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .accounting import AnswerBook, recorded_calibration, recorded_epsilon
from .config import TrainConfig, resolve_for_data
from .data import Dataset
from .devices import resolve_device
from .methods import method_info
from .models import model_spec
from .results import ModelSpec


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


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What training a config on a data set will do: its privacy plan, model and device."""

    privacy: PrivacyPlan
    model: ModelSpec
    device: str


def plan_privacy(config: TrainConfig, n_train: int, book: Optional[AnswerBook] = None) -> PrivacyPlan:
    """Fix σ (calibrated for all planned releases when a target ε is given), q, δ and steps; accountant answers
    come from `book` (the run store) when it holds them."""
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
        )
        return PrivacyPlan(
            noise_multiplier=config.noise_multiplier,
            delta=delta,
            planned_releases=releases,
            target_epsilon=None,
            planned_epsilon=planned.epsilon,
            accountant=planned.accountant,
            note=planned.note,
            **common,
        )
    calibration = recorded_calibration(
        book,
        target_epsilon=config.epsilon,
        delta=delta,
        sample_rate=sample_rate,
        releases=releases,
        accountant=config.accountant,
    )
    return PrivacyPlan(
        noise_multiplier=calibration.noise_multiplier,
        delta=delta,
        planned_releases=releases,
        target_epsilon=config.epsilon,
        planned_epsilon=config.epsilon,
        accountant=calibration.accountant,
        note=calibration.note,
        **common,
    )


def plan_run(config: TrainConfig, dataset: Dataset, book: Optional[AnswerBook] = None) -> RunPlan:
    """Check `config` against `dataset` and fix its plan (accountant answers from `book` when it has them);
    raises `ConfigError` with the fix."""
    model = model_spec(config.model, kind=dataset.kind, input_shape=dataset.input_shape, n_classes=dataset.n_classes)
    device = str(resolve_device(config.device))
    return RunPlan(privacy=plan_privacy(config, dataset.n_train, book), model=model, device=device)
