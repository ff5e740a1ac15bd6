"""Plotly figures built from typed results: the pages, the CLI and reports draw the same ones.

Method colours and names come from `METHODS`, so they are identical everywhere.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Mapping, Optional, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .caveats import BATCH_TIMING, TRAINING_DATA
from .compare import CellStats, Comparison, privacy_label, validation_picks
from .methods import METHODS, method_info
from .results import EpochMetrics, HessianSpectrum, NoiseRobustness, RunRecord, Slice, Surface, counted

TEMPLATE = "plotly_white"


def _color(method: str) -> str:
    return method_info(method).color


# Figure height with a few legend entries, and the height added per entry beyond them: a legend wraps to one entry
# a line in a narrow column, and it should push the figure down rather than squeeze the plot or scroll
HEIGHT = 450
LEGEND_ROOMY = 4
LEGEND_LINE = 19


def _layout(fig: go.Figure, title: str, x: str, y: str, **extra) -> go.Figure:
    entries = sum(1 for t in fig.data if t.showlegend is not False)
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        xaxis_title=x,
        yaxis_title=y,
        legend_title_text="",
        # below the plot, so a narrow column keeps its plot width; anchored to the bottom of the whole figure
        # (`yref="container"`), so plotly grows the bottom margin to fit it under the x-axis title, never over it
        legend=dict(orientation="h", yref="container", yanchor="bottom", y=0, xanchor="left", x=0),
        showlegend=True,  # also with a single trace: the name says which run or method it is
        margin=dict(l=60, r=20, t=60, b=50),
        **extra,
    )
    if fig.layout.height is None:
        fig.update_layout(height=HEIGHT + LEGEND_LINE * max(0, entries - LEGEND_ROOMY))
    return fig


def on_training_data(fig: go.Figure, what: str = "") -> go.Figure:
    """Say under the title that the figure reads the training rows without noise (`caveats.TRAINING_DATA`),
    so a page, a download or a report shows it with the figure."""
    fig.update_layout(title_subtitle_text=f"{what}{TRAINING_DATA}", margin_t=95)  # room above subplot titles
    return fig


def run_label(record: RunRecord) -> str:
    """The label every figure and picker uses for one run: method, privacy level (target ε or σ), ρ for
    the methods that use it, seed, and the audit for audit runs. Runs of one setting never share a label."""
    config = record.config
    info = method_info(record.method)
    privacy = f" {privacy_label(config.epsilon, config.noise_multiplier)}" if config.private else ""
    rho = f" ρ={config.rho:g}" if info.uses_rho else ""
    audit = f" · audit ({config.audit_mode}, {config.canaries} canaries)" if config.audit else ""
    return f"{info.label}{privacy}{rho} s{config.seed}{audit}"


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_MARKERS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star")


def _style(method: str, variant: int = 0) -> dict:
    """Colour, dash and marker of a method, so methods whose lines coincide stay visible; `variant` k > 0
    (the k-th ρ of a method run at several) keeps the colour and shifts dash and marker."""
    info = method_info(method)
    dash, marker = info.dash, info.marker
    if variant:
        dash = _DASHES[(_DASHES.index(dash) + variant) % len(_DASHES)] if dash in _DASHES else dash
        marker = _MARKERS[(_MARKERS.index(marker) + variant) % len(_MARKERS)] if marker in _MARKERS else marker
    return dict(line_color=info.color, line_dash=dash, marker_symbol=marker, marker_size=9)


def _rho_variant(method: str, rho: float, rhos: Sequence[float]) -> int:
    """0 for a method's only ρ; else the ρ's rank among the method's ρ values (so each ρ looks different)."""
    ranked = sorted(set(rhos))
    return ranked.index(rho) if len(ranked) > 1 else 0


def _line_key(c: CellStats) -> tuple[str, float, bool]:
    """The line of `_series` a private cell is drawn on: method, ρ, and whether it was trained with σ."""
    return (c.method, c.rho, c.noise_multiplier is not None)


