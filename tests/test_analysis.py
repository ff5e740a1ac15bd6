"""Analyses of stored runs: Opacus-trained weights, caching in the store, the CLI contract."""

import json

import pytest
import torch
from opacus import GradSampleModule

import dpsat_core.analysis as analysis
import dpsat_core.measures as measures
from dpsat_core import ModelSpec, TrainConfig, build_model, run
from dpsat_core.cli import main
from dpsat_core.errors import ConfigError
from dpsat_core.hessian import hessian_spectrum
from dpsat_core.models import plain_copy, strip_wrapper_prefix


@pytest.fixture
def run_id(store):
    return run(TrainConfig(dataset="breast_cancer", method="dpsgd", epochs=1, batch_size=64), store).record.run_id


def test_a_run_trained_with_opacus_is_analysed_and_the_result_cached(store, run_id, monkeypatch):
    reports = []
    first = analysis.run_hessian(store, run_id, k=3, trace_probes=10, n_samples=200, on_progress=reports.append)
    assert first.top == sorted(first.top, reverse=True) and first.n_samples == 200
    assert reports and reports[-1].stage == "hessian" and reports[-1].done == reports[-1].total

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed instead of using the stored result")

    monkeypatch.setattr(measures, "hessian_spectrum", must_not_run)
    assert analysis.run_hessian(store, run_id, k=3, trace_probes=10, n_samples=200) == first
    with pytest.raises(AssertionError, match="recomputed"):
        analysis.run_hessian(store, run_id, k=3, trace_probes=10, n_samples=200, recompute=True)


def test_adaptive_sharpness_is_computed_once_and_then_read_from_the_store(store, run_id, monkeypatch):
    first = analysis.run_adaptive_sharpness(store, run_id, n_samples=128)
    assert first.lambda_max > 0 and first.n_samples == 128

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed instead of using the stored result")

    monkeypatch.setattr(measures, "adaptive_sharpness", must_not_run)
    assert analysis.analyze(store, run_id, "adaptive", n_samples=128) == first
    assert analysis.cached_analyses(store, [run_id], "adaptive", n_samples=128) == {run_id: first}
    with pytest.raises(AssertionError, match="recomputed"):
        analysis.analyze(store, run_id, "adaptive", n_samples=128, recompute=True)


def test_wrapped_models_and_their_state_dicts_are_stripped_for_analysis():
    spec = ModelSpec(architecture="cnn", input_shape=(1, 8, 8), n_classes=10)
    spec_model = build_model(spec, seed=0)
    wrapped = GradSampleModule(build_model(spec, seed=1))
    state = wrapped.state_dict()
    assert all(k.startswith("_module.") for k in state)
    spec_model.load_state_dict(strip_wrapper_prefix(state))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    plain = plain_copy(wrapped)
    assert not any(m._forward_hooks for m in plain.modules())
    via_wrapper = hessian_spectrum(wrapped, x, y, k=2, trace_probes=4, backend="pyhessian")  # PyHessian on a plain copy
    via_fresh = hessian_spectrum(spec_model, x, y, k=2, trace_probes=4, backend="pyhessian")
    assert via_wrapper.top == pytest.approx(via_fresh.top, rel=1e-6)


def test_surfaces_slices_lines_and_noise_are_stored_per_run(store, run_id):
    other = run(TrainConfig(dataset="breast_cancer", method="dpsat", epochs=1, batch_size=64), store).record.run_id
    stages = list(analysis.iter_run_surface(store, run_id, steps=9, n_samples=128))
    assert [s.complete for s in stages] == [False, True]
    assert [s.complete for s in analysis.iter_run_surface(store, run_id, steps=9, n_samples=128)] == [True]
    line = analysis.run_line(store, run_id, other, steps=11, n_samples=128)
    assert len(line.loss) >= 11 and 0.0 in line.axis and 1.0 in line.axis
    assert analysis.run_slice(store, run_id, steps=11, n_samples=128).axis[5] == 0.0
    noise = analysis.run_noise_robustness(store, run_id, scales=(0.0, 0.1), draws=3, n_samples=128)
    assert noise.mean_increase[0] == 0.0


def test_cli_analyze_json_contract(store, run_id, capsys):
    small = ("--store", str(store.path), "--k", "3", "--probes", "8", "--samples", "128")
    code = main(["analyze", run_id, "--json", *small, "--steps", "7"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out) == {"run_id", "hessian", "surface"}
    hessian, surface = out["hessian"], out["surface"]
    assert hessian["top"] == sorted(hessian["top"], reverse=True) and len(hessian["top"]) == 3
    assert hessian["trace_stderr"] > 0 and isinstance(hessian["trace"], float)
    assert len(surface["axis"]) == 7 and len(surface["loss"]) == 7 and all(len(row) == 7 for row in surface["loss"])
    assert surface["loss"][3][3] == pytest.approx(surface["center_loss"])
    code = main(["analyze", run_id, "--hessian", "--json", *small])
    assert set(json.loads(capsys.readouterr().out)) == {"run_id", "hessian"}


def test_the_cli_runs_every_kind_of_analysis_in_the_registry(store, run_id, capsys):
    other = run(TrainConfig(dataset="breast_cancer", method="dpsat", epochs=1, batch_size=64), store).record.run_id
    kinds = [arg for kind in analysis.ANALYSES for arg in ("--kind", kind)]
    small = ("--k", "2", "--probes", "4", "--samples", "64", "--steps", "5", "--draws", "2", "--other", other)
    code = main(["analyze", run_id, *kinds, *small, "--json", "--store", str(store.path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out) == {"run_id", *analysis.ANALYSES}
    for kind, spec in analysis.ANALYSES.items():  # each result is its registry type, and now cached
        result = spec.result.from_dict(out[kind])
        settings = {"k": 2, "trace_probes": 4, "n_samples": 64, "steps": 5, "draws": 2, "other": other}
        known = {k: v for k, v in settings.items() if k in spec.defaults}
        assert analysis.analyze(store, run_id, kind, cached_only=True, **known) == result
    cached = analysis.cached_analyses(store, [run_id, other, "no-such-run"], "slice", steps=5, n_samples=64)
    assert set(cached) == {run_id}


def test_analysis_settings_are_checked_by_the_registry(store, run_id):
    with pytest.raises(ConfigError, match="unknown setting"):
        analysis.analyze(store, run_id, "slice", probes=3)
    with pytest.raises(ConfigError, match="n_samples must be > 0"):
        analysis.analyze(store, run_id, "hessian", n_samples=0)
    with pytest.raises(ConfigError, match="needs 'other'"):
        analysis.analyze(store, run_id, "line")
    with pytest.raises(ConfigError, match="unknown analysis"):
        analysis.analyze(store, run_id, "curvature")
    with pytest.raises(ConfigError, match="n_samples must be a whole number ≥ 1, got 0"):  # the library entry too
        measures.load_run_model(store, run_id, n_samples=0)


def test_analysis_progress_names_each_run_as_training_progress_names_its_cell(tmp_path, monkeypatch):
    from dpsat_core import RunStore
    from dpsat_core.tasks import analyses_task

    store = RunStore(tmp_path / "runs.db")
    run_id = store.create_run(TrainConfig(method="dpsat", epsilon=3.0, rho=0.05, seed=1))
    monkeypatch.setattr(analysis, "analyze", lambda *args, **kwargs: None)
    said = []
    analyses_task(lambda p: said.append(p.message), lambda: False, store=store, work=[(run_id, "hessian")])
    assert said[0] == "Hessian spectrum of DP-SAT, ε = 3, ρ = 0.05, seed 1 (1 of 1)"
