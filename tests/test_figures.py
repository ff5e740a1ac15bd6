import dataclasses
import itertools
import math

import plotly.graph_objects as go
import pytest

from dpsat_core import METHODS, AdaptiveSharpness, Slice, Surface, figures
from dpsat_core.compare import group_runs
from tests.factories import record, spectrum

METHODS_ORDER = ("dpsgd", "dpsam", "dpsat")


def test_figures_use_the_method_table_colours_and_names():
    runs = [
        record("sgd", None, 0, 0.95),
        record("dpsgd", 1.0, 0, 0.7),
        record("dpsgd", 4.0, 0, 0.8),
        record("dpsat", 1.0, 0, 0.72),
        record("dpsat", 4.0, 0, 0.83),
    ]
    fig = figures.accuracy_vs_epsilon(group_runs(runs))
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"DP-SGD", "DP-SAT"}
    assert traces["DP-SAT"].line.color == METHODS["dpsat"].color and list(traces["DP-SAT"].y) == [72.0, 83.0]
    assert fig.layout.shapes[0].line.color == METHODS["sgd"].color  # the non-private ceiling as a line
    spectra = {r.run_id: spectrum(5.0) for r in runs}
    hessian = figures.hessian_vs_epsilon(group_runs(runs, spectra))
    # λ_max and trace per method, and (one seed each) the trace's Hutchinson error bars on a trace of their own
    assert sorted(t.mode for t in hessian.data) == ["lines+markers"] * 4 + ["markers"] * 2
    assert hessian.layout.xaxis.title.text == hessian.layout.xaxis2.title.text == "ε (target, log scale)"
    adaptive = {r.run_id: AdaptiveSharpness(lambda_max=0.5, n_samples=64, n_params=10, seconds=0.1) for r in runs}
    lines = {t.name: t for t in figures.adaptive_vs_epsilon(group_runs(runs, spectra, adaptive)).data}
    assert set(lines) == {"DP-SGD", "DP-SAT"} and list(lines["DP-SAT"].y) == [0.5, 0.5]
    assert list(fig.layout.xaxis.tickvals) == [1.0, 4.0]  # ticks at the swept values, not log decades


def test_methods_that_coincide_stay_visible_and_sigma_runs_are_drawn_as_private():
    runs = [record(m, 2.0, 0, 0.8) for m in ("dpsgd", "dpsat")]  # identical accuracy: the lines coincide
    runs += [record("dpsgd", None, 0, 0.7, sigma=2.0, spent=1.3)]
    traces = {t.name: t for t in figures.accuracy_vs_epsilon(group_runs(runs)).data}
    a, b = traces["DP-SGD"], traces["DP-SAT"]
    assert (a.line.dash, a.marker.symbol) != (b.line.dash, b.marker.symbol)
    sigma = traces["DP-SGD (σ runs, at ε spent)"]
    assert sigma.x[0] == pytest.approx(1.3, rel=0.1) and list(sigma.y) == [70.0]
    assert list(sigma.customdata[0][:2]) == ["σ=2", " (ε spent 1.3)"]  # the hover gives the true ε, not the dodged x


def test_methods_at_one_epsilon_are_dodged_apart_with_their_own_error_bars_and_the_true_epsilon_in_the_hover():
    runs = [record(m, e, s, 0.8 + 0.01 * s) for m in ("dpsgd", "dpsam", "dpsat") for e in (1.0, 8.0) for s in (0, 1)]
    adaptive = {r.run_id: AdaptiveSharpness(lambda_max=0.5, n_samples=8, n_params=4, seconds=0.1) for r in runs}
    stats = group_runs(runs, None, adaptive)
    for fig in (figures.accuracy_vs_epsilon(stats), figures.adaptive_vs_epsilon(stats)):
        sgd, sam, sat = fig.data
        for eps, i in ((1.0, 0), (8.0, 1)):
            xs = [t.x[i] for t in (sgd, sam, sat)]
            assert xs[0] < xs[1] < xs[2] and xs[1] == pytest.approx(eps)  # registry order, centred on the true ε
            assert xs[0] * xs[2] == pytest.approx(eps**2)  # symmetric on the log axis
            assert 1.03 < xs[2] / xs[1] < 1.15  # apart, but nowhere near the next swept ε
        assert [t.customdata[1][0] for t in (sgd, sam, sat)] == ["ε=8"] * 3
        assert all(t.error_y.color == t.line.color == METHODS[m].color for t, m in zip(fig.data, METHODS_ORDER))
        assert list(fig.layout.xaxis.tickvals) == [1.0, 8.0]  # the ticks stay at the swept values
    acc, sharp = figures.accuracy_vs_epsilon(stats), figures.adaptive_vs_epsilon(stats)
    # plotly never wraps a title: the Overview's half-width column cut off a longer one at a 1,100-pixel window
    assert all(len(f.layout.title.text) <= 36 for f in (acc, sharp, figures.hessian_vs_epsilon(stats)))
    assert [list(t.x) for t in acc.data] == [list(t.x) for t in sharp.data]  # a method keeps its offset
    assert acc.data[0].error_y.array[0] == pytest.approx(100 * stats[0].accuracy_std)
    assert acc.layout.title.subtitle.text == figures.ERROR_BARS


