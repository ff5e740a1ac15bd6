"""Typed results and their JSON form: what a run and its analyses produce, as the store keeps them.

Types cross every boundary (training → store → compare, figures, export, report,
CLI); JSON appears only at the edge (`to_dict`/`from_dict`). Old stored
summaries are migrated on read (`RunSummary.from_dict`). Nothing here imports
torch or Opacus, so reading a store stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from .config import ARCHITECTURE_NAMES, MODELS, TrainConfig
from .divergence import diverged
from .errors import ConfigError

R = TypeVar("R", bound="JsonRecord")
# Rows of the fixed training subset every analysis of a run evaluates (the first of its seeded training split).
DEFAULT_SAMPLES = 1024
# How runs with `preprocessing="fitted"` (every run before private scaling) were scaled: not covered by ε.
FITTED_SCALING = (
    "standardised with the training rows' mean and std, and a table's category levels and classes taken from all "
    "rows, without noise: not covered by ε"
)


class JsonRecord:
    """Mixin for frozen dataclasses of plain fields: `to_dict()` and `from_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return cls(**data)


def json_float(value: Optional[float]) -> Optional[float]:
    """A float JSON can hold: NaN and ±inf become None (for losses, where they mean "diverged")."""
    return value if value is None or math.isfinite(value) else None


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float spelled out for strict JSON: ∞ → "inf" (an ε of a run
    without noise is infinite, not missing), −∞ → "-inf", NaN → None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def format_number(value: Optional[float], spec: str, *, missing: str = "-") -> str:
    """A number for people (tables, captions, reports): `missing` when there is none, '∞' for an infinite ε
    (a run without noise), never 'inf' or a blank."""
    if value is None:
        return missing
    return "∞" if value == math.inf else format(value, spec)


def counted(n: int, noun: str) -> str:
    """'1 run', '3 runs': a count with its noun in the right number (regular plurals only)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# --- training --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelSpec(JsonRecord):
    """What to build: the architecture name and the data's shape; rebuilding from it is exact."""

    architecture: str  # "cnn" or "mlp"
    input_shape: tuple[int, ...]
    n_classes: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(
            architecture=data["architecture"], input_shape=tuple(data["input_shape"]), n_classes=data["n_classes"]
        )


def model_spec(choice: str, *, kind: str, input_shape: tuple[int, ...], n_classes: int) -> ModelSpec:
    """Resolve `auto` (CNN for images, MLP for tables) and check the choice fits the data (no torch needed)."""
    architecture = ("cnn" if kind == "image" else "mlp") if choice == "auto" else choice
    if architecture not in ARCHITECTURE_NAMES:
        raise ConfigError(f"unknown model {choice!r}: choose one of {', '.join(MODELS)}")
    if architecture == "cnn" and len(input_shape) != 3:
        raise ConfigError(f"model='cnn' needs image data (C, H, W); this data has shape {input_shape}: use 'mlp'")
    return ModelSpec(architecture=architecture, input_shape=tuple(input_shape), n_classes=n_classes)


@dataclass(frozen=True, kw_only=True)
class EpochMetrics(JsonRecord):
    """Metrics at the end of one epoch; `seconds` is cumulative training time (evaluation excluded)."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    epsilon_spent: Optional[float]  # None for non-private methods
    seconds: float
    steps: int
    releases: int
    validation_accuracy: Optional[float] = None  # None without a validation split (and in older runs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpochMetrics":
        data = dict(data)
        if "epsilon" in data:  # stores written before the rename
            data["epsilon_spent"] = data.pop("epsilon")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class RunSummary(JsonRecord):
    """The numbers a finished (or failed, or cancelled) run leaves: privacy spent, accuracy, cost, model."""

    method: str
    dataset: str
    seed: int
    status: str
    reason: str
    epsilon_spent: Optional[float]  # None for non-private runs; inf for σ = 0 (no privacy at all)
    delta: Optional[float]
    target_epsilon: Optional[float]  # None for non-private runs and runs trained with σ
    noise_multiplier: Optional[float]
    sample_rate: float
    steps: int
    releases: int
    accountant: Optional[str]
    accounting_note: str
    test_accuracy: Optional[float]
    test_loss: Optional[float]
    train_loss: Optional[float]
    seconds: float
    seconds_per_epoch: float
    epochs_done: int
    model: ModelSpec
    n_params: int
    device: str
    n_train: int
    data_fingerprint: Optional[str] = None  # digest of a file data set's bytes (None for built-ins, old runs)
    validation_accuracy: Optional[float] = None  # for choosing ρ, lr or C; None without a validation split
    n_validation: int = 0
    # test examples the accuracy counts (None in runs stored before it was kept): the test set's sampling error
    n_test: Optional[int] = None
    initial_train_loss: Optional[float] = None  # before the first step (None in runs stored before it was kept)
    scaling: str = ""  # how the features were scaled and what of it ε covers ("" in runs from before it was kept)
    statistics_noise_multiplier: Optional[float] = None  # of the released scaling statistics (None: none released)
    # The released scaling statistics themselves (`ReleasedScaling.to_dict`; None: none released, or a run stored
    # before they were kept): a DP output, so storing it is post-processing; every reload of the run's data uses it
    released_scaling: Optional[dict[str, list[float]]] = field(default=None, hash=False)
    # Which test examples the final model got right (`correctness.pack_correct`, n_test bits; None in runs stored
    # before it was kept): a comparison counts from it the examples two paired models disagree on
    test_correct: Optional[str] = field(default=None, repr=False)
    # How many distinct classes the model predicted on the test set at the last finished epoch, the model the test
    # accuracy measures (None in runs stored before it was kept): 1 means a constant classifier, whose accuracy is
    # one class's share of the test set whatever ε
    test_classes_predicted: Optional[int] = None

    @property
    def diverged(self) -> bool:
        """Finished far above its start loss (`divergence.diverged`): kept out of comparisons unless asked."""
        return self.status == "done" and diverged(
            initial_loss=self.initial_train_loss, final_loss=self.train_loss, n_classes=self.model.n_classes
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSummary":
        data = dict(data)
        if "epsilon" in data:  # stores written before the rename
            data["epsilon_spent"] = data.pop("epsilon")
        data["model"] = ModelSpec.from_dict(data["model"])
        return cls(**data)

    def readable_dict(self) -> dict[str, Any]:
        """`to_dict` without the per-example bits (kept in the store, noise in a listing): what JSON output shows."""
        data = self.to_dict()
        del data["test_correct"]
        return data


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One stored run: its config, status, summary (None until it finishes) and per-epoch metrics."""

    run_id: str
    config: TrainConfig
    config_hash: str
    status: str
    reason: str
    summary: Optional[RunSummary]
    created: float
    updated: float
    epochs: tuple[EpochMetrics, ...] = ()

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def target_epsilon(self) -> Optional[float]:
        """The ε the config asked for (None for non-private runs and runs trained with σ)."""
        return self.config.epsilon

    @property
    def epsilon_spent(self) -> Optional[float]:
        """The ε the accountant charged for the releases made: the summary's, or for a run without one (still
        running, or its process killed) the last stored epoch's, which covers everything the run released:
        its weights were never stored, and gradients noised after that epoch never left the process."""
        if self.summary is not None:
            return self.summary.epsilon_spent
        return self.epochs[-1].epsilon_spent if self.epochs else None

    @property
    def test_accuracy(self) -> Optional[float]:
        return None if self.summary is None else self.summary.test_accuracy

    @property
    def diverged(self) -> bool:
        return self.summary is not None and self.summary.diverged

    @property
    def privacy_note(self) -> str:
        """What this run's ε covers of its pipeline, in words, and what it does not."""
        if not self.config.private:
            return "No ε: a non-private run (a reference)."
        if self.config.preprocessing == "fitted":
            return "ε covers the training's noisy gradient releases only: the features were " + FITTED_SCALING + "."
        if self.summary is None:
            return (
                "ε covers the training's noisy gradient releases and any scaling statistics released for columns "
                "without public bounds (the details are stored when the run ends)."
            )
        scaling = self.summary.scaling.removeprefix("; ")  # runs stored with an empty first part
        if self.summary.statistics_noise_multiplier is not None:
            return f"ε covers the training's noisy gradient releases and the preprocessing statistics: {scaling}."
        return "ε covers the training's noisy gradient releases; the scaling read nothing private" + (
            f": {scaling}." if scaling else "."
        )

    @property
    def validation_accuracy(self) -> Optional[float]:
        return None if self.summary is None else self.summary.validation_accuracy

    def to_dict(self, *, with_epochs: bool = False) -> dict[str, Any]:
        """JSON-ready: identity, status, config and summary (and epochs if asked)."""
        data = {
            "run_id": self.run_id,
            "status": self.status,
            "reason": self.reason,
            "method": self.method,
            "dataset": self.config.dataset,
            "seed": self.config.seed,
            "target_epsilon": self.target_epsilon,
            "epsilon_spent": self.epsilon_spent,
            "test_accuracy": self.test_accuracy,
            "privacy_note": self.privacy_note,
            "config_hash": self.config_hash,
            "created": self.created,
            "updated": self.updated,
            "config": self.config.to_dict(),
            "summary": None if self.summary is None else self.summary.readable_dict(),
        }
        if with_epochs:
            data["epochs"] = [e.to_dict() for e in self.epochs]
        return data


# --- analyses ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HessianSpectrum(JsonRecord):
    """Top eigenvalues (algebraically largest, descending), trace ± stderr, and the eigenvalue density."""

    top: list[float]
    trace: float
    trace_stderr: float
    trace_probes: int
    density_grid: list[float]
    density: list[float]
    n_samples: int
    n_params: int
    backend: str
    seconds: float

    @property
    def lambda_max(self) -> float:
        return self.top[0]


@dataclass(frozen=True, kw_only=True)
class AdaptiveSharpness(JsonRecord):
    """Adaptive λ_max: the top eigenvalue of diag(|w|)·H·diag(|w|), unchanged by rescalings the loss ignores."""

    lambda_max: float
    n_samples: int
    n_params: int
    seconds: float


@dataclass(frozen=True, kw_only=True)
class Slice(JsonRecord):
    """Loss and accuracy along one line: at axis[i] along the direction (or t between two runs)."""

    axis: list[float]
    loss: list[Optional[float]]
    accuracy: list[float]
    center_loss: float
    seconds: float


@dataclass(frozen=True, kw_only=True)
class Surface(JsonRecord):
    """loss[j][i] at weights + axis[i]·d₁ + axis[j]·d₂; None where not evaluated yet (coarse pass)."""

    axis: list[float]
    loss: list[list[Optional[float]]]
    center_loss: float
    complete: bool
    seconds: float


@dataclass(frozen=True, kw_only=True)
class NoiseRobustness(JsonRecord):
    """Loss increase when Gaussian noise of relative size s is added to the weights: mean and std over draws."""

    scales: list[float]
    mean_increase: list[float]
    std_increase: list[float]
    draws: int
    base_loss: float
    seconds: float


# --- cost --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MethodCost(JsonRecord):
    """One method's measured step cost, its ratio to its reference (same rounds), and its analytic count.

    `reference` is the registry's baseline, or the non-private reference for a private method without one
    (DP-SGD against SGD) when both were probed; None when there is nothing to divide by.
    """

    method: str
    reference: Optional[str]
    seconds_per_step: float  # median over rounds
    ratio: Optional[float]  # median over rounds of (this step / the reference's step in the same round)
    ratio_low: Optional[float]  # 25th percentile of the per-round ratios
    ratio_high: Optional[float]  # 75th percentile
    backward_passes_per_step: int
    releases_per_step: int
    backward_passes_ratio: Optional[float]  # analytic: backward passes / the reference's
    # 95% confidence interval of the median ratio (order statistics, no distribution assumed); None with fewer
    # than 6 rounds, and in probes stored before it was kept
    ratio_ci_low: Optional[float] = None
    ratio_ci_high: Optional[float] = None


@dataclass(frozen=True, kw_only=True)
class CostProbe(JsonRecord):
    """Step cost of methods measured side by side on one setting and device (see `dpsat_core.probe`)."""

    setting: str  # `compare.setting_key` of the setting's runs
    device: str  # e.g. "cpu (AMD EPYC, 2 threads)" or "cuda:0 (NVIDIA H100 80GB HBM3)"
    threads: int  # torch.get_num_threads() while probing
    clock: str  # "thread CPU time" (one-thread CPU probe) or "wall clock"
    batch_size: int
    rounds: int
    warmup: int
    spread: str  # what ratio_low/ratio_high are
    costs: tuple[MethodCost, ...]
    seconds: float  # wall time of the whole probe, set-up included
    created: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostProbe":
        return cls(**{**data, "costs": tuple(MethodCost.from_dict(c) for c in data["costs"])})

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(c.method for c in self.costs)

    def cost(self, method: str) -> MethodCost:
        """The record of one probed method (KeyError naming the probed ones otherwise)."""
        for c in self.costs:
            if c.method == method:
                return c
        raise KeyError(f"method {method!r} was not probed (probed: {', '.join(self.methods)})")

    @property
    def seconds_per_step(self) -> dict[str, float]:
        return {c.method: c.seconds_per_step for c in self.costs}

    @property
    def ratio(self) -> dict[str, float]:
        """Method → median ratio to its reference, for the methods that have one."""
        return {c.method: c.ratio for c in self.costs if c.ratio is not None}


# --- empirical privacy audits ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuditResult(JsonRecord):
    """One audit run's outcome: the guesses, the ε lower bound at `confidence` (Steinke, Nasr & Jagielski
    2023), the accountant's ε of the same run, and the membership AUC of the canary scores."""

    run_id: str
    method: str
    dataset: str
    mode: str  # "whitebox" or "blackbox"
    canaries: int
    included: int  # canaries trained on (each with probability 1/2)
    guesses: int
    correct: int
    guessed_in: int
    guessed_out: int
    epsilon_lower_bound: float
    confidence: float
    epsilon_spent: Optional[float]  # the accountant's; inf for σ = 0
    target_epsilon: Optional[float]
    delta: float
    auc: float
    auc_stderr: float
    releases: int
    seconds: float  # the whole audit: training, scoring and the bound

    def gap_text(self) -> str:
        """One sentence on what the distance between the accountant's ε and this lower bound means."""
        bound, spent = self.epsilon_lower_bound, format_number(self.epsilon_spent, ".2f")
        if self.epsilon_spent is not None and bound > self.epsilon_spent:
            return (
                f"The audit shows ε ≥ {bound:.2f} at {self.confidence:.0%} confidence, above the accountant's "
                f"ε = {spent}: the mechanism leaks more than its accounting says — do not rely on this run's ε."
            )
        return (
            f"The accountant proves ε ≤ {spent} for every data set and attacker; this {self.mode} audit shows "
            f"ε ≥ {bound:.2f} at {self.confidence:.0%} confidence for one run: the true ε lies between, and the gap "
            f"is what this attack could not demonstrate, not a leak it found."
        )

    def cli_dict(self) -> dict[str, Any]:
        """The keys `dpsat audit --json` prints."""
        keys = ("run_id", "method", "mode", "canaries", "guesses", "correct", "epsilon_lower_bound", "confidence")
        return {**{k: getattr(self, k) for k in keys}, "epsilon_spent": self.epsilon_spent, "auc": self.auc}
