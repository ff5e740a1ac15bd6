"""Hand-made records and results for tests that need no training (not a test module: nothing to collect)."""

from __future__ import annotations

from dataclasses import replace as dataclass_replace
from typing import Optional

from dpsat_core import HessianSpectrum, ModelSpec, RunRecord, RunStore, RunSummary, TrainConfig
from dpsat_core.analysis import analysis_kind
from dpsat_core.results import AdaptiveSharpness, NoiseRobustness, Slice, Surface


def summary(
    config: TrainConfig,
    *,
    accuracy: float,
    epsilon_spent: Optional[float],
    seconds_per_epoch: float,
    validation: Optional[float] = None,
) -> RunSummary:
    """A plausible finished summary for `config` with the numbers a test cares about."""
    return RunSummary(
        method=config.method,
        dataset=config.dataset,
        seed=config.seed,
        status="done",
        reason="",
        epsilon_spent=epsilon_spent,
        delta=1e-4 if config.private else None,
        target_epsilon=config.epsilon,
        noise_multiplier=1.0 if config.private else None,
        sample_rate=0.1,
        steps=10 * config.epochs,
        releases=10 * config.epochs if config.private else 0,
        accountant=config.accountant if config.private else None,
        accounting_note="",
        test_accuracy=accuracy,
        test_loss=0.5,
        train_loss=0.4,
        seconds=seconds_per_epoch * config.epochs,
        seconds_per_epoch=seconds_per_epoch,
        epochs_done=config.epochs,
        model=ModelSpec(architecture="cnn", input_shape=(1, 8, 8), n_classes=10),
        n_params=1000,
        device="cpu",
        n_train=1437,
        validation_accuracy=validation,
        n_validation=0 if validation is None else 144,
    )


def record(
    method,
    eps,
    seed,
    acc,
    seconds=1.0,
    status="done",
    epochs=5,
    run_id=None,
    *,
    sigma=None,
    rho=None,
    spent=None,
    created=0.0,
    validation=None,
) -> RunRecord:
    """A stored-looking run of `method` at target ε `eps` (or σ `sigma`; neither: non-private) with accuracy `acc`."""
    extra = {"rho": rho} if rho is not None else {}
    config = TrainConfig(method=method, epsilon=eps, noise_multiplier=sigma, seed=seed, epochs=epochs, **extra)
    config = config.normalized()
    spent = spent if spent is not None else eps
    return RunRecord(
        run_id=run_id or f"{method}{eps}{sigma}{rho}{seed}{created}",
        config=config,
        config_hash=config.config_hash(),
        status=status,
        reason="",
        summary=summary(config, accuracy=acc, epsilon_spent=spent, seconds_per_epoch=seconds, validation=validation),
        created=created,
        updated=created,
    )


def spectrum(lam: float) -> HessianSpectrum:
    """A spectrum with λ_max = `lam` and trace 10·`lam`."""
    return HessianSpectrum(
        top=[lam],
        trace=10 * lam,
        trace_stderr=0.1,
        trace_probes=10,
        density_grid=[],
        density=[],
        n_samples=100,
        n_params=10,
        backend="lanczos",
        seconds=0.1,
    )


def store_default_analyses(store: RunStore, run_id: str, lam: float) -> None:
    """Store, under the default settings the pages read, a hand-made result of every per-run analysis (Hessian,
    adaptive sharpness, noise robustness, 1D slice, 2D surface) of a quadratic bowl of curvature `lam`: pages
    render them without a minute of Hessian and landscape computation (tests/test_hessian.py and
    tests/test_landscape.py check the real ones)."""
    n_params = store.get(run_id).summary.n_params
    kinds = analysis_kind("slice").defaults, analysis_kind("surface").defaults, analysis_kind("noise").defaults
    slice_steps, surface_steps, scales = kinds[0]["steps"], kinds[1]["steps"], list(kinds[2]["scales"])
    axis = lambda steps: [-1 + 2 * i / (steps - 1) for i in range(steps)]  # noqa: E731
    base = 0.3
    results = {
        "hessian": dataclass_replace(
            spectrum(lam),
            top=[lam * 0.5**i for i in range(5)],
            density_grid=[lam * i / 39 for i in range(40)],
            density=[1 / (1 + i) for i in range(40)],
            n_samples=1024,
            n_params=n_params,
        ),
        "adaptive": AdaptiveSharpness(lambda_max=lam / 10, n_samples=1024, n_params=n_params, seconds=0.1),
        "noise": NoiseRobustness(
            scales=scales,
            mean_increase=[lam * s**2 for s in scales],
            std_increase=[lam * s**2 / 4 for s in scales],
            draws=kinds[2]["draws"],
            base_loss=base,
            seconds=0.1,
        ),
        "slice": Slice(
            axis=axis(slice_steps),
            loss=[base + lam * t**2 for t in axis(slice_steps)],
            accuracy=[max(0.1, 0.9 - lam * t**2 / 10) for t in axis(slice_steps)],
            center_loss=base,
            seconds=0.1,
        ),
        "surface": Surface(
            axis=axis(surface_steps),
            loss=[[base + lam * (a**2 + b**2) for b in axis(surface_steps)] for a in axis(surface_steps)],
            center_loss=base,
            complete=True,
            seconds=0.1,
        ),
    }
    for kind, result in results.items():
        spec = analysis_kind(kind)
        store.save_analysis(run_id, kind, spec.key(spec.settings({})), result.to_dict())


def store_finished(store: RunStore, config: TrainConfig, *, train_loss: float = 0.4, accuracy: float = 0.8) -> str:
    """Store `config` as a finished run (ε 2.9) whose training loss ended at `train_loss`; its run id."""
    config = config.normalized()
    done = summary(config, accuracy=accuracy, epsilon_spent=2.9, seconds_per_epoch=1.0)
    run_id = store.create_run(config)
    store.finish(run_id, dataclass_replace(done, train_loss=train_loss), {})
    return run_id


def store_one_diverged(store: RunStore) -> None:
    """DP-SGD and DP-SAT at ε = 3, seeds 0 and 1, of which DP-SAT seed 1 diverged (loss 1e7)."""
    for method, seed, loss in (("dpsgd", 0, 0.4), ("dpsgd", 1, 0.4), ("dpsat", 0, 0.4), ("dpsat", 1, 1e7)):
        store_finished(store, TrainConfig(method=method, epsilon=3.0, seed=seed, epochs=1), train_loss=loss)