def test_many_lines_stay_on_their_side_of_the_midpoint_between_two_swept_epsilons():
    grid, sat, sam = (1.0, 2.0, 3.0, 4.0, 8.0), (0.01, 0.02, 0.05, 0.1, 0.2), (0.02, 0.05, 0.1)
    runs = [record("dpsgd", e, s, 0.8) for e in grid for s in (0, 1)]
    runs += [
        record(m, e, s, 0.8, rho=r)
        for m, rhos in (("dpsat", sat), ("dpsam", sam))
        for r in rhos
        for e in grid
        for s in (0, 1)
    ]
    fig = figures.accuracy_vs_epsilon(group_runs(runs))
    assert len(fig.data) == 9  # 9 lines: uncapped, ε=3's points reached 3.69, past the midpoint √12 ≈ 3.46 to ε=4
    drawn = {e: [t.x[i] for t in fig.data] for i, e in enumerate(grid)}
    for a, b in itertools.pairwise(grid):
        assert max(drawn[a]) < math.sqrt(a * b) < min(drawn[b])
    # the whole spread at a tick stays within a quarter of the narrowest log gap (3 to 4)
    assert math.log10(max(drawn[3.0]) / min(drawn[3.0])) <= 0.25 * math.log10(4 / 3) + 1e-12
    assert figures.dodge_step([1.0], 9, 1.0) == figures.DODGE  # one tick: nothing to cap against


def test_the_rho_views_dodge_is_capped_by_the_narrowest_rho_gap():
    from dpsat_core.compare import comparisons

    rhos = (0.01, 0.02, 1.0)  # span ≈ 1: the uncapped shift 0.025 would pass 0.015, the midpoint of 0.01 and 0.02
    runs = [record("dpsgd", 2.0, s, 0.8) for s in (0, 1)]
    runs += [record(m, 2.0, s, 0.8, rho=r) for m in ("dpsam", "dpsat") for r in rhos for s in (0, 1)]
    stats = group_runs(runs)
    gains = [t for t in figures.rho_view(stats, comparisons(stats)).data if t.mode == "lines+markers"]
    assert [t.name for t in gains] == ["DP-SAM", "DP-SAT"]
    for i, (a, b) in enumerate(itertools.pairwise(rhos)):
        assert max(t.x[i] for t in gains) < (a + b) / 2 < min(t.x[i + 1] for t in gains)
    assert gains[1].x[0] - gains[0].x[0] == pytest.approx(0.25 * 0.01)


def test_the_sharpness_hover_counts_the_seeds_analysed_and_shows_no_zero_spread():
    runs = [record(m, 2.0, s, 0.8, run_id=f"{m}{s}") for s in (0, 1, 2) for m in ("dpsgd", "dpsat")]
    spectra = {"dpsgd0": spectrum(4.0), "dpsgd1": spectrum(5.0), "dpsat0": spectrum(3.0)}  # 2 and 1 of 3 analysed
    lam_sgd, lam_sat, *_ = figures.hessian_vs_epsilon(group_runs(runs, spectra)).data
    assert lam_sgd.customdata[0][3] == f" ± {math.sqrt(0.5):.2g} (std over 2 of 3 seeds analysed)"
    assert lam_sat.customdata[0][3] == " (1 of 3 seeds analysed: no spread)" and "±" not in lam_sat.customdata[0][3]
    acc_sgd = figures.accuracy_vs_epsilon(group_runs(runs, spectra)).data[0]
    assert acc_sgd.customdata[0][3] == " ± 0 (std over 3 seeds)"  # the accuracy counts every seed