def _series(stats: Sequence[CellStats]) -> dict[str, list[CellStats]]:
    """Private cells as lines along the ε axis: one per method, ρ, and kind (target ε, or σ runs at ε spent)."""
    groups: dict[tuple, list[CellStats]] = {}
    for c in stats:
        if c.private and c.epsilon_axis is not None:
            groups.setdefault(_line_key(c), []).append(c)
    rhos = {m: {k[1] for k in groups if k[0] == m} for m, _, _ in groups}
    named = {}
    for (method, rho, by_sigma), cells in groups.items():
        name = method_info(method).label + (f" ρ={rho:g}" if len(rhos[method]) > 1 else "")
        named[name + (" (σ runs, at ε spent)" if by_sigma else "")] = sorted(cells, key=lambda c: c.epsilon_axis)
    return named


EPSILON_TITLE = "ε (target, log scale)"
# With a single ε (or ρ) the axis spans this far either side of it: log10 units for ε, a share of ρ for ρ
SINGLE_TICK_HALF_RANGE = 0.3


def _epsilon_axis(fig: go.Figure, stats: Sequence[CellStats], **where) -> None:
    """A log ε axis with ticks at the values actually swept, titled alike on every subplot."""
    ticks = sorted({c.epsilon_axis for c in stats if c.private and c.epsilon_axis is not None})
    fig.update_xaxes(
        type="log", tickvals=ticks, ticktext=[f"{t:.3g}" for t in ticks], title_text=EPSILON_TITLE, **where
    )
    if len(ticks) == 1:  # no gap to autorange over: a fixed range keeps the dodge a small offset around the tick
        middle = math.log10(ticks[0])
        fig.update_xaxes(range=[middle - SINGLE_TICK_HALF_RANGE, middle + SINGLE_TICK_HALF_RANGE], **where)


# What the error bars of `_add_series` are, said under the title of every figure that draws them
ERROR_BARS = "mean ± std over seeds (one seed: no bar)"
TRACE_ERROR_BARS = (
    "mean ± std over the seeds analysed; a single seed: no bar on λ_max, on the trace a thin bar without caps, "
    "its Hutchinson standard error"
)


def with_error_bars(fig: go.Figure, bars: str) -> go.Figure:
    """Put `bars` (what the error bars are) on the first line under the title, above any subtitle already there."""
    below = fig.layout.title.subtitle.text
    text = f"{bars}<br>{below}" if below else bars
    return fig.update_layout(title_subtitle_text=text, margin_t=125 if below else 95)  # room above subplot titles


RHO_ERROR_BARS = "gain: paired 95% interval (none with one seed pair); sharpness: mean ± std over seeds"

# Methods at one ε are drawn this share of the ε axis's log span apart, so equal values do not hide each other
DODGE = 0.025
# ... but all of them together within this share of the narrowest gap between two ticks, so that a value's points
# stay on its side of the midpoint to the next, however many lines there are
DODGE_GAP = 0.25


def dodge_step(ticks: Sequence[float], lines: int, span: float) -> float:
    """How far apart (in axis units: log10 ε, or ρ) `lines` lines at one tick are drawn: `DODGE`·`span`, capped so
    the whole spread stays within `DODGE_GAP` of the narrowest gap between `ticks`."""
    gaps = [b - a for a, b in itertools.pairwise(sorted(set(ticks)))]
    if lines < 2 or not gaps:
        return DODGE * span
    return min(DODGE * span, DODGE_GAP * min(gaps) / (lines - 1))


def _dodges(stats: Sequence[CellStats]) -> dict[tuple[str, float, bool], float]:
    """`_line_key` → the factor its ε values are multiplied by when drawn: lines spread symmetrically around the
    true ε on the log axis (`dodge_step`), in one order for every figure of these cells (a line keeps its offset
    even in a figure where some lines have nothing to draw)."""
    cells = [c for c in stats if c.private and c.epsilon_axis is not None]
    keys = list(dict.fromkeys(_line_key(c) for c in cells))
    axis = [math.log10(c.epsilon_axis) for c in cells]
    span = max(max(axis) - min(axis), 0.5) if axis else 0.5
    step = dodge_step(axis, len(keys), span)
    middle = (len(keys) - 1) / 2
    return {key: 10 ** ((i - middle) * step) for i, key in enumerate(keys)}


