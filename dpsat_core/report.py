"""The pilot report: one HTML page (and its PDF) for managers, every number read from the store.

`build_report` gathers the numbers (pure, testable); `write_report` renders them.
Figures are embedded as SVG when Chromium is present (and the PDF is printed by
it); without Chromium the HTML embeds interactive plotly figures and says that
no PDF was made.
"""

from __future__ import annotations

import datetime as dt
import html
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import plotly.graph_objects as go

from . import figures
from .analysis import analysed_cells
from .caveats import EVALUATION_ROWS, PER_RUN, SEEDED_NOISE, TRAINING_DATA
from .compare import (
    INTERVAL_COVERS,
    RATIO_INTERVAL,
    CellStats,
    Comparison,
    comparisons,
    conclusion,
    describe_setting,
    headline_comparisons,
    interval_note,
    interval_scope,
    one_class_note,
    pick_setting,
    rho_text,
    verdict,
)
from .export import ExportError, figure_image, find_chromium
from .methods import METHODS, compared_methods, method_info
from .probe import step_cost
from .results import DEFAULT_SAMPLES, AuditResult, RunRecord, counted, format_number
from .store import RunStore

STYLE = """
body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.3em .8em;text-align:center}
.caveat{background:#fff4e5;padding:.8em;border-left:4px solid #f0a000}
.bottom-line{font-size:1.05em}.bottom-line td:last-child{text-align:left}
.figure svg{max-width:100%;height:auto}
h2,h3{break-after:avoid;page-break-after:avoid}
section,table,.figure{break-inside:avoid;page-break-inside:avoid}
.first-page{break-after:page;page-break-after:always}
"""
# One sentence per sharpness measure, for readers who have not met them (`RATIO_INTERVAL`, which follows it, says
# that they are computed on training data, not covered by ε).
MEASURES = (
    f"λ_max is the largest curvature of the loss on a fixed {DEFAULT_SAMPLES:,}-row training subset at the trained "
    "weights (lower means flatter); the trace is the sum of all curvatures. Adaptive sharpness is λ_max measured "
    "in units of each weight's own size (Kwon et al. 2021), so rescaling a layer that a normalisation undoes does "
    "not change it: it is the fairer flatness comparison."
)


def question(present: Optional[set[str]] = None) -> str:
    """The report's question, naming the compared methods (those `present`, default all) and their baselines."""
    pairs: dict[str, list[str]] = {}
    for m in compared_methods(private=True):
        if present is None or m.name in present:
            pairs.setdefault(METHODS[m.baseline].label, []).append(m.label)
    against = "; ".join(f"{', '.join(labels)} against {base}" for base, labels in pairs.items())
    return (
        f"Does training towards flat minima ({against}) give better accuracy at the same privacy budget ε, "
        "and what does it cost?"
    )


@dataclass(frozen=True, kw_only=True)
class HeadlineRow:
    """One privacy level (a target ε, or a σ): each private cell's accuracy, and each paired comparison."""

    privacy: str
    cells: tuple[CellStats, ...]
    comparisons: tuple[Comparison, ...]


@dataclass(frozen=True, kw_only=True)
class Report:
    dataset: str
    setting: str
    runs: int
    seeds: int
    delta: Optional[float]
    accountant: str
    stats: tuple[CellStats, ...]
    headline: tuple[HeadlineRow, ...]
    caveat: str
    uncovered: str  # what ε does not cover, said once
    release: bool  # release mode: noise and batches independent across runs (a setting has one mode)
    created: str
    audits: tuple[AuditResult, ...] = ()  # empirical privacy audits on the report's data set
    privacy_notes: tuple[str, ...] = ()  # what the private runs' ε covers (`RunRecord.privacy_note`), each once
    one_class: str = ""  # runs whose model predicts a single class (`compare.one_class_note`), or ""


