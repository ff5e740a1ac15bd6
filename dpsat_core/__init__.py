"""dpsat_core: train and compare DP-SGD, DP-SAM and DP-SAT, with honest privacy accounting.

>>> from dpsat_core import TrainConfig, RunStore, run
>>> outcome = run(TrainConfig(dataset="digits", method="dpsat", epsilon=3), RunStore("runs.db"))
>>> outcome.record.test_accuracy, outcome.record.epsilon
>>> run_hessian(RunStore("runs.db"), outcome.record.run_id).top   # λ₁ ≥ … ≥ λ₅, cached in the store
"""

from .accounting import Calibration, PrivacySpent, calibrate_noise, epsilon_spent
from .analysis import (
    RunModel,
    iter_run_surface,
    load_run_model,
    run_hessian,
    run_line,
    run_noise_robustness,
    run_slice,
    run_surface,
)
from .config import TrainConfig, default_delta
from .data import BUILTIN as BUILTIN_DATASETS
from .data import Dataset, load_dataset
from .errors import ConfigError, DataError, DpsatError, StoreError
from .hessian import HessianOperator, HessianSpectrum, hessian_spectrum
from .landscape import (
    LossEvaluator,
    NoiseRobustness,
    Slice,
    Surface,
    iter_surface,
    line_between,
    noise_robustness,
    random_direction,
    slice_1d,
)
from .methods import METHODS, MethodInfo, method_info, method_table
from .models import ModelSpec, build_model, model_spec
from .progress import Cancelled, Progress, ProgressFn, StopFn
from .runner import RunOutcome, run
from .store import RunRecord, RunStore
from .sweep import SweepResult, SweepSpec, sweep
from .training import EpochMetrics, PrivacyPlan, Trainer, TrainResult, evaluate, prepare, train

__all__ = [
    "BUILTIN_DATASETS",
    "METHODS",
    "Calibration",
    "Cancelled",
    "ConfigError",
    "DataError",
    "Dataset",
    "DpsatError",
    "EpochMetrics",
    "HessianOperator",
    "HessianSpectrum",
    "LossEvaluator",
    "MethodInfo",
    "ModelSpec",
    "NoiseRobustness",
    "PrivacyPlan",
    "PrivacySpent",
    "Progress",
    "ProgressFn",
    "RunModel",
    "RunOutcome",
    "RunRecord",
    "RunStore",
    "Slice",
    "StopFn",
    "StoreError",
    "Surface",
    "SweepResult",
    "SweepSpec",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "calibrate_noise",
    "default_delta",
    "epsilon_spent",
    "evaluate",
    "hessian_spectrum",
    "iter_run_surface",
    "iter_surface",
    "line_between",
    "load_dataset",
    "load_run_model",
    "method_info",
    "method_table",
    "model_spec",
    "noise_robustness",
    "prepare",
    "random_direction",
    "run",
    "run_hessian",
    "run_line",
    "run_noise_robustness",
    "run_slice",
    "run_surface",
    "slice_1d",
    "sweep",
    "train",
]