def test_a_line_keeps_its_offset_in_a_figure_where_other_lines_have_nothing_to_draw():
    runs = [record("dpsgd", 2.0, 0, 0.8, run_id="g")]
    runs += [record("dpsat", 2.0, 0, 0.8, rho=r, run_id=f"t{r}") for r in (0.05, 0.2)]
    adaptive = {i: AdaptiveSharpness(lambda_max=0.5, n_samples=8, n_params=4, seconds=0.1) for i in ("g", "t0.05")}
    stats = group_runs(runs, None, adaptive)
    acc = {t.name: t.x[0] for t in figures.accuracy_vs_epsilon(stats).data}
    sharp = {t.name: t.x[0] for t in figures.adaptive_vs_epsilon(stats).data}  # ρ=0.2 not analysed
    assert len(set(acc.values())) == 3 and acc["DP-SGD"] == sharp["DP-SGD"] and acc["DP-SAT ρ=0.05"] == sharp["DP-SAT"]


def test_sharpness_error_bars_are_the_seed_spread_or_for_one_seed_the_traces_standard_error():
    runs = [record("dpsgd", 2.0, s, 0.8, run_id=f"g{s}") for s in (0, 1)] + [record("dpsat", 2.0, 0, 0.8, run_id="t")]
    spectra = {"g0": spectrum(4.0), "g1": spectrum(6.0), "t": dataclasses.replace(spectrum(5.0), trace_stderr=0.7)}
    fig = figures.hessian_vs_epsilon(group_runs(runs, spectra))
    lam_sgd, lam_sat, trace_sgd, trace_sat, hutchinson = fig.data
    assert lam_sgd.error_y.array[0] == pytest.approx(math.sqrt(2))
    assert lam_sgd.customdata[0][3] == f" ± {math.sqrt(2):.2g} (std over 2 seeds)"
    assert trace_sgd.error_y.array[0] == pytest.approx(10 * math.sqrt(2))  # trace = 10·λ_max in the factory
    assert lam_sat.error_y.array[0] == 0 and lam_sat.customdata[0][3] == " (1 seed: no spread)"  # no "± 0"
    # one run's trace: its Hutchinson standard error, drawn thin and capless on a trace of its own, said in the hover
    assert trace_sat.error_y.array[0] == 0 and "Hutchinson standard error" in trace_sat.customdata[0][3]
    assert trace_sat.customdata[0][3].startswith(" ± 0.7 ") and "%{customdata[3]}" in trace_sat.hovertemplate
    assert list(hutchinson.error_y.array) == [0.7] and list(hutchinson.x) == list(trace_sat.x)
    assert hutchinson.error_y.width == 0 < hutchinson.error_y.thickness < trace_sat.error_y.thickness
    assert hutchinson.showlegend is False and hutchinson.hoverinfo == "skip" and hutchinson.xaxis == "x2"
    assert fig.layout.title.subtitle.text.startswith(figures.TRACE_ERROR_BARS)
    (bars,) = figures.top_eigenvalues({"DP-SAT ε=2 s0": ("dpsat", spectra["t"])}).data  # one run: its trace's error
    assert bars.name == "DP-SAT ε=2 s0: trace 50 ± 0.7" and list(bars.y) == [5.0]


def surface(loss, center):
    return Surface(axis=[-1.0, 0.0, 1.0], loss=loss, center_loss=center, complete=True, seconds=0.1)


