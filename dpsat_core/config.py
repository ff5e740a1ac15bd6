"""Training configuration: one frozen dataclass, validated once, hashed for reuse."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ConfigError
from .methods import METHODS, method_info

# The choices offered to users: widgets, CLI options and help texts all read these.
ACCOUNTANTS = ("prv", "rdp")
# How private methods clip per-example gradients: "fast" (dpsat_core.clipping, exact, one backward to the
# layer outputs) or "hooks" (Opacus's per-sample gradient hooks, the reference). Kept, and hashed, for
# non-private methods too, so that the runs of one setting (compare.setting_key) share it.
CLIPPINGS = ("fast", "hooks")
ARCHITECTURE_NAMES = ("cnn", "mlp")  # the models we build (models.ARCHITECTURES)
MODELS = ("auto", *ARCHITECTURE_NAMES)
DEVICES = ("auto", "cpu", "cuda")  # "cuda:N" picks one GPU
HESSIAN_BACKENDS = ("lanczos", "pyhessian")
# Empirical privacy audits (dpsat_core.audit): what the auditor observes. "" is an ordinary run.
AUDIT_MODES = ("whitebox", "blackbox")
MIN_CANARIES = 10
DEFAULT_CANARIES = 1000
# How features are scaled: "private" (fixed scales for built-ins, public bounds from a schema, else statistics
# released by a Gaussian mechanism and charged to ε) or "fitted" (what every run before it did: mean/std of the
# training rows, category levels and classes from all rows, none of it covered by ε).
PREPROCESSINGS = ("private", "fitted")
DEFAULT_PREPROCESSING_SHARE = 0.05  # of the target ε, for the released scaling statistics of a user table
MAX_PREPROCESSING_SHARE = 0.5
# Where noise and Poisson sampling draw from: "research" seeds them from the run's seed (reproducible, paired
# across methods), "release" from the OS entropy source (never stored; `--secure`). The model's
# initialisation stays seeded in both.
RANDOMNESS = ("research", "release")
# How δ=None is resolved for n training rows: "1/(10n)" (today) or "1/n" (runs stored before it).
DELTA_RULES = ("1/(10n)", "1/n")
DEFAULT_EPSILON = 3.0
# Above this a target ε promises nothing a reader could call privacy, and the PRV accountant's σ search slows to
# minutes and runs out of memory (ε = 1e9 asked for 4.75 TiB): calibration refuses it, with the non-private way
# instead (not the config: stored runs with a larger target, from before, still load).
MAX_EPSILON = 100.0
MAX_VALIDATION_FRACTION = 0.5  # of the training rows; the rest is trained on
# Settings that change memory use or placement but not the algorithm: left out of the hash.
_NOT_HASHED = ("device", "max_physical_batch_size")
# The hash covers these fields, as it has since the first version. A field added later goes in
# ADDED_LATER with the value it was introduced at, and is hashed only when a config differs from
# that value: stored runs keep their hash (and are reused) after an upgrade, even if that field's
# default changes again later. A test fails when a field is in neither list.
_HASHED_SINCE_V1 = (
    "dataset",
    "method",
    "epsilon",
    "noise_multiplier",
    "delta",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "clip_norm",
    "rho",
    "accountant",
    "seed",
    "model",
    "target",
    "dataset_size",
    "split_seed",
)
ADDED_LATER: dict[str, Any] = {
    "validation_fraction": 0.0,
    "clipping": "hooks",
    "preprocessing": "fitted",
    "schema": None,
    "preprocessing_share": DEFAULT_PREPROCESSING_SHARE,
    "audit_mode": "",
    "canaries": 0,
    "randomness": "research",
    "delta_rule": "1/n",
}


def _finite(name: str, value: float, *, low: float, low_inclusive: bool, fix: str) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= low if low_inclusive else value > low)
    if not ok:
        sign = "≥" if low_inclusive else ">"
        raise ConfigError(f"{name} must be a finite number {sign} {low:g}, got {value!r}: {fix}")


def _positive_int(name: str, value: int, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a whole number ≥ 1, got {value!r}: {fix}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines one training run; defaults suit the built-in data sets.

    Private methods take a target `epsilon` (σ is calibrated) or a `noise_multiplier`
    σ directly, never both; with neither, the target is ε = 3. `delta=None` means a power of ten
    ≤ 1/(10n) (`delta_rule`; runs stored before it used 1/n rounded down). `randomness` picks where noise
    and batch sampling draw from (see `RANDOMNESS`). `validation_fraction` of the training rows is held out
    (by `split_seed`) to choose ρ, lr or C on; test accuracy stays for the verdicts. `clipping` picks
    the per-example clipping engine of private methods (see `CLIPPINGS`). `audit_mode` and `canaries` mark an
    audit run (`dpsat_core.audit`): it trained on canaries, so it is kept out of every comparison.
    """

    dataset: str = "digits"
    method: str = "dpsat"
    epsilon: Optional[float] = None
    noise_multiplier: Optional[float] = None
    delta: Optional[float] = None
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    clip_norm: float = 1.0
    rho: float = 0.05
    accountant: str = "prv"
    seed: int = 0
    model: str = "auto"
    target: Optional[str] = None
    dataset_size: Optional[int] = None
    split_seed: int = 0
    validation_fraction: float = 0.1
    clipping: str = "fast"
    audit_mode: str = ""
    canaries: int = 0
    preprocessing: str = "private"
    schema: Optional[str] = None
    preprocessing_share: float = DEFAULT_PREPROCESSING_SHARE
    randomness: str = "research"
    delta_rule: str = "1/(10n)"
    max_physical_batch_size: int = 1024
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError("dataset must name a built-in data set or a file/folder path")
        _positive_int("epochs", self.epochs, "train for at least one epoch")
        _positive_int("batch_size", self.batch_size, "use the expected batch size, e.g. 128")
        _positive_int("max_physical_batch_size", self.max_physical_batch_size, "e.g. 1024")
        _finite("lr", self.lr, low=0, low_inclusive=False, fix="use a learning rate such as 0.5")
        _finite("clip_norm", self.clip_norm, low=0, low_inclusive=False, fix="use a clipping norm C such as 1.0")
        _finite("rho", self.rho, low=0, low_inclusive=True, fix="ρ is a radius: use 0 (no perturbation) or e.g. 0.05")
        _finite("momentum", self.momentum, low=0, low_inclusive=True, fix="use a value in [0, 1)")
        if self.momentum >= 1:
            raise ConfigError(f"momentum must be < 1, got {self.momentum!r}: use e.g. 0.9")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"unknown accountant {self.accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
        if self.clipping not in CLIPPINGS:
            raise ConfigError(f"unknown clipping {self.clipping!r}: choose one of {', '.join(CLIPPINGS)}")
        if self.preprocessing not in PREPROCESSINGS:
            raise ConfigError(
                f"unknown preprocessing {self.preprocessing!r}: choose one of {', '.join(PREPROCESSINGS)}"
            )
        _finite("preprocessing_share", self.preprocessing_share, low=0, low_inclusive=False, fix="e.g. 0.05 (5% of ε)")
        if self.preprocessing_share > MAX_PREPROCESSING_SHARE:
            raise ConfigError(
                f"preprocessing_share must be ≤ {MAX_PREPROCESSING_SHARE}, got {self.preprocessing_share!r}: e.g. 0.05"
            )
        if self.schema is not None and (not isinstance(self.schema, str) or not self.schema.strip()):
            raise ConfigError(f"schema must be a path to a JSON or TOML file, got {self.schema!r}")
        if self.schema is not None and self.preprocessing == "fitted":
            raise ConfigError("a schema needs preprocessing='private' (fitted scaling ignores it): drop one of them")
        self._check_audit()
        if self.randomness not in RANDOMNESS:
            raise ConfigError(f"unknown randomness {self.randomness!r}: choose one of {', '.join(RANDOMNESS)}")
        if self.delta_rule not in DELTA_RULES:
            raise ConfigError(f"unknown delta_rule {self.delta_rule!r}: choose one of {', '.join(DELTA_RULES)}")
        if self.randomness == "release" and self.noise_multiplier == 0:
            raise ConfigError("release mode with σ=0 releases without noise (ε = ∞): give an ε or a σ > 0")
        if self.randomness == "release" and self.preprocessing == "fitted" and self.private:
            raise ConfigError(
                "release mode needs preprocessing='private': fitted scaling reads the rows outside ε; drop one of them"
            )
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if not valid_device_name(self.device):
            raise ConfigError(f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")
        if self.dataset_size is not None:
            _positive_int("dataset_size", self.dataset_size, "or leave it unset for the default size")
        if not isinstance(self.seed, int) or not isinstance(self.split_seed, int):
            raise ConfigError(f"seed and split_seed must be whole numbers, got {self.seed!r}, {self.split_seed!r}")
        _finite(
            "validation_fraction", self.validation_fraction, low=0, low_inclusive=True, fix="e.g. 0.1, or 0 for none"
        )
        if self.validation_fraction > MAX_VALIDATION_FRACTION:
            raise ConfigError(
                f"validation_fraction must be ≤ {MAX_VALIDATION_FRACTION}, got {self.validation_fraction!r}: e.g. 0.1"
            )
        if self.delta is not None:
            _finite("delta", self.delta, low=0, low_inclusive=False, fix="use δ ≤ 1/(10n), e.g. 1e-5")
            if self.delta >= 1:
                raise ConfigError(f"delta must be < 1, got {self.delta!r}: use δ ≤ 1/(10n), e.g. 1e-5")
        if self.epsilon is not None:
            _finite("epsilon", self.epsilon, low=0, low_inclusive=False, fix="the privacy budget ε must be > 0, e.g. 3")
        if self.noise_multiplier is not None:
            _finite("noise_multiplier", self.noise_multiplier, low=0, low_inclusive=True, fix="σ must be ≥ 0, e.g. 1.0")
        if self.private:
            if self.epsilon is not None and self.noise_multiplier is not None:
                raise ConfigError(
                    f"give either epsilon (target ε, σ is calibrated) or noise_multiplier (σ), not both: "
                    f"got epsilon={self.epsilon}, noise_multiplier={self.noise_multiplier}"
                )
            if self.epsilon is None and self.noise_multiplier is None:
                object.__setattr__(self, "epsilon", DEFAULT_EPSILON)

    def _check_audit(self) -> None:
        if self.audit_mode == "":
            if self.canaries != 0:
                raise ConfigError(f"canaries={self.canaries!r} needs an audit mode: {' or '.join(AUDIT_MODES)}")
            return
        if self.audit_mode not in AUDIT_MODES:
            raise ConfigError(f"unknown audit mode {self.audit_mode!r}: choose one of {', '.join(AUDIT_MODES)}")
        if not self.private:
            private = ", ".join(name for name, m in METHODS.items() if m.private)
            raise ConfigError(
                f"method {self.method!r} makes no noisy releases, so there is no ε to audit: audit one of {private}"
            )
        if not isinstance(self.canaries, int) or isinstance(self.canaries, bool) or self.canaries < MIN_CANARIES:
            raise ConfigError(f"canaries must be a whole number ≥ {MIN_CANARIES}, got {self.canaries!r}: e.g. 1000")

    @property
    def audit(self) -> bool:
        """True for an audit run (trained on canaries; never compared with ordinary runs)."""
        return self.audit_mode != ""

    @property
    def private(self) -> bool:
        return method_info(self.method).private

    def normalized(self) -> "TrainConfig":
        """The same run with settings its method ignores cleared (so equal runs hash equal)."""
        info = method_info(self.method)
        changes: dict[str, Any] = {}
        if not info.private:
            changes.update(epsilon=None, noise_multiplier=None, delta=None, accountant="prv")
        if not info.private or self.preprocessing == "fitted":  # no statistic is released with noise
            changes["preprocessing_share"] = DEFAULT_PREPROCESSING_SHARE
        if not info.uses_rho:
            changes["rho"] = 0.0
        if info.private and self.delta is not None:  # the rule resolves δ=None only: as stored before it
            changes["delta_rule"] = ADDED_LATER["delta_rule"]
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}: known fields are {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config as an older version stored it: fields it predates take the value they were
        introduced at (what that run did), not today's default."""
        return cls.from_dict({**ADDED_LATER, **data})

    def config_hash(self) -> str:
        """A stable hash of the normalised config, without placement settings (see `ADDED_LATER`)."""
        values = self.normalized().to_dict()
        unlisted = set(values) - set(_HASHED_SINCE_V1) - set(ADDED_LATER) - set(_NOT_HASHED)
        if unlisted:  # a programming error: the new field's place in the hash must be decided
            raise RuntimeError(f"config field(s) {sorted(unlisted)} must be listed in config.ADDED_LATER")
        data = {name: values[name] for name in _HASHED_SINCE_V1}
        data.update({k: values[k] for k, introduced in ADDED_LATER.items() if values.get(k, introduced) != introduced})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def valid_device_name(name: object) -> bool:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (whether CUDA is present is checked when a run is planned)."""
    if not isinstance(name, str):
        return False
    base, _, index = name.partition(":")
    return name in DEVICES or (base == "cuda" and index.isdigit())


def default_delta(n_train: int, rule: str = DELTA_RULES[0]) -> float:
    """The δ used when none is given: the largest power of ten ≤ 1/(10n) ("1/(10n)", see `caveats.DELTA_WHY`),
    or, as runs stored before it were trained, 1/n rounded down to a power of ten, strictly below 1/n ("1/n")."""
    if rule not in DELTA_RULES:
        raise ConfigError(f"unknown delta_rule {rule!r}: choose one of {', '.join(DELTA_RULES)}")
    bound = 1.0 / (10 * n_train) if rule == "1/(10n)" else 1.0 / n_train
    delta = 10.0 ** math.floor(math.log10(bound))
    too_large = delta >= bound if rule == "1/n" else delta > bound
    return delta / 10 if too_large else delta


def resolve_for_data(config: TrainConfig, n_train: int) -> float:
    """Check the settings that depend on the training-set size; return the δ to use."""
    if config.batch_size > n_train:
        raise ConfigError(
            f"batch_size={config.batch_size} exceeds the {n_train} training examples: use a batch size ≤ {n_train}"
        )
    if not config.private:
        return 0.0
    delta = default_delta(n_train, config.delta_rule) if config.delta is None else config.delta
    if delta >= 1.0 / n_train:
        raise ConfigError(
            f"delta={delta:g} must be < 1/n = {1.0 / n_train:.3g} for n={n_train} training examples "
            f"(≤ 1/(10n) is recommended): use e.g. delta={default_delta(n_train):g}"
        )
    return delta


def parse_numbers(text: str, *, name: str, kind: type = float) -> tuple:
    """'1, 2, 4' → (1.0, 2.0, 4.0); an error names the field and the bad item."""
    values = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        try:
            values.append(kind(item))
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            raise ConfigError(f"{name} must be comma-separated {what}; {item!r} is not one") from None
    return tuple(values)
