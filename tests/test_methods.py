"""The method registry: a method added with one step class and one entry reaches every comparison."""

import pytest

from dpsat_core import (
    METHODS,
    ConfigError,
    MethodInfo,
    RunStore,
    SweepSpec,
    TrainConfig,
    figures,
    register_method,
    sweep,
    train,
)
from dpsat_core.compare import comparisons_at, group_runs, verdict
from dpsat_core.methods import compared_methods, method_table
from dpsat_core.report import build_report, render_html
from dpsat_core.steps import DpSgdStep
from dpsat_core.sweeps import default_comparison


class ToyStep(DpSgdStep):
    """A toy method's one class: DP-SGD's step under a new name (one release, one backward pass)."""


TOY = MethodInfo(
    name="toy",
    label="Toy-DP",
    color="#9467bd",
    private=True,
    uses_rho=False,
    releases_per_step=1,
    backward_passes_per_step=1,
    extra_epsilon="none",
    summary="A test method.",
    step=ToyStep,
    baseline="dpsgd",
)


@pytest.fixture
def toy():
    register_method(TOY)
    yield TOY
    METHODS.pop("toy")


def test_every_compared_method_names_a_registered_baseline_of_the_same_privacy():
    for info in compared_methods():
        assert METHODS[info.baseline].private == info.private
    assert [m.name for m in compared_methods(private=True)] == ["dpsam", "dpsat"]
    assert METHODS["dpsgd"].baseline is None and METHODS["sam"].baseline == "sgd"


def test_registering_checks_the_name_and_the_baseline():
    with pytest.raises(ConfigError, match="already registered"):
        register_method(METHODS["dpsat"])
    with pytest.raises(ConfigError, match="must be a registered private method"):
        register_method(MethodInfo(**{**TOY.__dict__, "name": "toy2", "baseline": "sgd"}))
    assert "toy2" not in METHODS


def test_declared_releases_must_match_privacy_and_what_the_step_does(tmp_path):
    with pytest.raises(ConfigError, match="a private method makes ≥ 1 noisy release"):
        register_method(MethodInfo(**{**TOY.__dict__, "name": "toy0", "releases_per_step": 0}))
    # DP-SAM's step (2 releases) registered as if it made 1: σ would be calibrated for half the releases
    liar = MethodInfo(**{**METHODS["dpsam"].__dict__, "name": "liar", "label": "Liar", "releases_per_step": 1})
    register_method(liar)
    try:
        result = train(TrainConfig(dataset="breast_cancer", method="liar", epochs=1, batch_size=64))
    finally:
        METHODS.pop("liar")
    assert result.status == "failed" and "declares 1 per step" in result.reason
    assert result.releases == 2 * result.steps


def test_a_registered_toy_method_reaches_the_verdict_the_report_and_the_figures(toy, tmp_path):
    assert TrainConfig(method="toy").private and "Toy-DP" in [row["method"] for row in method_table()]
    assert "toy" in default_comparison().methods
    store = RunStore(tmp_path / "runs.db")
    spec = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64),
        methods=("dpsgd", "toy"),
        epsilons=(3.0,),
        seeds=(0,),
    )
    result = sweep(spec, store)
    assert len(result.trained) == 2 and not result.errors
    stats = group_runs(store.list_runs())
    verdicts = comparisons_at(stats, 3.0)
    assert [(c.method, c.baseline) for c in verdicts] == [("toy", "dpsgd")]
    assert verdict(verdicts[0]).startswith("At ε=3, Toy-DP vs DP-SGD:")
    report = build_report(store)
    assert [c.method for c in report.headline[0].comparisons] == ["toy"]
    page = render_html(report, static_images=False)
    assert "At ε=3, Toy-DP vs DP-SGD" in page and "Toy-DP against DP-SGD" in page
    trace = next(t for t in figures.accuracy_vs_epsilon(stats).data if t.name == "Toy-DP")
    assert trace.line.color == TOY.color