def test_surfaces_share_one_colour_scale():
    a = surface([[3.0, 2.0, 3.0], [2.0, 1.0, 2.0], [3.0, 2.0, 3.0]], 1.0)
    b = surface([[9.0, 2.0, 3.0], [2.0, 0.5, 2.0], [3.0, 2.0, None]], 0.5)
    fig = figures.surfaces_side_by_side({"A": a, "B": b})
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.5, 9.0)
    assert all(t.coloraxis == "coloraxis" for t in fig.data)
    # square panels: d₂ is drawn on d₁'s scale in each
    assert (fig.layout.yaxis.scaleanchor, fig.layout.yaxis2.scaleanchor) == ("x", "x2")
    assert fig.layout.yaxis2.scaleratio == 1 and fig.layout.xaxis2.title.text == "d₁"
    four = figures.surfaces_side_by_side({k: a for k in "ABCD"})  # wraps after three panels
    assert [t.xaxis for t in four.data] == ["x", "x2", "x3", "x4"] and four.layout.height == 120 + 2 * 360
    line = figures.slices_overlay(
        {
            "x": (
                "dpsat",
                Slice(
                    axis=[-1.0, 0.0, 1.0], loss=[2.0, 1.0, 2.0], accuracy=[0.5, 0.9, 0.5], center_loss=1.0, seconds=0.1
                ),
            )
        }
    )
    assert isinstance(line, go.Figure) and line.data[0].line.color == METHODS["dpsat"].color


def test_the_rho_view_plots_the_paired_gain_and_sharpness_against_rho_and_circles_the_validation_pick():
    from dpsat_core.compare import comparisons, rho_levels

    runs = [record("dpsgd", 2.0, s, 0.80 + s / 100, run_id=f"g{s}") for s in range(2)]
    # ρ=0.02 has the better test accuracy, ρ=0.2 the better validation accuracy: validation decides
    for rho, lift, val in ((0.02, 0.01, 0.70), (0.2, -0.05, 0.75)):
        runs += [
            record("dpsat", 2.0, s, 0.80 + s / 100 + lift, rho=rho, run_id=f"t{rho}{s}", validation=val + s / 100)
            for s in range(2)
        ]
    adaptive = {
        r.run_id: AdaptiveSharpness(lambda_max=r.config.rho + 1, n_samples=8, n_params=4, seconds=0.1) for r in runs
    }
    stats = group_runs(runs, None, adaptive)
    compared = comparisons(stats)
    assert rho_levels(compared) == ["ε=2"]
    fig = figures.rho_view(stats, compared)
    gain, pick, sharp = fig.data
    assert list(gain.x) == [0.02, 0.2] and [round(y, 6) for y in gain.y] == [1.0, -5.0]
    assert list(pick.x) == [0.2] and round(pick.y[0], 6) == -5.0 and pick.name == "DP-SAT: best ρ by validation"
    assert list(sharp.x) == [0.02, 0.2] and list(sharp.y) == [1.02, 1.2]
    assert fig.layout.xaxis.title.text == "ρ" and fig.layout.yaxis2.title.text == "adaptive λ_max"
    assert not [a for a in fig.layout.annotations if "not computed yet" in a.text]
    bare = figures.rho_view(group_runs(runs), compared)  # before the analysis: the empty panel says why
    assert [a.text for a in bare.layout.annotations if "not computed yet" in a.text]


def test_the_rho_view_draws_methods_at_one_rho_apart_with_their_own_error_bars_and_the_true_rho_in_the_hover():
    from dpsat_core.compare import comparisons

    runs = [record("dpsgd", 2.0, s, 0.8, run_id=f"g{s}") for s in range(2)]
    runs += [
        record(m, 2.0, s, 0.8 + s / 100, rho=r, run_id=f"{m}{r}{s}")
        for m in ("dpsam", "dpsat")
        for r in (0.05, 0.2)
        for s in range(2)
    ]
    adaptive = {
        r.run_id: AdaptiveSharpness(lambda_max=1 + r.config.seed, n_samples=8, n_params=4, seconds=0.1) for r in runs
    }
    stats = group_runs(runs, None, adaptive)
    fig = figures.rho_view(stats, comparisons(stats))
    gains = [t for t in fig.data if t.xaxis == "x" and t.mode == "lines+markers"]
    sharp = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in gains] == ["DP-SAM", "DP-SAT"]
    assert gains[0].x[0] < 0.05 < gains[1].x[0] and gains[0].x[0] + gains[1].x[0] == pytest.approx(0.1)
    assert [list(t.customdata) for t in gains + sharp] == [[0.05, 0.2]] * 4  # the hover's true ρ
    assert [t.error_y.color for t in gains + sharp] == [METHODS["dpsam"].color, METHODS["dpsat"].color] * 2
    assert list(sharp[0].error_y.array) == pytest.approx([math.sqrt(0.5)] * 2)  # std of 1 and 2 over the seeds
    assert fig.layout.title.subtitle.text.startswith(figures.RHO_ERROR_BARS)