def _analysed(c: CellStats, std: str) -> str:
    """'3 seeds', or '2 of 3 seeds analysed' where the measure of `std` was computed for fewer of the cell's runs."""
    count = {
        "lambda_max_std": c.lambda_max_by_seed,
        "trace_std": c.lambda_max_by_seed,
        "adaptive_std": c.adaptive_by_seed,
    }
    n = len(count[std]) if std in count else c.seeds
    return counted(n, "seed") if n == c.seeds else f"{n} of {counted(c.seeds, 'seed')} analysed"


def _spread(c: CellStats, std: str, scale: float) -> tuple[float, bool, str]:
    """The error bar of a cell's point (× `scale`), whether it is a single run's Hutchinson standard error (drawn
    apart, `_add_series`), and the hover's words after the value: ' ± 0.012 (std over 3 seeds)'."""
    value = getattr(c, std)
    if value is not None:
        return scale * value, False, f" ± {scale * value:.2g} (std over {_analysed(c, std)})"
    if std == "trace_std" and c.trace_stderr is not None:
        words = f" ± {scale * c.trace_stderr:.2g} (Hutchinson standard error of one run; {_analysed(c, std)})"
        return scale * c.trace_stderr, True, words
    return 0.0, False, f" ({_analysed(c, std)}: no spread)"


def _add_series(
    fig: go.Figure, stats: Sequence[CellStats], mean: str, std: str, *, scale: float = 1.0, **subplot
) -> None:
    """One line per `_series` of the cells that have `mean`: mean ± std (× `scale`) along the ε axis, each
    series dodged along x (`_dodges`) with its error bars in its own colour; the hover gives the true ε."""
    dodges = _dodges(stats)
    shown = [c for c in stats if getattr(c, mean) is not None]
    for name, cells in _series(shown).items():
        rhos = [c.rho for c in shown if c.method == cells[0].method]
        style = _style(cells[0].method, _rho_variant(cells[0].method, cells[0].rho, rhos))
        spreads = [_spread(c, std, scale) for c in cells]
        x = [dodges[_line_key(c)] * c.epsilon_axis for c in cells]
        y = [scale * getattr(c, mean) for c in cells]
        customdata = [[c.privacy, _true_epsilon(c), error, words] for c, (error, _, words) in zip(cells, spreads)]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                mode="lines+markers",
                legendgroup=name,
                showlegend=subplot.get("col", 1) == 1,
                error_y=dict(
                    type="data",
                    array=[0.0 if single else error for error, single, _ in spreads],
                    visible=True,
                    color=style["line_color"],
                    thickness=1.5,
                    width=4,
                ),
                customdata=customdata,
                hovertemplate=f"{name}<br>%{{customdata[0]}}%{{customdata[1]}}<br>%{{y:.3g}}%{{customdata[3]}}"
                "<extra></extra>",
                **style,
            ),
            **subplot,
        )
        if any(single for _, single, _ in spreads):  # one run's estimation error: thin, no caps, unlike a seed spread
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    name=f"{name}: Hutchinson standard error",
                    mode="markers",
                    legendgroup=name,
                    showlegend=False,
                    marker=dict(opacity=0, color=style["line_color"]),
                    error_y=dict(
                        type="data",
                        array=[error if single else 0.0 for error, single, _ in spreads],
                        visible=True,
                        color=style["line_color"],
                        thickness=0.75,
                        width=0,
                    ),
                    customdata=customdata,
                    hoverinfo="skip",
                ),
                **subplot,
            )


def _true_epsilon(c: CellStats) -> str:
    """'' for a cell at its target ε (its privacy label says it), else ' (ε spent 1.3)' for σ runs."""
    return "" if c.target_epsilon is not None else f" (ε spent {c.epsilon_axis:.3g})"


