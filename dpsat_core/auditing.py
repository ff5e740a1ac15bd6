"""Empirical privacy audit of one private run: canaries in, membership guesses out, a lower bound on ε.

The one-run method of Steinke, Nasr & Jagielski (NeurIPS 2023): m canaries are each included
independently with probability 1/2, the run trains once, the auditor scores every canary, and
`audit_bound` turns the guesses into an ε lower bound at 95% confidence (δ included, grid choice
Bonferroni-corrected). Two modes:

- **white-box**: m Dirac gradient canaries, canary i = C·eᵢ in a block of m coordinates that no real
  example's gradient touches (a bias-free Linear layer fed zeros, added to the model's output: the
  forward pass is unchanged). Each included canary is Poisson-sampled at the run's rate q for every
  release and added to the *clipped sum* of the method's own private path (the fast engine or
  Opacus's hooks), before the optimizer's own noise, scaling and release count. The auditor observes
  every release (DP-SAM's two per step included) and scores canary i by Σₜ ⟨g̃ₜ, eᵢ⟩.
- **black-box**: m training rows given a wrong label; the included ones are trained on, the others
  are left out; the auditor sees the final model only and scores each canary by its negative loss.

The AUC is the loss-threshold membership attack's on the canaries (in white-box mode: the same
threshold attack on the gradient score).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from torch import nn

from .audit_bound import audit_bound, membership_auc
from .config import DEFAULT_CANARIES, TrainConfig
from .data import Dataset, load_config_dataset
from .devices import resolve_device
from .errors import ConfigError
from .models import build_model
from .planning import RunPlan, plan_run
from .progress import ProgressFn, StopFn, no_progress
from .results import AuditResult, RunRecord
from .runner import train_claimed
from .store import RunStore
from .training import TrainResult

# Canary inclusion and canary sampling get their own streams, apart from the model's, the noise's, the batches'
# and the scaling statistics' (training.NOISE_SEED_OFFSET, SAMPLING_SEED_OFFSET, data.STATISTICS_SEED_OFFSET).
AUDIT_SEED_OFFSET = 32452843


@dataclass(frozen=True)
class AuditOutcome:
    """The stored audit run, and its audit result (None when the run did not finish)."""

    record: RunRecord
    result: Optional[AuditResult]


class _Audited(nn.Module):
    """The model plus a canary block: a bias-free Linear(m → 1) on zeros, whose output (0) is added to the
    logits, so predictions and real per-example gradients are unchanged and the block's coordinates carry
    only canaries and noise."""

    def __init__(self, model: nn.Module, canaries: int):
        super().__init__()
        self.model = model
        self.canary = torch.nn.utils.skip_init(nn.Linear, canaries, 1, bias=False)  # no draw from the global RNG
        nn.init.zeros_(self.canary.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits + self.canary(logits.new_zeros(len(x), self.canary.in_features))


class GradientCanaries:
    """White-box instrument for `training.train`: inserts the included canaries into each release's clipped
    sum (each Poisson-sampled at rate q) and accumulates the released gradient on the canary block."""

    def __init__(self, included: np.ndarray, *, clip_norm: float, sample_rate: float, seed: int):
        self.included = torch.as_tensor(included, dtype=torch.bool)
        self.clip_norm, self.sample_rate = clip_norm, sample_rate
        self.generator = torch.Generator().manual_seed(seed)
        self.scores = torch.zeros(len(included), dtype=torch.float64)
        self.observed = 0
        self.module: Optional[_Audited] = None

    def wrap(self, model: nn.Module) -> nn.Module:
        self.module = _Audited(model, len(self.included))
        return self.module

    def attach(self, optimizer: DPOptimizer) -> None:
        if self.module is None:
            raise RuntimeError("wrap() the model before attach()")
        weight = self.module.canary.weight
        add_noise, previous_hook = optimizer.add_noise, optimizer.step_hook

        def insert_then_noise() -> None:
            sampled = self.included & (torch.rand(len(self.included), generator=self.generator) < self.sample_rate)
            weight.summed_grad.add_(sampled.to(weight.dtype).to(weight.device)[None], alpha=self.clip_norm)
            add_noise()  # the optimizer's own noise on every coordinate, canary block included

        def observe(opt: DPOptimizer) -> None:
            if previous_hook is not None:
                previous_hook(opt)  # the trainer's release count (and so the accountant's ε)
            self.scores += weight.grad[0].detach().to("cpu", torch.float64)
            self.observed += 1

        optimizer.add_noise = insert_then_noise
        optimizer.step_hook = observe


def _mislabelled(
    dataset: Dataset, canaries: int, included: np.ndarray, seed: int
) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Black-box canaries: m training rows with a wrong label (uniform over the other classes); the
    included ones stay in the training set, the others leave it. Returns the data set, the canaries'
    rows (of the original training split) and their wrong labels."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(dataset.n_train)[:canaries]
    shift = rng.integers(1, dataset.n_classes, size=canaries)
    wrong = ((dataset.y_train[rows] + shift) % dataset.n_classes).astype(dataset.y_train.dtype)
    keep = np.ones(dataset.n_train, dtype=bool)
    keep[rows] = False
    x = np.concatenate([dataset.x_train[keep], dataset.x_train[rows[included]]])
    y = np.concatenate([dataset.y_train[keep], wrong[included]])
    return dataclasses.replace(dataset, x_train=x, y_train=y), rows, wrong


@torch.no_grad()
def _negative_losses(result: TrainResult, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    model = build_model(result.model, seed=seed)
    model.load_state_dict(result.state_dict)
    model.eval()
    logits = model(torch.as_tensor(x))
    return -F.cross_entropy(logits, torch.as_tensor(y), reduction="none").double().numpy()


@dataclass(frozen=True, kw_only=True, eq=False)
class AuditPlan:
    """An audit checked against its data, before anything is stored: the audit config, the data set it
    trains on (black-box: with the included canaries, without the others), its run plan, which canaries
    are included, and the black-box canaries' inputs and wrong labels."""

    config: TrainConfig
    dataset: Dataset
    run_plan: RunPlan
    included: np.ndarray
    canary_x: Optional[np.ndarray] = None
    canary_y: Optional[np.ndarray] = None

    @property
    def seed(self) -> int:
        return self.config.seed + AUDIT_SEED_OFFSET


