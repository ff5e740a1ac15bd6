"""Train one configuration: Poisson-sampled steps, per-epoch metrics, ε spent, final weights.

`prepare` builds the live state of a run (model, optimizer, method step,
sampler); `train` drives it with progress, cancel and divergence checks. The
split lets tests step two methods side by side.
"""

from __future__ import annotations

import logging
import math
import secrets
import struct
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from .accounting import AnswerBook, PrivacySpent, recorded_epsilon
from .clipping import FastDPOptimizer
from .config import TrainConfig
from .correctness import pack_correct
from .data import Dataset, load_config_dataset
from .divergence import divergence_reason
from .gradients import Batch
from .methods import method_info
from .models import build_model, count_parameters
from .planning import PrivacyPlan, RunPlan, plan_run, record_epoch_epsilons
from .progress import Progress, ProgressFn, StopFn, no_progress, stop_asked
from .results import EpochMetrics, ModelSpec, RunSummary, json_float
from .steps import Step

_log = logging.getLogger(__name__)
TRAIN_LOSS_SUBSET = 4096
EVAL_BATCH = 2048
# The run's seed also initialises the model; noise and batch sampling get their own generators,
# offset by distinct primes so the three random streams never coincide (research mode).
NOISE_SEED_OFFSET = 7919
SAMPLING_SEED_OFFSET = 104729


class Instrument(Protocol):
    """What an audit adds to a private run (`dpsat_core.audit`): a module around the model, and hooks on the
    optimizer's release (insert into the clipped sum before the noise; observe the released gradient)."""

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def attach(self, optimizer: DPOptimizer) -> None: ...


# The CPU generator's state (torch's Mersenne Twister): initial seed u64, left i32, seeded i32, next u64, then its
# 624 32-bit words, each held in a u64. `manual_seed` fills those words from 32 bits of seed only.
_MT_WORDS, _MT_WORDS_AT = 624, 24