def accuracy_vs_epsilon(stats: Sequence[CellStats]) -> go.Figure:
    """Test accuracy vs ε per private method (mean ± std over seeds); non-private references as lines."""
    fig = go.Figure()
    for c in stats:
        if not c.private:
            fig.add_hline(
                y=100 * c.accuracy_mean,
                line_dash="dash",
                line_color=_color(c.method),
                annotation_text=c.label,
                annotation_position="bottom right",
            )
    _add_series(fig, stats, "accuracy_mean", "accuracy_std", scale=100)
    _epsilon_axis(fig, stats)
    _layout(fig, "Test accuracy vs privacy budget", EPSILON_TITLE, "test accuracy (%)")
    return with_error_bars(fig, ERROR_BARS)


def hessian_vs_epsilon(stats: Sequence[CellStats]) -> go.Figure:
    """Top Hessian eigenvalue and trace vs ε per method (mean ± std over the seeds analysed)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("λ_max", "trace"))
    _add_series(fig, stats, "lambda_max_mean", "lambda_max_std", row=1, col=1)
    _add_series(fig, stats, "trace_mean", "trace_std", row=1, col=2)
    _epsilon_axis(fig, stats)
    fig.update_yaxes(title_text="λ_max (lower = flatter)", row=1, col=1)
    fig.update_yaxes(title_text="trace (lower = flatter)", row=1, col=2)
    # short titles: plotly never wraps one, and a long one is cut off in a narrow column
    _layout(fig, "Sharpness vs privacy budget", EPSILON_TITLE, "λ_max (lower = flatter)")
    return with_error_bars(on_training_data(fig), TRACE_ERROR_BARS)


def adaptive_vs_epsilon(stats: Sequence[CellStats]) -> go.Figure:
    """Adaptive (scale-invariant) λ_max vs ε per private method (mean ± std over the seeds analysed)."""
    fig = go.Figure()
    _add_series(fig, stats, "adaptive_mean", "adaptive_std")
    _epsilon_axis(fig, stats)
    _layout(fig, "Adaptive sharpness vs privacy budget", EPSILON_TITLE, "adaptive λ_max (lower = flatter)")
    return with_error_bars(on_training_data(fig), ERROR_BARS)


def rho_view(stats: Sequence[CellStats], comparisons: Sequence[Comparison]) -> go.Figure:
    """At one privacy level: each method's paired test-accuracy gain over its baseline (95% interval) and
    its adaptive sharpness, against ρ, with the ρ that validation accuracy picks circled (all of them if tied).
    `comparisons` and `stats` should be of that level."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy gain over the baseline", "adaptive sharpness"))
    fig.add_hline(y=0, line_dash="dot", line_color="#888", row=1, col=1)
    methods = list(dict.fromkeys(c.method for c in comparisons))
    rhos = [c.rho for c in comparisons] or [0.0]
    span = (max(rhos) - min(rhos)) or max(rhos) or 1.0  # a single ρ: a share of it
    # methods at one ρ drawn a little apart (the ρ axis is linear), so one's interval does not hide another's
    step = dodge_step(rhos, len(methods), span)
    shift = {m: (i - (len(methods) - 1) / 2) * step for i, m in enumerate(methods)}
    true_rho = "ρ=%{customdata:.3g}<br>"
    for method in methods:
        mine = sorted((c for c in comparisons if c.method == method), key=lambda c: c.rho)
        # error bars to the interval's ends; none with a single seed pair (no interval)
        low = [0.0 if c.ci_points[0] is None else c.gain_points - c.ci_points[0] for c in mine]
        high = [0.0 if c.ci_points[1] is None else c.ci_points[1] - c.gain_points for c in mine]
        style = _style(method)
        color = style["line_color"]
        fig.add_trace(
            go.Scatter(
                x=[c.rho + shift[method] for c in mine],
                y=[c.gain_points for c in mine],
                name=method_info(method).label,
                mode="lines+markers",
                error_y=dict(type="data", symmetric=False, array=high, arrayminus=low, color=color),
                customdata=[c.rho for c in mine],
                hovertemplate=true_rho + "%{y:+.2f} points<extra>%{fullData.name}</extra>",
                **style,
            ),
            row=1,
            col=1,
        )
        best = next(iter(validation_picks([c for c in stats if c.method == method]).values()), frozenset())
        chosen = [c for c in mine if c.rho in best]
        if chosen:
            fig.add_trace(
                go.Scatter(
                    x=[c.rho + shift[method] for c in chosen],
                    y=[c.gain_points for c in chosen],
                    name=f"{method_info(method).label}: {'best' if len(best) == 1 else 'tied best'} ρ by validation",
                    mode="markers",
                    marker=dict(symbol="circle-open", size=22, line_width=2, color=color),
                    customdata=[c.rho for c in chosen],
                    hovertemplate=true_rho + "%{y:+.2f} points<extra>%{fullData.name}</extra>",
                ),
                row=1,
                col=1,
            )
        cells = sorted((c for c in stats if c.method == method and c.adaptive_mean is not None), key=lambda c: c.rho)
        if cells:
            fig.add_trace(
                go.Scatter(
                    x=[c.rho + shift[method] for c in cells],
                    y=[c.adaptive_mean for c in cells],
                    name=method_info(method).label,
                    mode="lines+markers",
                    showlegend=False,
                    error_y=dict(type="data", array=[c.adaptive_std or 0.0 for c in cells], color=color),
                    customdata=[c.rho for c in cells],
                    hovertemplate=true_rho + "%{y:.3g} (mean over seeds)<extra>%{fullData.name}</extra>",
                    **style,
                ),
                row=1,
                col=2,
            )
    if not any(c.adaptive_mean is not None for c in stats):  # an empty panel says why
        fig.add_annotation(
            text="adaptive sharpness not computed yet<br>(Sharpness page)",
            xref="x2 domain",
            yref="y2 domain",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    fig.update_xaxes(title_text="ρ")
    if len(set(rhos)) == 1:  # no gap to autorange over: keep the dodge a small offset around the only ρ
        rho = rhos[0]
        half = SINGLE_TICK_HALF_RANGE * (abs(rho) or 1.0)
        fig.update_xaxes(range=[rho - half, rho + half], tickvals=[rho], ticktext=[f"{rho:g}"])
    fig.update_yaxes(title_text="points (paired, 95% interval)", row=1, col=1)
    fig.update_yaxes(title_text="adaptive λ_max", row=1, col=2)
    _layout(fig, "ρ, the methods' own knob", "ρ", "points (paired, 95% interval)")
    return with_error_bars(on_training_data(fig, "adaptive sharpness: "), RHO_ERROR_BARS)


def slices_overlay(slices: Mapping[str, tuple[str, Slice]], *, title: str = "1D loss slices") -> go.Figure:
    """1D loss slices of several runs along the same seeded direction; label → (method, slice)."""
    fig = go.Figure()
    for label, (method, s) in slices.items():
        style = _style(method)
        fig.add_trace(
            go.Scatter(
                x=s.axis,
                y=s.loss,
                name=label,
                mode="lines",
                line_color=style["line_color"],
                line_dash=style["line_dash"],
            )
        )
    _layout(fig, title, "α along a filter-normalised direction", "training loss")
    return on_training_data(fig)


def _shade(hex_color: str, level: int, levels: int) -> str:
    """The method's colour, lighter for lower levels (smaller ε first), so a method's cells stay one hue."""
    mix = 0.0 if levels <= 1 else 0.6 * (levels - 1 - level) / (levels - 1)
    rgb = [int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * mix):02x}" for c in rgb)


