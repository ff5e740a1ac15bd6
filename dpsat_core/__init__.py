"""dpsat_core: train and compare DP-SGD, DP-SAM and DP-SAT, with honest privacy accounting.

    >>> from dpsat_core import TrainConfig, RunStore, run
    >>> outcome = run(TrainConfig(dataset="digits", method="dpsat", epsilon=3), RunStore("runs.db"))
    >>> outcome.record.test_accuracy, outcome.record.epsilon
"""

from .accounting import Calibration, PrivacySpent, calibrate_noise, epsilon_spent
from .config import TrainConfig, default_delta
from .data import BUILTIN as BUILTIN_DATASETS
from .data import Dataset, load_dataset
from .errors import ConfigError, DataError, DpsatError, StoreError
from .methods import METHODS, MethodInfo, method_info, method_table
from .models import ModelSpec, build_model, model_spec
from .progress import Cancelled, Progress, ProgressFn, StopFn
from .runner import RunOutcome, run
from .store import RunRecord, RunStore
from .sweep import SweepResult, SweepSpec, sweep
from .training import EpochMetrics, PrivacyPlan, Trainer, TrainResult, evaluate, prepare, train

__all__ = [
    "BUILTIN_DATASETS", "METHODS", "Calibration", "Cancelled", "ConfigError", "DataError", "Dataset", "DpsatError",
    "EpochMetrics", "MethodInfo", "ModelSpec", "PrivacyPlan", "PrivacySpent", "Progress", "ProgressFn",
    "RunOutcome", "RunRecord", "RunStore", "StopFn", "StoreError", "SweepResult", "SweepSpec", "TrainConfig",
    "TrainResult", "Trainer", "build_model", "calibrate_noise", "default_delta", "epsilon_spent", "evaluate",
    "load_dataset", "method_info", "method_table", "model_spec", "prepare", "run", "sweep", "train",
]