def os_entropy_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A generator whose whole state comes from the OS entropy source (`secrets`), held only by it: on CPU all
    624 Mersenne Twister words (`manual_seed` would leave a 2³² search over seeds), on CUDA Philox's full 64-bit
    seed. On CPU it stores no seed: `initial_seed()` is 0."""
    generator = torch.Generator(device=device)
    if generator.device.type != "cpu":
        return generator.manual_seed(secrets.randbits(64))
    state = generator.get_state().numpy().copy()
    words = np.frombuffer(secrets.token_bytes(4 * _MT_WORDS), dtype=np.uint32).astype("<u8")
    state[:_MT_WORDS_AT] = np.frombuffer(struct.pack("<QiiQ", 0, 1, 1, 0), dtype=np.uint8)  # left=1: twist first
    state[_MT_WORDS_AT : _MT_WORDS_AT + 8 * _MT_WORDS] = words.view(np.uint8)
    generator.set_state(torch.from_numpy(state))
    return generator


def noise_and_sampling_generators(config: TrainConfig, device: str | torch.device) -> tuple[torch.Generator, ...]:
    """The noise and batch-sampling generators. Research: seeded from the run's seed (reproducible, and paired
    across methods). Release: their whole state from the OS entropy source (`os_entropy_generator`), never
    stored, logged or returned with the result, so no stored value reproduces the noise or the batches."""
    if config.randomness == "release":
        return os_entropy_generator(device), os_entropy_generator()
    noise = torch.Generator(device=device).manual_seed(config.seed + NOISE_SEED_OFFSET)
    return noise, torch.Generator().manual_seed(config.seed + SAMPLING_SEED_OFFSET)


@dataclass(kw_only=True)
class TrainResult:
    """A finished (or failed, or cancelled) run: config, plan, metrics and weights."""

    config: TrainConfig
    status: str  # "done", "failed" or "cancelled"
    reason: str
    plan: PrivacyPlan
    epochs: list[EpochMetrics]
    privacy: Optional[PrivacySpent]
    steps: int
    releases: int
    seconds: float
    model: ModelSpec
    n_params: int
    device: str
    n_train: int
    n_validation: int
    n_test: int  # the examples the test accuracy counts (a comparison's interval needs it)
    test_correct: Optional[str] = None  # which of them the final model got right (`correctness.pack_correct`)
    test_classes_predicted: Optional[int] = None  # distinct classes that model predicted there (1: one class only)
    data_fingerprint: Optional[str]
    scaling: str  # how the features were scaled (`Dataset.scaling`)
    released_scaling: Optional[dict[str, list[float]]] = None  # `Dataset.released`, as the store keeps it
    initial_train_loss: Optional[float] = None  # before the first step: what divergence is judged against
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    @property
    def test_accuracy(self) -> Optional[float]:
        return self.epochs[-1].test_accuracy if self.epochs else None

    def summary(self) -> RunSummary:
        """The run's numbers, as the store keeps them."""
        last = self.epochs[-1] if self.epochs else None
        notes = (self.plan.note, self.privacy.note if self.privacy else "")
        return RunSummary(
            method=self.config.method,
            dataset=self.config.dataset,
            seed=self.config.seed,
            status=self.status,
            reason=self.reason,
            epsilon_spent=None if self.privacy is None else self.privacy.epsilon,
            delta=self.plan.delta,
            target_epsilon=self.plan.target_epsilon,
            noise_multiplier=self.plan.noise_multiplier,
            sample_rate=self.plan.sample_rate,
            steps=self.steps,
            releases=self.releases,
            accountant=None if self.privacy is None else self.privacy.accountant,
            accounting_note=" ".join(dict.fromkeys(n for n in notes if n)),  # calibration and spending notes
            test_accuracy=None if last is None else last.test_accuracy,
            validation_accuracy=None if last is None else last.validation_accuracy,
            n_validation=self.n_validation,
            n_test=self.n_test,
            test_correct=self.test_correct,
            test_classes_predicted=self.test_classes_predicted,
            test_loss=None if last is None else json_float(last.test_loss),
            train_loss=None if last is None else json_float(last.train_loss),
            seconds=self.seconds,
            seconds_per_epoch=self.seconds / max(1, len(self.epochs)),
            epochs_done=len(self.epochs),
            model=self.model,
            n_params=self.n_params,
            device=self.device,
            n_train=self.n_train,
            data_fingerprint=self.data_fingerprint,
            initial_train_loss=None if self.initial_train_loss is None else json_float(self.initial_train_loss),
            scaling=self.scaling,
            released_scaling=self.released_scaling,
            statistics_noise_multiplier=self.plan.prior[0][0] if self.plan.prior else None,
        )


class PoissonSampler:
    """Each example joins a batch independently with probability q (what the accountant assumes)."""

    def __init__(self, n: int, sample_rate: float, generator: torch.Generator):
        self.n, self.sample_rate, self.generator = n, sample_rate, generator

    def indices(self) -> torch.Tensor:
        return torch.nonzero(torch.rand(self.n, generator=self.generator) < self.sample_rate).flatten()


@dataclass(kw_only=True)
class Trainer:
    """The live state of one run; `step()` takes one optimisation step of the configured method."""

    config: TrainConfig
    dataset: Dataset
    device: torch.device
    plan: PrivacyPlan
    spec: ModelSpec
    model: nn.Module  # the plain module (for evaluation and weights)
    step_fn: Step
    sampler: PoissonSampler
    x_train: torch.Tensor
    y_train: torch.Tensor
    releases: int = 0
    steps: int = 0  # steps finished
    initial_train_loss: Optional[float] = None  # on the training-loss subset, before the first step
    book: Optional[AnswerBook] = None  # where accountant answers are kept between runs (the run store)
    epoch_epsilons: Optional[tuple[PrivacySpent, ...]] = None  # the plan's per-epoch ε, read once when first needed
    test_correct: Optional[torch.Tensor] = None  # which test examples the last finished epoch got right
    test_classes_predicted: Optional[int] = None  # how many classes that epoch's model predicted on the test set

    def draw(self) -> Batch:
        idx = self.sampler.indices().to(self.device)
        return self.x_train[idx], self.y_train[idx]

    def step(self) -> Optional[float]:
        loss = self.step_fn(self.draw)
        self.steps += 1
        return loss

    def _count_release(self, _optimizer: DPOptimizer) -> None:
        self.releases += 1