def _per_epoch(
    records: Sequence[RunRecord], value: Callable[[EpochMetrics], Optional[float]], title: str, y_title: str
) -> go.Figure:
    """One line per cell (method, privacy level, ρ): the mean over its seeds at each epoch, the spread in
    the hover; a method keeps its hue, dash and marker, darker at larger ε. Runs without the value (ε of a
    non-private run) are left out."""
    cells: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.epochs and value(r.epochs[0]) is not None:
            config = r.config
            level = (config.epsilon is None, config.epsilon or 0.0, config.noise_multiplier or 0.0)
            cells.setdefault((list(METHODS).index(r.method), level, config.rho, r.method), []).append(r)
    fig = go.Figure()
    for key in sorted(cells):
        runs, method = cells[key], key[-1]
        levels = sorted({k[1] for k in cells if k[-1] == method})
        epochs = min(len(r.epochs) for r in runs)
        points = [[value(r.epochs[i]) for r in runs] for i in range(epochs)]
        rhos = [k[2] for k in cells if k[-1] == method]
        name = run_label(runs[0]) if len(runs) == 1 else f"{run_label(runs[0]).rsplit(' s', 1)[0]} ({len(runs)} seeds)"
        if any(math.isinf(v) for p in points for v in p):  # ε of a run without noise: plotly would drop it silently
            name += " (∞, off the axis)"
        style = _style(method, _rho_variant(method, key[2], rhos))
        style["line_color"] = _shade(style["line_color"], levels.index(key[1]), len(levels))
        fig.add_trace(
            go.Scatter(
                x=[e.epoch for e in runs[0].epochs[:epochs]],
                y=[sum(p) / len(p) for p in points],
                customdata=[[min(p), max(p)] for p in points],
                hovertemplate="epoch %{x}: %{y:.3g} (seeds %{customdata[0]:.3g}–%{customdata[1]:.3g})",
                name=name,
                legendgroup=method,
                mode="lines+markers",
                **style,
            )
        )
    return _layout(fig, title, "epoch", y_title)


