"""Analysis time estimates come from earlier wall times in the store, with their range, and say when there are none."""

import os
from dataclasses import replace

import pytest

from dpsat_core import RunStore, TrainConfig, analysis_estimate, describe_estimate, estimate_time
from dpsat_core.analysis import analysis_kind
from tests.factories import spectrum, store_finished


def test_the_estimate_is_runs_times_each_kinds_median_with_the_fastest_and_slowest_as_its_range():
    past = {"hessian": [30.0, 10.0, 20.0, 200.0], "noise": [4.0], "slice": [1.0]}
    estimate = estimate_time(past, {"hessian": 3, "noise": 2, "slice": 0})
    assert estimate.seconds == 3 * 25.0 + 2 * 4.0  # median of 10, 20, 30, 200 is 25
    assert (estimate.low, estimate.high) == (3 * 10.0 + 2 * 4.0, 3 * 200.0 + 2 * 4.0)
    assert estimate.measured == 5 and estimate.unknown == ()  # the slice is not asked for: not counted
    partial = estimate_time(past, {"hessian": 1, "surface": 2})
    assert partial.seconds == 25.0 and partial.unknown == ("surface",)
    with pytest.raises(ValueError, match="≥ 0, got -1"):
        estimate_time(past, {"hessian": -1})


def test_the_words_say_estimate_range_and_machine_or_that_the_time_is_unknown():
    assert describe_estimate(estimate_time({"hessian": [5.0]}, {"hessian": 0})) == "Nothing left to compute."
    unknown = describe_estimate(estimate_time({}, {"hessian": 2}))
    assert unknown == (
        "Time unknown until the first analysis finishes: no Hessian spectrum has been computed for this data set "
        "and model at default settings yet."
    )
    adaptive = describe_estimate(estimate_time({}, {"adaptive": 4}))
    assert "no adaptive sharpness (scale-invariant λ_max) has been" in adaptive  # lower case mid-sentence
    known = describe_estimate(estimate_time({"hessian": [60.0, 180.0, 600.0], "noise": []}, {"hessian": 3, "noise": 1}))
    assert known.startswith(
        "Estimated time: about 9 min (3 min to 30 min: every run at the fastest / slowest earlier time); plus noise "
        "robustness, whose time is unknown until its first analysis finishes."
    )
    assert "compute time of 3 earlier analyses (loading and start-up not included)" in known
    assert "for this data set and model at default settings" in known and "in this store" not in known
    assert f"this server: {os.cpu_count()} CPU core" in known
    assert "estimate" in known.split(".")[1]  # says it is an estimate, not a promise


def test_only_analyses_of_runs_on_the_same_data_and_model_at_the_default_settings_count(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    spec = analysis_kind("hessian")
    default_key = spec.key(spec.settings({}))
    alike = [store_finished(store, TrainConfig(method="dpsgd", epsilon=3.0, seed=s, epochs=1)) for s in (0, 1, 2)]
    other_data = store_finished(store, TrainConfig(dataset="breast_cancer", method="dpsgd", epsilon=3.0, epochs=1))
    for run_id, seconds in zip(alike[:2], (40.0, 80.0)):
        store.save_analysis(run_id, "hessian", default_key, replace(spectrum(1.0), seconds=seconds).to_dict())
    store.save_analysis(other_data, "hessian", default_key, replace(spectrum(1.0), seconds=9000.0).to_dict())
    other_key = spec.key(spec.settings({"k": 20}))  # other settings: another cost
    store.save_analysis(alike[2], "hessian", other_key, replace(spectrum(1.0), seconds=9000.0).to_dict())
    todo = [store.get(alike[2])]
    estimate = analysis_estimate(store, {"hessian": 1, "adaptive": 1}, todo)
    assert (estimate.seconds, estimate.low, estimate.high, estimate.measured) == (60.0, 40.0, 80.0, 2)
    assert estimate.unknown == ("adaptive",)
    nothing_alike = analysis_estimate(store, {"hessian": 2}, [store.get(other_data)])
    assert nothing_alike.seconds == 9000.0 * 2 and nothing_alike.measured == 1