def build_report(store: RunStore, *, dataset: Optional[str] = None, setting: Optional[str] = None) -> Report:
    """Numbers for the report from one setting (see `compare.pick_setting`)."""
    runs = pick_setting(store.list_runs(), dataset=dataset, setting=setting)
    stats = analysed_cells(store, runs)
    cost = step_cost(store, runs[0].config, [c.method for c in stats if c.private], cached_only=True)
    compared = comparisons(stats, cost=cost)
    headline = [
        HeadlineRow(
            privacy=level,
            cells=tuple(c for c in stats if c.private and c.privacy == level),
            comparisons=tuple(c for c in headline_comparisons(compared) if c.privacy == level),
        )
        for level in dict.fromkeys(c.privacy for c in stats if c.private)
    ]
    return Report(
        dataset=runs[0].config.dataset,
        setting=describe_setting(runs[0]),
        runs=len(runs),
        seeds=len({r.config.seed for r in runs}),
        delta=next((r.summary.delta for r in runs if r.config.private), None),
        accountant=runs[0].config.accountant.upper(),
        stats=tuple(stats),
        headline=tuple(headline),
        caveat=caveat(headline_comparisons(compared)),
        uncovered=uncovered(runs),
        release=any(r.config.randomness == "release" for r in runs),
        created=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        audits=tuple(a for a in store.audits() if a.dataset == runs[0].config.dataset),
        privacy_notes=tuple(dict.fromkeys(r.privacy_note for r in runs if r.config.private)),
        one_class=one_class_note(runs),
    )


def caveat(compared: list[Comparison]) -> str:
    """What the paired intervals of the stated comparisons allow one to conclude, in one or two sentences."""
    if not compared:
        return "No privacy level has both a method and its baseline, so there is no comparison yet."
    if any(c.accuracy.detectable is None for c in compared):
        reading = (
            "Some comparisons rest on a single seed pair: there is no interval, so differences of a point or "
            "two may be noise. Train more seeds before deciding."
        )
    elif not any(c.accuracy.detectable for c in compared):
        reading = (
            "Every 95% interval of the paired accuracy difference contains zero: with these runs the methods "
            "cannot be told apart at any budget shown."
        )
    else:
        reading = (
            "Differences called measurable have 95% intervals that exclude zero; the others cannot be told apart "
            "with these runs."
        )
    if any(c.chosen_by_validation for c in compared):
        reading += (
            " Where ρ was picked among several by validation accuracy, its test interval comes after that choice "
            "and is not adjusted for it: confirm the pick on new seeds."
        )
    return f"{reading} {interval_scope(compared, ratios=False)}".strip()  # the ratios: said once, by MEASURES


def uncovered(runs: list[RunRecord]) -> str:
    """What the runs' ε does not cover, in plain words, for the report's caveats (said once there)."""
    text = (
        f"Sharpness (λ_max, the trace, adaptive sharpness) and the wall time per epoch, which tracks the random "
        f"batch sizes, are {TRAINING_DATA}: they describe the training rows without noise, and the privacy "
        "guarantee says nothing about them."
    )
    if any(r.config.private for r in runs):
        text += f" {PER_RUN}. Likewise {EVALUATION_ROWS}."
    if any(r.config.private and r.config.randomness == "research" for r in runs):
        text += (
            f" The private runs use {SEEDED_NOISE}: anyone with a run's stored seed can regenerate its noise and "
            "batches, so retrain in release mode (dpsat train --secure) before releasing a model."
        )
    return text


def report_figures(report: Report) -> dict[str, go.Figure]:
    """The report's figures, each saying what its error bars are; the caveats say once what ε does not cover,
    so no figure repeats it."""
    out = {"Accuracy vs ε": (figures.accuracy_vs_epsilon(report.stats), figures.ERROR_BARS)}
    if any(c.adaptive_mean is not None for c in report.stats):
        out["Adaptive sharpness vs ε"] = (figures.adaptive_vs_epsilon(report.stats), figures.ERROR_BARS)
    if any(c.lambda_max_mean is not None for c in report.stats):
        out["Sharpness vs ε"] = (figures.hessian_vs_epsilon(report.stats), figures.TRACE_ERROR_BARS)
    out["Wall time of the runs"] = (figures.cost_per_epoch(report.stats), None)
    return {title: fig.update_layout(title_subtitle_text=bars) for title, (fig, bars) in out.items()}