def training_curves(records: Sequence[RunRecord]) -> go.Figure:
    return _per_epoch(
        records, lambda e: 100 * e.test_accuracy, "Training curves (mean over seeds)", "test accuracy (%)"
    )


def epsilon_over_epochs(records: Sequence[RunRecord]) -> go.Figure:
    return _per_epoch(records, lambda e: e.epsilon_spent, "Privacy spent during training", "ε spent")


def cost_per_epoch(stats: Sequence[CellStats]) -> go.Figure:
    """Wall time per training epoch, per method and privacy level: what the runs took, not a cost ratio
    (runs may have overlapped on a busy machine)."""
    fig = go.Figure()
    for key in dict.fromkeys((c.method, c.rho) for c in stats):
        cells = [c for c in stats if (c.method, c.rho) == key]
        rhos = sorted({c.rho for c in stats if c.method == key[0]})
        fig.add_trace(
            go.Bar(
                x=[c.privacy for c in cells],
                y=[c.wall_seconds_per_epoch for c in cells],
                name=cells[0].name if len(rhos) > 1 else cells[0].label,
                marker_color=_shade(_color(key[0]), rhos.index(key[1]), len(rhos)),
            )
        )
    _layout(
        fig,
        "Wall time per epoch (not a cost ratio: runs may overlap)",
        "privacy level",
        "wall seconds per epoch",
        barmode="group",
    )
    fig.update_layout(title_subtitle_text=BATCH_TIMING[0].upper() + BATCH_TIMING[1:], margin_t=95)
    return fig


# What the per-run spectrum figure's numbers carry (one run per colour: no spread across seeds); short, as the
# figure sits in a half-width column
TOP_EIGENVALUES_SPREAD = "legend: each run's trace ± its Hutchinson standard error"


def top_eigenvalues(spectra: Mapping[str, tuple[str, HessianSpectrum]]) -> go.Figure:
    """The top eigenvalues of each run's Hessian, with the run's trace ± its Hutchinson standard error named in
    the legend (the one estimate here with a sampling error)."""
    fig = go.Figure()
    for label, (method, s) in spectra.items():
        fig.add_trace(
            go.Bar(
                x=[f"λ{i + 1}" for i in range(len(s.top))],
                y=s.top,
                name=f"{label}: trace {s.trace:.3g} ± {s.trace_stderr:.2g}",
                marker_color=_color(method),
            )
        )
    _layout(fig, "Top Hessian eigenvalues", "rank", "eigenvalue", barmode="group")
    return with_error_bars(on_training_data(fig), TOP_EIGENVALUES_SPREAD)


