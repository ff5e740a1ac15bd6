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
from .analysis import cached_analyses
from .compare import (
    CellStats,
    Comparison,
    comparisons_at,
    describe_setting,
    group_runs,
    private_epsilons,
    runs_by_setting,
)
from .errors import StoreError
from .export import ExportError, figure_image, find_chromium
from .methods import METHODS, compared_methods, method_info
from .results import RunRecord
from .store import RunStore

STYLE = """
body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.3em .8em;text-align:center}
.caveat{background:#fff4e5;padding:.8em;border-left:4px solid #f0a000}
.figure svg{max-width:100%;height:auto}h2{page-break-before:auto}
"""


def question() -> str:
    """The report's question, naming the compared methods and their baselines from the registry."""
    pairs: dict[str, list[str]] = {}
    for m in compared_methods(private=True):
        pairs.setdefault(METHODS[m.baseline].label, []).append(m.label)
    against = "; ".join(f"{', '.join(labels)} against {base}" for base, labels in pairs.items())
    return (
        f"Does training towards flat minima ({against}) give better accuracy at the same privacy budget ε, "
        "and what does it cost?"
    )


@dataclass(frozen=True, kw_only=True)
class HeadlineRow:
    """One target ε: each private method's accuracy, and each method's comparison with its baseline."""

    target_epsilon: float
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
    created: str


def _pick_setting(records: list[RunRecord], dataset: Optional[str]) -> list[RunRecord]:
    done = [r for r in records if r.status == "done" and (dataset is None or r.config.dataset == dataset)]
    if not done:
        where = f" for data set {dataset!r}" if dataset else ""
        raise StoreError(f"no finished runs{where} in the store: train some first (dpsat sweep …)")
    return runs_by_setting(done)[0]


def cost_phrase(comparison: Comparison) -> str:
    """'DP-SAT: +1.2 points over DP-SGD at 1.0× cost and the same ε'."""
    info, base = method_info(comparison.method), method_info(comparison.baseline)
    gain, ratio = comparison.accuracy_gain_points, comparison.time_ratio
    phrase = f"{info.label}: {gain:+.1f} points over {base.label} at {ratio:.1f}× cost and the same ε"
    if info.releases_per_step > base.releases_per_step:
        phrase += f" (paid with more noise: σ covers {info.releases_per_step} releases per step)"
    return phrase


def build_report(store: RunStore, *, dataset: Optional[str] = None) -> Report:
    """Numbers for the report from the setting with the most finished runs (of `dataset`, if given)."""
    runs = _pick_setting(store.list_runs(), dataset)
    stats = group_runs(runs, cached_analyses(store, [r.run_id for r in runs], "hessian"))
    headline = []
    for eps in private_epsilons(stats):
        cells = tuple(c for c in stats if c.target_epsilon == eps)
        headline.append(HeadlineRow(target_epsilon=eps, cells=cells, comparisons=tuple(comparisons_at(stats, eps))))
    comparisons = [c for row in headline for c in row.comparisons]
    if not comparisons:
        caveat = "No ε has both a method and its baseline, so there is no comparison yet."
    elif any(c.within_seed_spread is None for c in comparisons):
        caveat = (
            "Some comparisons rest on a single seed: the seed-to-seed spread is unknown, so differences "
            "of a point or two may be noise. Train more seeds before deciding."
        )
    elif any(c.within_seed_spread for c in comparisons):
        caveat = (
            "Some differences are within the seed-to-seed spread (|difference| ≤ the combined standard "
            "deviation): at those budgets the methods cannot be told apart with these runs."
        )
    else:
        caveat = "Every difference shown is larger than the seed-to-seed spread."
    first = runs[0]
    return Report(
        dataset=first.config.dataset,
        setting=describe_setting(first),
        runs=len(runs),
        seeds=len({r.config.seed for r in runs}),
        delta=next((r.summary.delta for r in runs if r.config.private), None),
        accountant=first.config.accountant.upper(),
        stats=tuple(stats),
        headline=tuple(headline),
        caveat=caveat,
        created=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )


def report_figures(report: Report) -> dict[str, go.Figure]:
    out = {"Accuracy vs ε": figures.accuracy_vs_epsilon(report.stats)}
    if any(c.lambda_max_mean is not None for c in report.stats):
        out["Sharpness vs ε"] = figures.hessian_vs_epsilon(report.stats)
    out["Cost"] = figures.cost_per_epoch(report.stats)
    return out


def _pct(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")


def render_html(report: Report, *, static_images: bool) -> str:
    e = html.escape
    rows = []
    for row in report.headline:
        cells = " ".join(
            f"<td>{_pct(c.accuracy_mean, c.accuracy_std)}<br><small>ε spent {c.epsilon_spent_mean:.2f}</small></td>"
            if c.epsilon_spent_mean is not None
            else f"<td>{_pct(c.accuracy_mean, c.accuracy_std)}</td>"
            for c in row.cells
        )
        heads = " ".join(f"<th>{e(c.label)}</th>" for c in row.cells)
        verdict = (
            "<br>".join(
                e(cost_phrase(c)) + (" <em>(within the seed spread)</em>" if c.within_seed_spread else "")
                for c in row.comparisons
            )
            or "–"
        )
        rows.append(
            f"<h3>ε = {row.target_epsilon:g}</h3><table><tr>{heads}</tr><tr>{cells}</tr></table><p>{verdict}</p>"
        )
    reference = [c for c in report.stats if c.target_epsilon is None]
    ceiling = "".join(f"<li>{e(c.label)}: {_pct(c.accuracy_mean, c.accuracy_std)} (no privacy)</li>" for c in reference)
    parts = []
    for title, fig in report_figures(report).items():
        body = (
            figure_image(fig, "svg").decode()
            if static_images
            else fig.to_html(full_html=False, include_plotlyjs="inline")
        )
        parts.append(f"<h2>{e(title)}</h2><div class='figure'>{body}</div>")
    methods = "".join(
        f"<tr><td>{e(method_info(m).label)}</td><td>{e(method_info(m).extra_epsilon)}</td>"
        f"<td>{method_info(m).backward_passes_per_step}</td></tr>"
        for m in METHODS
        if method_info(m).private
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Pilot report: {e(report.dataset)}</title>
<style>{STYLE}</style></head><body>
<h1>Pilot report: private training on {e(report.dataset)}</h1>
<p><small>Generated {e(report.created)} by dpsat-lab from {report.runs} stored runs;
every number below is read from the run store.</small></p>
<h2>The question</h2><p>{e(question())}</p>
<h2>Data and settings</h2><p>{e(report.setting)}; δ = {report.delta if report.delta is not None else "–"};
accountant {e(report.accountant)};
{report.seeds} seed(s) per cell.</p>
<table><tr><th>method</th><th>extra privacy cost</th><th>backward passes per step</th></tr>{methods}</table>
<h2>Headline</h2>{"".join(rows) or "<p>No private runs.</p>"}
{f"<p>Non-private reference:</p><ul>{ceiling}</ul>" if ceiling else ""}
<p class="caveat"><strong>Caveat.</strong> {e(report.caveat)}</p>
{"".join(parts)}
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
