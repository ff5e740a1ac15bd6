"""Analyses of stored runs: Opacus-trained weights, caching in the store, the CLI contract."""

import json

import pytest
import torch
from opacus import GradSampleModule

import dpsat_core.analysis as analysis
from dpsat_core import TrainConfig, build_model, run
from dpsat_core.cli import main
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

    monkeypatch.setattr(analysis, "hessian_spectrum", must_not_run)
    assert analysis.run_hessian(store, run_id, k=3, trace_probes=10, n_samples=200) == first
    with pytest.raises(AssertionError, match="recomputed"):
        analysis.run_hessian(store, run_id, k=3, trace_probes=10, n_samples=200, recompute=True)


def test_wrapped_models_and_their_state_dicts_are_stripped_for_analysis():
    spec_model = build_model(analysis.ModelSpec("cnn", (1, 8, 8), 10), seed=0)
    wrapped = GradSampleModule(build_model(analysis.ModelSpec("cnn", (1, 8, 8), 10), seed=1))
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
    assert code == 0
    assert out["top_eigenvalues"] == sorted(out["top_eigenvalues"], reverse=True) and len(out["top_eigenvalues"]) == 3
    assert out["trace_stderr"] > 0 and isinstance(out["trace"], float)
    assert len(out["grid"]) == 7 and len(out["loss"]) == 7 and all(len(row) == 7 for row in out["loss"])
    assert out["loss"][3][3] == pytest.approx(out["center_loss"])
    code = main(["analyze", run_id, "--hessian", "--json", *small])
    assert "loss" not in json.loads(capsys.readouterr().out)