def prepare(
    config: TrainConfig,
    dataset: Optional[Dataset] = None,
    plan: Optional[RunPlan] = None,
    book: Optional[AnswerBook] = None,
    *,
    instrument: Optional[Instrument] = None,
    should_stop: Optional[StopFn] = None,
) -> Trainer:
    """Build model, optimizer and method step for `config` (loading its data set and planning it unless given;
    accountant answers from `book` when it holds them; `should_stop()` can end σ's search with `Cancelled`); an
    `instrument` (audits only) wraps the trained module and hooks the private optimizer's releases."""
    dataset = dataset or load_config_dataset(config)
    run_plan = plan or plan_run(config, dataset, book, should_stop=should_stop)
    privacy = run_plan.privacy
    device = torch.device(run_plan.device)
    spec = run_plan.model
    model = build_model(spec, seed=config.seed).to(device)
    info = method_info(config.method)
    module = model if instrument is None else instrument.wrap(model).to(device)
    base = torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum)
    noise, sampling = noise_and_sampling_generators(config, device)
    if info.private:
        options = dict(
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=config.clip_norm,
            expected_batch_size=config.batch_size,
            loss_reduction="mean",
            generator=noise,
            # release: Opacus's noise draw that resists floating-point attacks (Jin et al. 2022)
            secure_mode=config.randomness == "release",
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            if config.clipping == "fast":
                trained: nn.Module = module
                optimizer = FastDPOptimizer(base, module=module, **options)
            else:
                trained = GradSampleModule(module, loss_reduction="mean")
                optimizer = DPOptimizer(base, **options)
    else:
        trained, optimizer = model, base
    step_fn = info.make_step(trained, optimizer, rho=config.rho, chunk_size=config.max_physical_batch_size)
    trainer = Trainer(
        config=config,
        dataset=dataset,
        device=device,
        plan=privacy,
        spec=spec,
        model=model,
        step_fn=step_fn,
        sampler=PoissonSampler(dataset.n_train, privacy.sample_rate, sampling),
        x_train=torch.tensor(dataset.x_train, device=device),
        y_train=torch.tensor(dataset.y_train, device=device),
        book=book,
    )
    if info.private:
        optimizer.attach_step_hook(trainer._count_release)
        if instrument is not None:
            instrument.attach(optimizer)
    return trainer


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and the predicted class of each example (on the CPU), in eval mode without building any
    graph."""
    was_training = model.training
    model.eval()
    loss, predicted = 0.0, []
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        loss += F.cross_entropy(logits, y[i : i + EVAL_BATCH], reduction="sum").item()
        predicted.append(logits.argmax(1).cpu())
    model.train(was_training)
    return loss / len(x), torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)


def evaluate_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and which examples the model gets right (a bool per example, on the CPU)."""
    loss, predicted = predict(model, x, y)
    return loss, predicted == y.cpu()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, in eval mode without building any graph."""
    loss, correct = evaluate_examples(model, x, y)
    return loss, int(correct.sum()) / len(x)


def _epoch_privacy(trainer: Trainer) -> Optional[PrivacySpent]:
    """ε after an epoch: the plan's per-epoch answer when the releases are as planned (`record_epoch_epsilons`,
    one PRV domain for every epoch), else ε of the releases made."""
    if trainer.epoch_epsilons is None:
        trainer.epoch_epsilons = record_epoch_epsilons(trainer.plan, trainer.config.epochs, trainer.book)
    for spent in trainer.epoch_epsilons:
        if spent.releases == trainer.releases:
            return spent
    return _privacy_now(trainer)


def _privacy_now(trainer: Trainer) -> Optional[PrivacySpent]:
    """ε of the releases made so far, as `epsilon_spent` answers it: a run's final ε."""
    plan = trainer.plan
    if plan.noise_multiplier is None:
        return None
    return recorded_epsilon(
        trainer.book,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        releases=trainer.releases,
        delta=plan.delta,
        accountant=plan.accountant,
        prior=plan.prior,
    )