def eigenvalue_density(spectra: Mapping[str, tuple[str, HessianSpectrum]]) -> go.Figure:
    fig = go.Figure()
    for label, (method, s) in spectra.items():
        if s.density:
            fig.add_trace(
                go.Scatter(x=s.density_grid, y=s.density, name=label, mode="lines", line_color=_color(method))
            )
    fig.update_yaxes(type="log", exponentformat="power", dtick=2)  # 10⁻⁶, 10⁻⁴ …, not mixed SI prefixes
    _layout(fig, "Hessian eigenvalue density (SLQ)", "eigenvalue", "density (log scale)")
    return on_training_data(fig)


def noise_robustness(curves: Mapping[str, tuple[str, NoiseRobustness]]) -> go.Figure:
    fig = go.Figure()
    for label, (method, n) in curves.items():
        fig.add_trace(
            go.Scatter(
                x=n.scales,
                y=n.mean_increase,
                name=label,
                mode="lines+markers",
                line_color=_color(method),
                error_y=dict(type="data", array=n.std_increase),
            )
        )
    _layout(
        fig, "Noise robustness: loss increase under weight noise", "relative noise size s", "training loss increase"
    )
    return on_training_data(fig)


def surfaces_side_by_side(surfaces: Mapping[str, Surface], *, per_row: int = 3) -> go.Figure:
    """2D loss contours of several runs on one colour scale, each panel square (d₁ and d₂ share a scale)."""
    values = [v for s in surfaces.values() for row in s.loss for v in row if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    cols = max(1, min(per_row, len(surfaces)))
    rows = max(1, -(-len(surfaces) // cols))
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=list(surfaces) or [""], horizontal_spacing=0.08, vertical_spacing=0.12
    )
    for i, (label, s) in enumerate(surfaces.items()):
        fig.add_trace(
            go.Contour(
                x=s.axis,
                y=s.axis,
                z=s.loss,
                coloraxis="coloraxis",
                name=label,
                contours_coloring="heatmap",
                line_width=0.5,
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    for i in range(1, rows * cols + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", scaleratio=1, constrain="domain", title="d₂")
        fig.layout[f"xaxis{suffix}"].update(constrain="domain", title="d₁")
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=low, cmax=high, colorbar_title="loss"))
    _layout(fig, "Loss surfaces along the same random directions", "d₁", "d₂")
    return on_training_data(fig.update_layout(height=120 + 360 * rows, showlegend=False))


def surface_3d(label: str, surface: Surface) -> go.Figure:
    fig = go.Figure(go.Surface(x=surface.axis, y=surface.axis, z=surface.loss, colorscale="Viridis"))
    fig.update_layout(scene=dict(xaxis_title="d₁", yaxis_title="d₂", zaxis_title="training loss"))
    _layout(fig, f"Loss surface: {label}", "", "")
    return on_training_data(fig)


def line_between_runs(line: Slice, label_a: str, label_b: str) -> go.Figure:
    fig = go.Figure(go.Scatter(x=line.axis, y=line.loss, mode="lines+markers", name="training loss"))
    for t, label in ((0.0, label_a), (1.0, label_b)):
        fig.add_vline(x=t, line_dash="dot", annotation_text=label)
    _layout(fig, f"Loss on the straight line from {label_a} to {label_b}", "t", "training loss")
    return on_training_data(fig)


__all__ = [
    "accuracy_vs_epsilon",
    "adaptive_vs_epsilon",
    "cost_per_epoch",
    "eigenvalue_density",
    "epsilon_over_epochs",
    "hessian_vs_epsilon",
    "line_between_runs",
    "noise_robustness",
    "on_training_data",
    "run_label",
    "slices_overlay",
    "surface_3d",
    "surfaces_side_by_side",
    "top_eigenvalues",
    "training_curves",
]
