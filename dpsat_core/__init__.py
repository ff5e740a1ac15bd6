"""dpsat_core: train and compare DP-SGD, DP-SAM and DP-SAT, with honest privacy accounting.

>>> from dpsat_core import TrainConfig, RunStore, run, run_hessian
>>> store = RunStore()                                   # the per-user store (or $DPSAT_STORE)
>>> outcome = run(TrainConfig(dataset="digits", method="dpsat", epsilon=3), store)
>>> outcome.record.test_accuracy, outcome.record.epsilon_spent
>>> run_hessian(store, outcome.record.run_id).top        # λ₁ ≥ … ≥ λ₅, cached in the store

Names are imported on first use (PEP 562), so `import dpsat_core` is instant and
reading a store or drawing figures never loads Opacus.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "Calibration": "accounting",
    "PrivacySpent": "accounting",
    "calibrate_noise": "accounting",
    "epsilon_curve": "accounting",
    "epsilon_spent": "accounting",
    "recorded_calibration": "accounting",
    "recorded_epsilon": "accounting",
    "recorded_epsilon_curve": "accounting",
    "ANALYSES": "analysis",
    "AuditBound": "audit_bound",
    "audit_bound": "audit_bound",
    "epsilon_lower_bound": "audit_bound",
    "AuditOutcome": "auditing",
    "AuditPlan": "auditing",
    "audit": "auditing",
    "plan_audit": "auditing",
    "run_audit": "auditing",
    "AnalysisKind": "analysis",
    "RunModel": "measures",
    "analysed_cells": "analysis",
    "analyze": "analysis",
    "cached_analyses": "analysis",
    "iter_run_surface": "analysis",
    "load_run_model": "measures",
    "run_adaptive_sharpness": "analysis",
    "run_hessian": "analysis",
    "run_line": "analysis",
    "run_noise_robustness": "analysis",
    "run_slice": "analysis",
    "run_surface": "analysis",
    "RayCluster": "cluster",
    "TrainConfig": "config",
    "default_delta": "config",
    "DIVERGENCE_FACTOR": "divergence",
    "diverged": "divergence",
    "Dataset": "data",
    "load_dataset": "data",
    "TimeEstimate": "estimates",
    "analysis_estimate": "estimates",
    "describe_estimate": "estimates",
    "estimate_time": "estimates",
    "ConfigError": "errors",
    "DataError": "errors",
    "DpsatError": "errors",
    "StoreError": "errors",
    "HessianOperator": "hessian",
    "RitzEstimate": "hessian",
    "lanczos_top": "hessian",
    "adaptive_sharpness": "hessian",
    "hessian_spectrum": "hessian",
    "LossEvaluator": "landscape",
    "iter_surface": "landscape",
    "line_between": "landscape",
    "noise_robustness": "landscape",
    "random_direction": "landscape",
    "slice_1d": "landscape",
    "METHODS": "methods",
    "MethodInfo": "methods",
    "method_info": "methods",
    "method_table": "methods",
    "register_method": "methods",
    "build_model": "models",
    "model_spec": "results",
    "PrivacyPlan": "planning",
    "RunPlan": "planning",
    "plan_run": "planning",
    "probe_step_cost": "probe",
    "step_cost": "probe",
    "Cancelled": "progress",
    "Progress": "progress",
    "ProgressFn": "progress",
    "StopFn": "progress",
    "AdaptiveSharpness": "results",
    "AuditResult": "results",
    "CostProbe": "results",  # a stored probe is read without loading torch or Opacus
    "EpochMetrics": "results",
    "MethodCost": "results",
    "HessianSpectrum": "results",
    "ModelSpec": "results",
    "NoiseRobustness": "results",
    "RunRecord": "results",
    "RunSummary": "results",
    "Slice": "results",
    "Surface": "results",
    "RunOutcome": "runner",
    "run": "runner",
    "store_result": "runner",
    "ClaimHeld": "store",
    "RunStore": "store",
    "SweepResult": "sweeps",
    "SweepSpec": "sweeps",
    "sweep": "sweeps",
    "Trainer": "training",
    "TrainResult": "training",
    "evaluate": "training",
    "evaluate_examples": "training",
    "prepare": "training",
    "train": "training",
}
_RENAMED = {"BUILTIN_DATASETS": ("data.builtin", "BUILTIN")}

__all__ = sorted([*_EXPORTS, *_RENAMED])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name], name
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
    else:
        raise AttributeError(f"module 'dpsat_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
