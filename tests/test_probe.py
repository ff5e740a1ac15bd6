"""The step-cost probe: ratios that hold under a concurrent CPU load, and probes kept per setting and device."""

import dataclasses
import shutil
import subprocess
import sys

import pytest

import dpsat_core.probe as probe_module
from dpsat_core import CostProbe, RunStore, TrainConfig, probe_step_cost, step_cost
from dpsat_core.probe import probe_setting
from tests.test_results import WAVE1_STORE

SMALL = TrainConfig(dataset="breast_cancer", method="dpsat", batch_size=64)


@pytest.fixture
def busy_cpus():
    """Two processes spinning on the CPU for the length of the test (as many as this machine has cores)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_ratios_hold_while_the_machine_is_busy(busy_cpus):
    probe = probe_step_cost(SMALL, ["dpsam", "dpsat"], rounds=60, warmup=3)
    assert all(p.poll() is None for p in busy_cpus)  # the load ran for the whole probe
    assert probe.methods == ("dpsgd", "dpsam", "dpsat")  # the baseline joined by itself
    assert 1.4 <= probe.ratio["dpsam"] <= 3.0
    assert 0.8 <= probe.ratio["dpsat"] <= 1.3
    for name in ("dpsam", "dpsat"):
        cost = probe.cost(name)
        assert cost.reference == "dpsgd"
        assert cost.ratio_low <= cost.ratio <= cost.ratio_high
        assert cost.ratio_low <= cost.ratio_ci_low <= cost.ratio <= cost.ratio_ci_high <= cost.ratio_high  # n = 60
    assert probe.cost("dpsgd").ratio is None  # no non-private reference probed
    assert probe.cost("dpsam").backward_passes_ratio == 2 and probe.cost("dpsam").releases_per_step == 2
    assert probe.cost("dpsat").backward_passes_ratio == 1 and probe.cost("dpsat").releases_per_step == 1
    assert probe.threads == 1 and probe.clock == "thread CPU time" and probe.device.startswith("cpu (")
    assert probe.rounds == 60 and probe.batch_size == 64 and probe.setting == probe_setting(SMALL)


def test_a_probe_is_measured_once_per_setting_and_device(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    shutil.copy(WAVE1_STORE, path)  # a store written before probes existed gains the table
    store = RunStore(path)
    first = step_cost(store, SMALL, ["dpsat"], rounds=3, warmup=1)
    assert first.methods == ("dpsgd", "dpsat")
    assert store.find_probe(first.setting, first.device) == first

    def must_not_measure(*args, **kwargs):
        raise AssertionError("measured again")

    real = probe_module.probe_step_cost
    monkeypatch.setattr(probe_module, "probe_step_cost", must_not_measure)
    # the same setting (σ, ε, seed and placement do not change it) and device: reused
    again = dataclasses.replace(SMALL, method="dpsgd", epsilon=None, noise_multiplier=2.0, seed=5, device="cpu")
    assert step_cost(store, again, ["dpsat"]) == first
    for changed in (
        dict(config=dataclasses.replace(SMALL, batch_size=32), methods=["dpsat"]),  # another setting
        dict(config=SMALL, methods=["dpsat"], threads=2),  # another device: "cpu (…, 2 threads)"
        dict(config=SMALL, methods=["dpsam"]),  # a method the stored probe lacks
        dict(config=SMALL, methods=["dpsat"], recompute=True),
    ):
        with pytest.raises(AssertionError, match="measured again"):
            step_cost(store, **changed)

    monkeypatch.setattr(probe_module, "probe_step_cost", real)
    wider = step_cost(store, SMALL, ["dpsam"], rounds=3, warmup=1)
    assert wider.methods == ("dpsgd", "dpsam", "dpsat")  # the re-probe keeps what the row covered
    assert store.find_probe(first.setting, first.device) == wider
    other = step_cost(store, SMALL, ["dpsat"], threads=2, rounds=3, warmup=1)
    assert other.device != first.device and other.threads == 2 and other.clock == "wall clock"
    assert store.find_probe(first.setting, first.device) == wider  # one row per (setting, device)


def test_a_probe_round_trips_through_json_and_names_its_reference():
    probe = probe_step_cost(SMALL, ["sgd", "dpsat"], rounds=3, warmup=0)
    assert CostProbe.from_dict(probe.to_dict()) == probe
    assert probe.cost("dpsat").ratio_ci_low is None  # 3 rounds: too few for a 95% interval of the median
    stored_before = probe.to_dict()
    for cost in stored_before["costs"]:  # a probe stored before the interval was kept still loads
        del cost["ratio_ci_low"], cost["ratio_ci_high"]
    assert CostProbe.from_dict(stored_before) == probe
    assert probe.cost("dpsgd").reference == "sgd" and probe.cost("sgd").ratio is None
    assert set(probe.ratio) == {"dpsgd", "dpsat"}
    with pytest.raises(KeyError, match="not probed"):
        probe.cost("dpsam")


def test_the_median_interval_is_the_binomial_order_statistics_interval():
    from scipy import stats

    from dpsat_core.probe import median_interval

    assert median_interval([1.0, 2, 3, 4, 5]) is None  # n = 5: even (min, max) covers only 93.75%
    for n in (6, 7, 20, 101, 300):
        values = [float((i * 37) % n) for i in range(n)]  # a shuffled 0..n-1: the k-th order statistic is k-1
        low, high = median_interval(values)
        j = int(low) + 1  # 1-based order statistic
        assert high == n - j  # symmetric: x(n+1-j)
        # the largest j with P(B ≤ j-1) ≤ 2.5%, B ~ binomial(n, 1/2): coverage 1 - 2·P(B ≤ j-1) ≥ 95%
        assert stats.binom.cdf(j - 1, n, 0.5) <= 0.025 < stats.binom.cdf(j, n, 0.5)