def bottom_line_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    """Per compared method and budget, the manager's numbers in plain words: (what, accuracy, compute,
    privacy, conclusion). No clipping norms, accountants or noise multipliers."""
    rows = []
    for row in report.headline:
        for c in row.comparisons:
            info, base = method_info(c.method), method_info(c.baseline)
            low, high = c.ci_points
            accuracy = f"{c.gain_points:+.1f} points" + (
                f" (95% interval {low:+.1f} to {high:+.1f}{interval_note(c)})"
                if low is not None
                else " (one seed pair: no interval)"
            )
            compute = f"{c.backward_passes_ratio:g}× (counted)"
            if c.cost is not None:
                has_interval = c.cost.ratio_ci_low is not None  # probes stored before the interval was kept: none
                compute = f"{c.cost.ratio:.2f}× (measured" + (
                    f"; 95% interval {c.cost.ratio_ci_low:.2f} to {c.cost.ratio_ci_high:.2f} over the probe's rounds)"
                    if has_interval
                    else ")"
                )
            privacy = "same budget" + (", more noise per step" if c.releases_ratio > 1 else "")
            what = f"{info.label}{rho_text(c)} vs {base.label}, {c.privacy}"
            rows.append((what, accuracy, compute, privacy, conclusion(c)))
    return rows


# What a table cell's accuracy means, said once under the tables
ACCURACY_CELLS = "Accuracy: test accuracy, mean over seeds ± its standard deviation across seeds (no ± with one seed)."


def _pct(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")


# What an audit's lower bound means beside the accountant's ε, said once in the report.
AUDIT_MEANING = (
    "An audit trains one run with canaries, each included with probability 1/2, guesses which were included and "
    "turns the correct guesses into a lower bound on ε at 95% confidence (Steinke, Nasr & Jagielski 2023). The "
    "accountant's ε is an upper bound for every data set and attacker; the true ε of the mechanism lies between "
    "the two. A gap is what the attack could not demonstrate, not a leak; a lower bound above the accountant's ε "
    "would mean the mechanism is broken. Audit runs trained on canaries and are left out of every comparison above."
)


def audit_section(audits: tuple[AuditResult, ...]) -> str:
    """The report's audit section (empty without audits): one row per audit, the bound beside the accountant's ε."""
    if not audits:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(method_info(a.method).label)}</td><td>{e(a.mode)}</td><td>{a.canaries:,}</td>"
        f"<td>{format_number(a.epsilon_spent, '.2f')}</td><td>{a.epsilon_lower_bound:.2f}</td>"
        f"<td>{a.correct} of {a.guesses}</td><td>{a.auc:.3f} ± {a.auc_stderr:.3f}</td><td>{e(a.run_id)}</td></tr>"
        for a in audits
    )
    return (
        "<section><h2>Empirical privacy audits</h2><table><tr><th>method</th><th>mode</th><th>canaries</th>"
        "<th>accountant's ε (upper bound)</th><th>audit's ε lower bound (95%)</th><th>guesses right</th>"
        f"<th>membership AUC ± s.e.</th><th>run</th></tr>{rows}</table><p>{e(AUDIT_MEANING)}</p></section>"
    )