@contextmanager
def quiet_hooks() -> Iterator[None]:
    """Silence the one harmless warning of Opacus's hooks on inputs that need no grad (shared/NOTES.md)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train(
    config: TrainConfig,
    *,
    on_progress: ProgressFn = no_progress,
    should_stop: Optional[StopFn] = None,
    on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
    dataset: Optional[Dataset] = None,
    plan: Optional[RunPlan] = None,
    book: Optional[AnswerBook] = None,
    instrument: Optional[Instrument] = None,
) -> TrainResult:
    """Train `config` to the end, or until it diverges or crashes (status failed) or `should_stop()` (cancelled;
    `Cancelled` raised while σ is still being calibrated, before any step); accountant answers (σ, ε per epoch) come
    from `book` (the run store) when it holds them.

    A failed or cancelled run is charged for the releases it made, so its result (and the stored run) says
    what ε it spent. A crash (an exception while training) is logged with its traceback.
    """
    with quiet_hooks():
        trainer = prepare(config, dataset, plan, book, instrument=instrument, should_stop=should_stop)
        finished: list[EpochMetrics] = []

        def keep(metrics: EpochMetrics) -> None:
            finished.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)

        try:
            return _train(trainer, on_progress=on_progress, should_stop=should_stop, on_epoch=keep)
        except Exception as exc:
            _log.exception("training %s crashed after %d steps", config.method, trainer.steps)
            return _result(
                trainer,
                status="failed",
                reason=f"crashed after {trainer.steps} steps: {type(exc).__name__}: {exc}",
                epochs=finished,
                steps=trainer.steps,
                seconds=finished[-1].seconds if finished else 0.0,
                privacy=_privacy_now(trainer),
            )


def _train(
    trainer: Trainer,
    *,
    on_progress: ProgressFn,
    should_stop: Optional[StopFn],
    on_epoch: Optional[Callable[[EpochMetrics], None]],
) -> TrainResult:
    config = trainer.config
    x_test = torch.tensor(trainer.dataset.x_test, device=trainer.device)
    y_test = torch.tensor(trainer.dataset.y_test, device=trainer.device)
    x_val = torch.tensor(trainer.dataset.x_val, device=trainer.device)
    y_val = torch.tensor(trainer.dataset.y_val, device=trainer.device)
    subset = slice(0, min(TRAIN_LOSS_SUBSET, trainer.dataset.n_train))
    steps_per_epoch = trainer.plan.steps // config.epochs
    epochs: list[EpochMetrics] = []
    privacy: Optional[PrivacySpent] = None
    status, reason, step, seconds = "done", "", 0, 0.0
    trainer.initial_train_loss = evaluate(trainer.model, trainer.x_train[subset], trainer.y_train[subset])[0]
    trainer.model.train()
    for epoch in range(1, config.epochs + 1):
        for _ in range(steps_per_epoch):
            if stop_asked(should_stop):
                status, reason = "cancelled", f"cancelled at epoch {epoch}, step {step}"
                break
            start = time.perf_counter()
            loss = trainer.step()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            step += 1
            if loss is not None and not math.isfinite(loss):
                status = "failed"
                hint = f" or the clipping norm C (now {config.clip_norm:g})" if config.private else ""
                reason = (
                    f"training diverged: loss became {loss} at epoch {epoch}, step {step}; "
                    f"lower lr (now {config.lr:g}){hint}"
                )
                break
            on_progress(
                Progress(
                    "train", step, trainer.plan.steps, f"epoch {epoch}/{config.epochs}", {"epoch": epoch, "loss": loss}
                )
            )
        if status != "done":
            break
        test_loss, predicted = predict(trainer.model, x_test, y_test)
        correct = predicted == y_test.cpu()
        test_accuracy = int(correct.sum()) / len(y_test)
        train_loss, _ = evaluate(trainer.model, trainer.x_train[subset], trainer.y_train[subset])
        validation_accuracy = evaluate(trainer.model, x_val, y_val)[1] if len(y_val) else None
        if not (math.isfinite(test_loss) and math.isfinite(train_loss)):
            status, reason = "failed", f"training diverged: evaluation loss is not finite after epoch {epoch}; lower lr"
            break
        privacy = _epoch_privacy(trainer)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            validation_accuracy=validation_accuracy,
            epsilon_spent=None if privacy is None else privacy.epsilon,
            seconds=seconds,
            steps=step,
            releases=trainer.releases,
        )
        epochs.append(metrics)
        trainer.test_correct = correct  # the last finished epoch's, as its test accuracy
        trainer.test_classes_predicted = int(predicted.unique().numel())
        if on_epoch is not None:
            on_epoch(metrics)
        on_progress(
            Progress(
                "train",
                step,
                trainer.plan.steps,
                f"epoch {epoch}/{config.epochs} done",
                {"epochs_done": epoch, "test_accuracy": test_accuracy, "epsilon_spent": metrics.epsilon_spent},
            )
        )
    per_step = method_info(config.method).releases_per_step
    if status == "done" and trainer.releases != step * per_step:  # σ was calibrated for the declared count
        status = "failed"
        reason = (
            f"method {config.method!r} made {trainer.releases} noisy releases in {step} steps but its registry "
            f"entry declares {per_step} per step, so σ was calibrated for the wrong count: fix releases_per_step"
        )
    if status == "done" and epochs:  # finished, but maybe far above where it started
        reason = divergence_reason(
            initial_loss=trainer.initial_train_loss,
            final_loss=epochs[-1].train_loss,
            n_classes=trainer.spec.n_classes,
            lr=config.lr,
        )
    # the last epoch's ε is the result's when it is the whole run's (then it is `epsilon_spent`'s); after fewer
    # releases, or others since (cancel, divergence), the result's ε is `epsilon_spent`'s for the releases made
    if privacy is None or privacy.releases != trainer.releases or privacy.releases != trainer.plan.planned_releases:
        privacy = _privacy_now(trainer)
    return _result(trainer, status=status, reason=reason, epochs=epochs, steps=step, seconds=seconds, privacy=privacy)


def _result(
    trainer: Trainer,
    *,
    status: str,
    reason: str,
    epochs: list[EpochMetrics],
    steps: int,
    seconds: float,
    privacy: Optional[PrivacySpent],
) -> TrainResult:
    """The run's result as it stands: its metrics so far, ε of the releases made, and its current weights."""
    config = trainer.config
    return TrainResult(
        config=config,
        status=status,
        reason=reason,
        plan=trainer.plan,
        epochs=epochs,
        privacy=privacy,
        steps=steps,
        releases=trainer.releases,
        seconds=seconds,
        model=trainer.spec,
        n_params=count_parameters(trainer.model),
        device=str(trainer.device),
        n_train=trainer.dataset.n_train,
        n_validation=trainer.dataset.n_val,
        n_test=len(trainer.dataset.y_test),
        test_correct=None if trainer.test_correct is None else pack_correct(trainer.test_correct.tolist()),
        test_classes_predicted=trainer.test_classes_predicted,
        data_fingerprint=trainer.dataset.fingerprint,
        initial_train_loss=trainer.initial_train_loss,
        scaling=trainer.dataset.scaling,
        released_scaling=None if trainer.dataset.released is None else trainer.dataset.released.to_dict(),
        state_dict=_weights(trainer.model),
    )