def test_training_curves_draw_one_line_per_cell_the_mean_over_seeds_in_the_methods_hue():
    from dpsat_core import EpochMetrics

    def with_epochs(r, accuracies):
        epochs = tuple(
            EpochMetrics(
                epoch=i + 1, train_loss=1, test_loss=1, test_accuracy=a, epsilon_spent=1, seconds=i, steps=i, releases=i
            )
            for i, a in enumerate(accuracies)
        )
        return dataclasses.replace(r, epochs=epochs)

    runs = [
        with_epochs(record(m, eps, s, 0.8, run_id=f"{m}{eps}{s}"), [0.5 + s / 10, 0.6 + s / 10])
        for m in ("dpsgd", "dpsat")
        for eps in (1.0, 8.0)
        for s in range(3)
    ]
    fig = figures.training_curves(runs)
    assert [t.name for t in fig.data] == [
        "DP-SGD ε=1 (3 seeds)",
        "DP-SGD ε=8 (3 seeds)",
        "DP-SAT ε=1 ρ=0.05 (3 seeds)",
        "DP-SAT ε=8 ρ=0.05 (3 seeds)",
    ]
    assert [round(y, 6) for y in fig.data[0].y] == [60.0, 70.0]  # the mean of 50/60/70 and 60/70/80
    assert list(fig.data[0].customdata[0]) == [50.0, 70.0]  # the seed spread, in the hover
    colors = [t.line.color for t in fig.data]
    assert len(set(colors)) == 4 and colors[1] == METHODS["dpsgd"].color  # the largest ε in the method's colour
    single = figures.training_curves(runs[:1])
    assert single.data[0].name == "DP-SGD ε=1 s0"


def test_a_run_without_noise_is_named_infinite_in_the_epsilon_figure_not_left_blank():
    import math

    from dpsat_core import EpochMetrics

    epoch = EpochMetrics(
        epoch=1, train_loss=1, test_loss=1, test_accuracy=0.9, epsilon_spent=math.inf, seconds=1, steps=1, releases=1
    )
    no_noise = dataclasses.replace(record("dpsgd", None, 0, 0.9, sigma=0.0, spent=math.inf), epochs=(epoch,))
    (trace,) = figures.epsilon_over_epochs([no_noise]).data
    assert trace.name == "DP-SGD σ=0 s0 (∞, off the axis)"  # plotly would draw nothing and say nothing


def test_cells_that_differ_in_rho_are_labelled_and_drawn_apart():
    runs = [record("dpsgd", 2.0, 0, 0.8, run_id="g")]
    runs += [record("dpsat", 2.0, 0, 0.8, rho=r, run_id=f"t{r}") for r in (0.01, 0.05, 0.2)]
    labels = [figures.run_label(r) for r in runs]
    assert len(set(labels)) == 4 and "DP-SAT ε=2 ρ=0.2 s0" in labels  # pickers keyed by label keep every run
    stats = group_runs(runs)
    acc = figures.accuracy_vs_epsilon(stats)
    sat = [t for t in acc.data if t.name.startswith("DP-SAT")]
    assert len(sat) == 3 and len({(t.line.dash, t.marker.symbol) for t in sat}) == 3
    assert {t.line.color for t in sat} == {METHODS["dpsat"].color}
    bars = figures.cost_per_epoch(stats)
    assert sorted(t.name for t in bars.data) == ["DP-SAT ρ=0.01", "DP-SAT ρ=0.05", "DP-SAT ρ=0.2", "DP-SGD"]