def render_html(report: Report, *, static_images: bool) -> str:
    e = html.escape
    rows = []
    for row in report.headline:
        cells = " ".join(
            f"<td>{_pct(c.accuracy_mean, c.accuracy_std)}<br>"
            f"<small>ε spent {format_number(c.epsilon_spent_mean, '.2f')}</small></td>"
            if c.epsilon_spent_mean is not None
            else f"<td>{_pct(c.accuracy_mean, c.accuracy_std)}</td>"
            for c in row.cells
        )
        heads = " ".join(f"<th>{e(c.name)}</th>" for c in row.cells)
        verdicts = "<br>".join(e(verdict(c)) for c in row.comparisons) or "–"
        rows.append(
            f"<section><h3>{e(row.privacy)}</h3><table><tr>{heads}</tr><tr>{cells}</tr></table>"
            f"<p>{verdicts}</p></section>"
        )
    reference = [c for c in report.stats if not c.private]
    ceiling = "".join(f"<li>{e(c.label)}: {_pct(c.accuracy_mean, c.accuracy_std)} (no privacy)</li>" for c in reference)
    parts = []
    for title, fig in report_figures(report).items():
        body = (
            figure_image(fig, "svg").decode()
            if static_images
            else fig.to_html(full_html=False, include_plotlyjs="inline")
        )
        parts.append(f"<section><h2>{e(title)}</h2><div class='figure'>{body}</div></section>")
    bottom = (
        "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in bottom_line_rows(report))
        or "<tr><td colspan='5'>no comparison yet</td></tr>"
    )
    present = {c.method for c in report.stats}
    pairing = (
        "release mode: noise and batches are independent across runs, so a pair shares only its initial weights"
        if report.release
        else "both methods see the same data and noise at a seed"
    )
    methods = "".join(
        f"<tr><td>{e(method_info(m).label)}</td><td>{e(method_info(m).extra_epsilon)}</td>"
        f"<td>{method_info(m).backward_passes_per_step}</td></tr>"
        for m in METHODS
        if m in present and method_info(m).private
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Pilot report: {e(report.dataset)}</title>
<style>{STYLE}</style></head><body>
<div class="first-page">
<h1>Pilot report: private training on {e(report.dataset)}</h1>
<p><small>Generated {e(report.created)} by dpsat-lab from {report.runs} stored runs;
every number below is read from the run store.</small></p>
<h2>Bottom line</h2>
<p class="bottom-line"><strong>{e(report.caveat)}</strong></p>
<table class="bottom-line"><tr><th>comparison</th><th>accuracy gain</th><th>compute per step</th>
<th>privacy cost</th><th>conclusion</th></tr>{bottom}</table>
<p><small>Accuracy gain: the mean of the per-seed differences ({pairing}), with its 95% interval
({e(INTERVAL_COVERS)}).
Compute: measured side by side on this setting, or counted from the algorithm when not measured.
Privacy cost: every method is held to the same budget ε.</small></p>
<h2>The question</h2><p>{e(question(present))}</p>
</div>
<h2>Data and settings</h2><p>{e(report.setting)}; δ = {report.delta if report.delta is not None else "–"};
{counted(report.seeds, "seed")} per cell.</p>
{"".join(f"<p><small>{e(note)}</small></p>" for note in report.privacy_notes)}
<table><tr><th>method</th><th>extra privacy cost</th><th>backward passes per step</th></tr>{methods}</table>
<h2>The evidence, per privacy budget</h2>{"".join(rows) or "<p>No private runs.</p>"}
<p><small>{e(ACCURACY_CELLS)}</small></p>
{f"<p>Non-private reference:</p><ul>{ceiling}</ul>" if ceiling else ""}
<p class="caveat"><strong>Caveat.</strong> {e(report.caveat)}</p>
{f'<p class="caveat"><strong>Constant classifiers.</strong> {e(report.one_class)}</p>' if report.one_class else ""}
<p class="caveat"><strong>What ε does not cover.</strong> {e(report.uncovered)}</p>
<p>{e(MEASURES)} {e(RATIO_INTERVAL)}.</p>
{"".join(parts)}
{audit_section(report.audits)}
</body></html>"""


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    pdf: Optional[Path]
    note: str = ""


def write_report(report: Report, out_dir: str | Path) -> ReportFiles:
    """Write report.html (and report.pdf when Chromium is available) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chromium = find_chromium()
    html_path = out / "report.html"
    try:
        html_path.write_text(render_html(report, static_images=chromium is not None))
    except ExportError:  # Chromium found but unusable: keep the interactive HTML
        chromium = None
        html_path.write_text(render_html(report, static_images=False))
    if chromium is None:
        return ReportFiles(html_path, None, "no PDF: install Chromium (apt-get install chromium) or set BROWSER_PATH")
    pdf_path = out / "report.pdf"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf_path}",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 or not pdf_path.exists():
        return ReportFiles(html_path, None, f"no PDF: Chromium failed ({result.stderr.strip()[-200:]})")
    return ReportFiles(html_path, pdf_path)