def plan_audit(config: TrainConfig, *, mode: str = "whitebox", canaries: int = DEFAULT_CANARIES) -> AuditPlan:
    """Check an audit of `config` and prepare its canaries; bad input (a non-private method, an unknown mode,
    fewer than 10 canaries, more canaries than training rows, anything `plan_run` refuses) raises
    `ConfigError`."""
    config = dataclasses.replace(config, audit_mode=mode, canaries=canaries).normalized()
    resolve_device(config.device)
    seed = config.seed + AUDIT_SEED_OFFSET
    included = np.random.default_rng(seed).random(canaries) < 0.5
    original = load_config_dataset(config)
    if canaries > original.n_train:
        raise ConfigError(
            f"canaries={canaries} exceeds the {original.n_train} training examples of {config.dataset}: "
            f"use at most {original.n_train}"
        )
    if mode == "whitebox":
        return AuditPlan(config=config, dataset=original, run_plan=plan_run(config, original), included=included)
    dataset, rows, wrong = _mislabelled(original, canaries, included, seed + 1)
    return AuditPlan(
        config=config,
        dataset=dataset,
        # planned on the full training set, so q, the steps and σ never depend on which canaries are in: each
        # row (canaries too) is then sampled at that fixed q, the mechanism the accountant charges
        run_plan=plan_run(config, original),
        included=included,
        canary_x=original.x_train[rows],
        canary_y=wrong,
    )


def run_audit(
    plan: AuditPlan, store: RunStore, *, on_progress: ProgressFn = no_progress, should_stop: Optional[StopFn] = None
) -> AuditOutcome:
    """Train the planned audit run into `store` (marked as an audit run, kept out of comparisons), score the
    canaries, and store its `AuditResult` beside it."""
    start = time.perf_counter()
    config, privacy = plan.config, plan.run_plan.privacy
    instrument = None
    if config.audit_mode == "whitebox":
        instrument = GradientCanaries(
            plan.included, clip_norm=config.clip_norm, sample_rate=privacy.sample_rate, seed=plan.seed + 2
        )
    run_id = store.create_run(config)  # ClaimHeld if the same audit is training elsewhere
    result = train_claimed(
        store,
        run_id,
        config,
        on_progress=on_progress,
        should_stop=should_stop,
        dataset=plan.dataset,
        plan=plan.run_plan,
        instrument=instrument,
    )
    record = store.get(run_id)
    if result.status != "done" or record.summary is None:
        return AuditOutcome(record, None)
    if instrument is not None:
        scores = instrument.scores.numpy()
    else:
        scores = _negative_losses(result, plan.canary_x, plan.canary_y, config.seed)
    bound = audit_bound(scores, plan.included, delta=privacy.delta, seed=plan.seed + 3)
    auc, auc_stderr = membership_auc(scores, plan.included)
    outcome = AuditResult(
        run_id=run_id,
        method=config.method,
        dataset=config.dataset,
        mode=config.audit_mode,
        canaries=config.canaries,
        included=int(plan.included.sum()),
        guesses=bound.guesses,
        correct=bound.correct,
        guessed_in=bound.guessed_in,
        guessed_out=bound.guessed_out,
        epsilon_lower_bound=bound.epsilon_lower_bound,
        confidence=bound.confidence,
        epsilon_spent=record.summary.epsilon_spent,
        target_epsilon=record.summary.target_epsilon,
        delta=privacy.delta,
        auc=auc,
        auc_stderr=auc_stderr,
        releases=result.releases,
        seconds=time.perf_counter() - start,
    )
    store.save_audit(outcome)
    return AuditOutcome(record, outcome)


def audit(
    config: TrainConfig,
    store: RunStore,
    *,
    mode: str = "whitebox",
    canaries: int = DEFAULT_CANARIES,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
) -> AuditOutcome:
    """Audit `config` with `canaries` canaries in `mode` ("whitebox" or "blackbox"): `plan_audit` (bad input
    raises `ConfigError` before anything is stored), then `run_audit`."""
    return run_audit(
        plan_audit(config, mode=mode, canaries=canaries), store, on_progress=on_progress, should_stop=should_stop
    )