def test_every_figure_of_training_data_says_so_and_the_others_do_not():
    from dpsat_core.caveats import TRAINING_DATA
    from dpsat_core.compare import comparisons
    from dpsat_core.results import NoiseRobustness

    runs = [record(m, 2.0, s, 0.8 + 0.01 * s) for m in ("dpsgd", "dpsat") for s in (0, 1)]
    stats = group_runs(runs, {r.run_id: spectrum(2.0) for r in runs})
    flat = surface([[1.0] * 3] * 3, 1.0)
    line = Slice(axis=[0.0, 1.0], loss=[1.0, 1.0], accuracy=[0.9, 0.9], center_loss=1.0, seconds=0.1)
    noise = NoiseRobustness(scales=[0.1], mean_increase=[0.2], std_increase=[0.01], draws=2, base_loss=1, seconds=0)
    labelled = {
        "hessian": figures.hessian_vs_epsilon(stats),
        "adaptive": figures.adaptive_vs_epsilon(stats),
        "rho": figures.rho_view(stats, comparisons(stats)),
        "slices": figures.slices_overlay({"a": ("dpsat", line)}),
        "surfaces": figures.surfaces_side_by_side({"a": flat}),
        "3d": figures.surface_3d("a", flat),
        "line": figures.line_between_runs(line, "a", "b"),
        "top": figures.top_eigenvalues({"a": ("dpsat", spectrum(2.0))}),
        "density": figures.eigenvalue_density({"a": ("dpsat", spectrum(2.0))}),
        "noise": figures.noise_robustness({"a": ("dpsat", noise)}),
    }
    for name, fig in labelled.items():
        assert fig.layout.title.subtitle.text.endswith(TRAINING_DATA), name
    # timings: their own caveat (the batch sizes they follow), not "computed on training data"
    assert figures.cost_per_epoch(stats).layout.title.subtitle.text == "The times follow each epoch's Poisson " + (
        "batch sizes, which ε does not cover"
    )
    # test accuracy and ε are measured on held-out rows or accounted: no label
    for fig in (figures.accuracy_vs_epsilon(stats), figures.training_curves(runs), figures.epsilon_over_epochs(runs)):
        assert TRAINING_DATA not in (fig.layout.title.subtitle.text or "")


def test_a_single_epsilon_or_rho_stays_one_tick_with_its_methods_a_small_offset_around_it():
    from dpsat_core.compare import comparisons

    runs = [record(m, 3.0, s, 0.8, rho=0.05) for m in ("dpsgd", "dpsat") for s in (0, 1)]
    stats = group_runs(runs)
    fig = figures.accuracy_vs_epsilon(stats)
    low, high = fig.layout.xaxis.range  # autoranged, the two dodged points were the axis's two ends
    assert (low, high) == pytest.approx((math.log10(3) - 0.3, math.log10(3) + 0.3))
    xs = [math.log10(t.x[0]) for t in fig.data]
    assert low + 0.25 < min(xs) < math.log10(3) < max(xs) < high - 0.25  # near the tick, far from the edges
    view = figures.rho_view(stats, comparisons(stats))
    low, high = view.layout.xaxis.range
    assert (low, high) == pytest.approx((0.05 * 0.7, 0.05 * 1.3)) and list(view.layout.xaxis.tickvals) == [0.05]
    gains = [t.x[0] for t in view.data if t.mode == "lines+markers"]
    assert all(low < x < high for x in gains)
    two = figures.accuracy_vs_epsilon(group_runs(runs + [record("dpsgd", 8.0, 0, 0.8)]))
    assert two.layout.xaxis.range is None  # two ε: plotly's autorange over the ticks


def test_bottom_legends_sit_under_the_axis_title_and_a_long_one_makes_the_figure_taller():
    runs = [record("dpsgd", e, 0, 0.8) for e in (1.0, 2.0)]
    few = figures.accuracy_vs_epsilon(group_runs(runs))
    many = go.Figure([go.Scatter(x=[1], y=[1], name=str(i)) for i in range(12)])
    figures._layout(many, "t", "x", "y")
    for fig in (few, many, figures.slices_overlay({})):
        # anchored to the figure's bottom edge: plotly grows the margin below the x-axis title to fit it
        assert (fig.layout.legend.yref, fig.layout.legend.y, fig.layout.legend.yanchor) == ("container", 0, "bottom")
    assert few.layout.height == figures.HEIGHT
    assert many.layout.height == figures.HEIGHT + (12 - figures.LEGEND_ROOMY) * figures.LEGEND_LINE
