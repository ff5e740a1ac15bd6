"""Every page renders on an empty store and on one with runs; jobs started from pages end in stored results."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.proto.Block_pb2 import Block
from streamlit.testing.v1 import AppTest

from dashboard.state import get_jobs
from dashboard.widgets import BLANK, JOB_PANEL_REFRESH
from dpsat_core import RunStore, SweepSpec, TrainConfig, sweep
from dpsat_core.caveats import PER_RUN
from dpsat_core.compare import RATIO_INTERVAL
from tests.factories import store_default_analyses

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
SHARPNESS = "adaptive sharpness × (95% CI)"  # the comparison table's ratio column
PAGES = ["overview", "data", "train", "privacy_utility", "sharpness", "landscape", "runs", "audit"]


# under `pytest -n`: the tests that read `populated` run on one worker, so it is built once
ON_POPULATED = pytest.mark.xdist_group("populated")


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Path:
    """Digits: SGD, DP-SGD and DP-SAT at ε=3, two seeds, one epoch; DP-SGD and DP-SAT seed 0 with every analysis
    stored (hand-made: computing them took minutes; the real ones are checked where they are computed)."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    store = RunStore(path)
    spec = SweepSpec(
        base=TrainConfig(dataset="digits", epochs=1), methods=("sgd", "dpsgd", "dpsat"), epsilons=(3.0,), seeds=(0, 1)
    )
    sweep(spec, store)
    for run in store.list_runs():
        if run.config.private and run.config.seed == 0:
            store_default_analyses(store, run.run_id, lam=2.0 if run.method == "dpsgd" else 1.5)
    return path


@pytest.fixture(autouse=True)
def fresh_server_state():
    st.cache_resource.clear()
    yield
    for job in get_jobs().jobs():
        get_jobs().cancel(job.job_id)
        get_jobs().wait(job.job_id, timeout=120)
    st.cache_resource.clear()


def open_page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    if name != "overview":
        at.switch_page(f"../pages/{name}.py").run()
    return at


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_on_an_empty_store(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "empty.db"))
    monkeypatch.chdir(tmp_path)  # the app must not depend on the working directory
    at = open_page(name)
    assert not at.exception, at.exception
    assert at.title, "every page has a title"
    assert str(tmp_path / "empty.db") in at.sidebar.caption[0].value  # the store in use is shown


@ON_POPULATED
@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_with_runs(name, populated, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(populated))
    at = open_page(name)
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    if name in ("overview", "privacy_utility", "sharpness", "landscape"):
        assert len(charts) >= 2, f"{name} should draw its figures"
    if name == "landscape":  # SGD's run has no slice or surface yet: the time they take is said before the click
        assert any(c.value.startswith("Estimated time: about 1 s.") for c in at.caption)


@ON_POPULATED
def test_overview_shows_the_verdict(populated, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(populated))
    at = open_page("overview")
    verdicts = [m.value for m in at.markdown if "vs DP-SGD" in m.value]
    assert verdicts and verdicts[0].startswith("- At ε=3, DP-SAT (ρ=0.05) vs DP-SGD:")
    assert "95% CI" in verdicts[0] and "2 seed pairs" in verdicts[0] and "same ε" in verdicts[0]
    # only seed 0's runs are analysed: one of the two seed pairs, so the ratios say so and have no interval
    one = r" ×\d\.\d{2,3} \(1 of 2 seed pairs analysed, no interval\)"
    assert re.search("adaptive sharpness" + one, verdicts[0]) and re.search("λ_max" + one, verdicts[0]), verdicts[0]
    # one budget trained: no slider with a single stop, a line saying which ε is shown
    assert not at.select_slider and any("the only budget trained so far" in c.value for c in at.caption)
    # under the verdicts: what the intervals cover (the runs stored which test examples they got right: the
    # test-set term is counted, not a floor) and that ε is per run
    (scope,) = [c.value for c in at.caption if "accuracy intervals" in c.value]
    assert scope.startswith("The accuracy intervals (95%, paired by seed) cover seed-to-seed variation plus")
    assert "sampling error, counted from the test examples each pair of models disagrees on" in scope
    assert "at least" not in scope and "floor" not in scope and "only" not in scope
    assert f"{RATIO_INTERVAL}. {PER_RUN}" in scope  # ratios are shown: what their intervals cover, training data


@ON_POPULATED
def test_sharpness_shows_adaptive_sharpness_beside_lambda_max(populated, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(populated))
    at = open_page("sharpness")
    assert not at.exception, at.exception
    assert any("Kwon et al. 2021" in c.value for c in at.caption)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Adaptive sharpness vs privacy budget") for t in titles), titles
    # says which analyses are missing for how many runs (seed 0's private runs have all three, 4 of 6 lack them)
    (missing,) = [c.value for c in at.caption if c.value.startswith("Not computed yet")]
    assert "Hessian spectrum for 4 of 6 runs" in missing and "Noise robustness for 4 of 6 runs" in missing
    # and, before the click, how long that takes: 4 runs × 3 kinds at the 0.1 s each stored analysis took
    (estimate,) = [c.value for c in at.caption if c.value.startswith("Estimated time")]
    assert estimate.startswith("Estimated time: about 1 s.") and "6 earlier analyses" in estimate


def test_overview_offers_the_default_comparison_on_an_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "empty.db"))
    at = open_page("overview")
    # a wrapping table: its "what it does" sentences are never cut off at the column's edge
    methods = at.table[0].value
    assert "DP-SAT" in methods["method"].tolist() and "what it does" in methods.columns
    assert set(methods["private"]) == {"yes", "no"}  # words, not Python's True/False
    at.button(key="overview-default").click().run()
    jobs = get_jobs().jobs()
    assert len(jobs) == 1 and "DP-SGD, DP-SAM, DP-SAT" in jobs[0].label
    # the click is answered where the user is looking, not only in the job panel at the bottom
    assert "Started: " in at.toast[0].value and "bottom of the page" in at.toast[0].value
    get_jobs().cancel(jobs[0].job_id)
    assert get_jobs().wait(jobs[0].job_id, timeout=120).status == "cancelled"


@pytest.mark.slow
def test_after_the_one_click_comparison_all_three_overview_panels_are_filled(tmp_path, monkeypatch):
    import dashboard.actions as actions

    small = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64),
        methods=("sgd", "dpsgd", "dpsat"),
        epsilons=(3.0,),
        seeds=(0,),
    )
    monkeypatch.setattr(actions, "default_comparison", lambda dataset="digits": small)  # the real one takes minutes
    # trained in the job's own process: no worker pool (the Train-page job test covers a page's pool sweep)
    monkeypatch.setattr(actions, "default_workers", lambda: 1)
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("overview")
    at.button(key="overview-default").click().run()
    (job,) = get_jobs().jobs()
    assert get_jobs().wait(job.job_id, timeout=600).status == "done"
    at.run()
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert not at.exception and len(keys) == 3, keys  # accuracy, adaptive sharpness, slices: no further click
    # nor for the step cost: the job measured it too
    assert not [b for b in at.button if b.key in ("overview-adaptive-go", "overview-slices-go", "overview-probe")]


@pytest.mark.slow
def test_a_small_job_from_the_train_page_ends_in_stored_results(tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    monkeypatch.setenv("DPSAT_STORE", str(db))
    at = open_page("train")
    at.checkbox(key="train-method-dpsam").uncheck()
    at.text_input(key="train-epsilons").input("3")
    at.text_input(key="train-seeds").input("0")
    at.number_input(key="train-epochs").set_value(1)
    at.button(key="train-start").click().run()
    assert not at.exception and "Started 2 runs" in at.success[0].value
    job = get_jobs().jobs()[0]
    view = get_jobs().wait(job.job_id, timeout=300)
    assert view.status == "done"
    assert view.metrics == {}  # a finished sweep shows no run's numbers as if they were the job's
    runs = RunStore(db).list_runs(status="done")
    assert sorted(r.method for r in runs) == ["dpsat", "dpsgd"] and all(r.config.epochs == 1 for r in runs)
    at.run()  # the panel now shows the finished job
    texts = [p.proto.text for p in at.get("progress")]
    assert any(text.endswith(": DP-SGD, DP-SAT · finished") for text in texts), texts
    at.button(key="jobs-clear").click().run()
    assert get_jobs().jobs() == [] and not at.exception


def test_bad_settings_are_explained_on_the_train_page(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("train")
    at.text_input(key="train-epsilons").input("1, two")
    at.button(key="train-start").click().run()
    assert "ε values must be comma-separated numbers; 'two'" in at.error[0].value
    at.text_input(key="train-epsilons").input("0")
    at.button(key="train-start").click().run()
    assert "epsilon must be a finite number > 0" in at.error[0].value
    at.text_input(key="train-epsilons").input("1e-9")  # valid as a number, unreachable by any σ: checked first
    at.button(key="train-start").click().run()
    (error,) = at.error
    assert "DP-SGD, ε = 1e-09, seed 0: epsilon=1e-09 is too small to reach" in error.value and not at.success
    at.text_input(key="train-epsilons").input("3")
    at.text_input(key="train-rhos").input("0.05, wide")
    at.button(key="train-start").click().run()
    assert "ρ values must be comma-separated numbers; 'wide'" in at.error[0].value
    assert get_jobs().jobs() == []


def test_an_audit_from_its_page_runs_in_the_background_and_shows_both_epsilons(tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    monkeypatch.setenv("DPSAT_STORE", str(db))
    at = open_page("audit")
    assert any("No audits yet" in i.value for i in at.info)
    at.number_input(key="audit-canaries").set_value(5000)  # digits has 1,293 training rows
    at.button(key="audit-start").click().run()
    (error,) = at.error
    assert "canaries=5000 exceeds the 1293 training examples of digits" in error.value
    assert get_jobs().jobs() == [] and RunStore(db).list_runs() == []  # bad input: no job, nothing stored
    at.number_input(key="audit-canaries").set_value(100)
    at.number_input(key="audit-epochs").set_value(1)
    at.button(key="audit-start").click().run()
    assert not at.exception and not at.error
    view = get_jobs().wait(get_jobs().jobs()[0].job_id, timeout=300)
    assert view.status == "done", view
    at.run()
    (result,) = RunStore(db).audits()
    accountant, bound = at.metric
    assert accountant.value == f"{result.epsilon_spent:.2f}" and bound.value == f"{result.epsilon_lower_bound:.2f}"
    assert "Audit's ε lower bound (95% confidence)" in bound.label
    assert any(result.gap_text() in m.value for m in at.markdown)
    assert at.subheader[0].value.startswith("Latest audit: DP-SGD on digits, whitebox, 100 canaries")
    assert RunStore(db).get(result.run_id).config.audit_mode == "whitebox"


def test_the_data_page_checks_and_selects_a_built_in_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("data")
    at.selectbox(key="data-builtin").select("breast_cancer").run()
    assert [m.value for m in at.metric][:4] == ["409", "46", "114", "2"]  # train, validation, test, classes
    at.button(key="data-use").click().run()
    assert at.session_state["dataset"]["source"] == "breast_cancer"
    assert "breast_cancer" in _as_rendered(at.caption[0].value)  # the header names the choice at once
    at.switch_page("../pages/train.py").run()
    assert "breast_cancer" in _as_rendered(at.caption[0].value)


@ON_POPULATED
def test_runs_page_deletes_after_confirmation(populated, tmp_path, monkeypatch):
    db = tmp_path / "copy.db"
    db.write_bytes(populated.read_bytes())
    monkeypatch.setenv("DPSAT_STORE", str(db))
    victim = RunStore(db).list_runs()[0].run_id
    at = open_page("runs")
    table = at.dataframe[0].value
    sgd = table[table["run"].str.startswith("SGD")].iloc[0]  # blanks read "—": never "None" or a made-inert "'-"
    assert (sgd["target ε"], sgd["ρ"], sgd["ε spent"]) == ("—", "—", "—")
    assert not table.isin(["None", "'-", "'—"]).any().any()
    at.multiselect(key="runs-selected").select(victim).run()
    assert not at.exception and victim in at.subheader[0].value
    at.button(key="runs-delete").click().run()
    at.button(key="runs-delete-confirm").click().run()
    assert victim not in [r.run_id for r in RunStore(db).list_runs()]
    assert not at.exception and at.success[0].value == f"Deleted 1 run: {victim}."  # said, and no longer selected
    assert at.multiselect(key="runs-selected").value == [] and not at.subheader
    # a run still training (this process's) is refused with one message, and stays
    live = RunStore(db).create_run(TrainConfig(dataset="digits", epochs=1, seed=99))
    at = open_page("runs")
    at.multiselect(key="runs-selected").select(live).run()
    at.button(key="runs-delete").click().run()
    at.button(key="runs-delete-confirm").click().run()
    assert not at.exception and "still training: cancel it first" in at.error[0].value
    assert RunStore(db).get(live).status == "running"


def _as_rendered(markdown: str) -> str:
    """Markdown text as it reads on the page: backslash escapes (`widgets.plain_text`) removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _download_labels(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


@ON_POPULATED
def test_every_figure_offers_png_svg_pdf_and_html(populated, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(populated))
    at = open_page("privacy_utility")
    labels = _download_labels(at)
    charts = len(at.get("plotly_chart"))
    (table,) = [d.value for d in at.table if "seed pairs" in d.value.columns]  # the paired comparisons, wrapping
    # the reading next to the numbers it reads, before the columns a narrow window may squeeze
    assert list(table.columns[:7]) == ["method", "privacy", "ρ", "gain (points)", "95% CI", "reading", SHARPNESS]
    one_pair = r"\d\.\d{2,3} \(no interval, 1 of 2 pairs\)"  # only seed 0's runs are analysed, of two seeds
    assert len(table) and all(re.fullmatch(one_pair, v) for v in table[SHARPNESS])
    assert charts == 4 and all(labels.count(fmt) == charts for fmt in ("PNG", "SVG", "PDF", "HTML"))
    assert at.dataframe and all(d.proto.placeholder == BLANK for d in at.dataframe)  # not "None" (one seed: no ±)
    at = open_page("runs")
    assert {"Results CSV", "Results JSON"} <= set(_download_labels(at))
    assert at.dataframe and all(d.proto.placeholder == BLANK for d in at.dataframe)
    assert "1 means one class for every example" in at.dataframe[0].proto.columns  # the column's help
    at = open_page("overview")
    assert {"Report (HTML)", "Report (PDF)"} <= set(_download_labels(at))


@ON_POPULATED
def test_without_chromium_pages_offer_html_and_name_the_fix(populated, tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(populated))
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    at = open_page("privacy_utility")
    assert set(_download_labels(at)) == {"HTML"}
    assert any("apt-get install chromium" in c.value for c in at.caption)


def _csv(rows: int = 40, bad_row: bool = False) -> bytes:
    rows_text = [f"{20 + i},{['red', 'blue'][i % 2]},{'yes' if i % 3 else 'no'}" for i in range(rows)]
    lines = ["age,colour,label", *rows_text]
    if bad_row:
        lines[5] = "forty,red,yes"
    return ("\n".join(lines) + "\n").encode()


def _data_page_with_upload(tmp_path, monkeypatch):
    """The Data page on a fresh store with patients.csv (`_csv`) uploaded."""
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("data")
    at.radio(key="data-kind").set_value("Upload a file").run()
    return at.get("file_uploader")[0].upload("patients.csv", _csv(), "text/csv").run()


def test_an_uploaded_csv_is_previewed_checked_and_selected(tmp_path, monkeypatch):
    at = _data_page_with_upload(tmp_path, monkeypatch)
    assert not at.exception and len(at.dataframe[0].value) == 8  # preview of the first rows
    at.selectbox(key="data-target").select("label").run()
    assert [m.value for m in at.metric][:4] == ["28", "4", "8", "2"]  # 40 rows: 8 test, ⌈3.2⌉ validation
    at.button(key="data-use").click().run()
    chosen = at.session_state["dataset"]
    assert chosen["target"] == "label" and Path(chosen["source"]).read_bytes() == _csv()
    # a unique folder on disk; the file, and so every name shown, is the one uploaded
    assert Path(chosen["source"]).parent.parent == tmp_path / "dpsat_uploads"
    assert Path(chosen["source"]).name == "patients.csv"
    assert at.caption[0].value == "Selected for training: **patients.csv**"
    assert at.success[0].value == "Training will use patients."


def test_the_data_page_shows_an_upload_and_its_selection_again_on_return_until_cleared(tmp_path, monkeypatch):
    at = _data_page_with_upload(tmp_path, monkeypatch)
    at.selectbox(key="data-target").select("colour").run()
    schema = b'{"columns": {"age": {"min": 0, "max": 100}}}'
    at.get("file_uploader")[1].upload("s.json", schema, "application/json").run()
    at.button(key="data-use").click().run()
    chosen = at.session_state["dataset"]
    at.switch_page("../pages/train.py").run()
    at.switch_page("../pages/data.py").run()  # the uploaders' own state is gone: the page shows the kept upload
    assert not at.exception and at.get("file_uploader")[0].value is None
    assert at.radio(key="data-kind").value == "Upload a file" and at.selectbox(key="data-target").value == "colour"
    assert len(at.dataframe[0].value) == 8 and at.caption[0].value == "Selected for training: **patients.csv**"
    captions = [_as_rendered(c.value) for c in at.caption]
    assert "Your earlier upload: **patients.csv** (kept for this session)." in captions
    note, clear = [c for c in at.columns if c.get("caption") or c.button]  # the caption and its Clear button
    assert "Your earlier upload" in note.get("caption")[0].value and clear.button[0].key == "data-upload-clear"
    # centred on one line, the button not hanging below the caption
    assert {c.proto.vertical_alignment for c in (note, clear)} == {Block.Column.VerticalAlignment.CENTER}
    assert "Schema from earlier: **s.json**." in captions and not at.info  # age's bounds are public: nothing released
    assert at.session_state["upload"] == {"path": chosen["source"], "schema": chosen["schema"]}
    at.button(key="data-upload-clear").click().run()
    assert not at.exception and "Upload a file to check" in at.info[0].value
    assert at.session_state["dataset"]["source"] == "digits"  # it was selected: the selection goes with it
    assert at.caption[0].value == "Selected for training: **digits**"
    at.get("file_uploader")[0].upload("patients.csv", _csv(), "text/csv").run()  # kept again, not selected
    at.radio(key="data-kind").set_value("Built-in").run()
    at.selectbox(key="data-builtin").select("breast_cancer").run()
    at.button(key="data-use").click().run()
    at.switch_page("../pages/train.py").run()
    at.switch_page("../pages/data.py").run()  # a built-in selected since: opens on it, the upload one click away
    assert at.radio(key="data-kind").value == "Built-in" and at.selectbox(key="data-builtin").value == "breast_cancer"
    at.radio(key="data-kind").set_value("Upload a file").run()
    assert any(c.value.startswith("Your earlier upload: **patients.csv**") for c in at.caption)


def test_a_schema_given_on_the_data_page_scales_from_public_bounds_and_a_bad_one_is_explained(tmp_path, monkeypatch):
    at = _data_page_with_upload(tmp_path, monkeypatch)
    at.selectbox(key="data-target").select("label").run()
    assert "1 numeric feature group(s) have no public bounds" in at.info[0].value  # age: released with noise
    at.get("file_uploader")[1].upload("bad.json", b'{"columns": {"age": {"min": 9}}}', "application/json").run()
    assert [e.value for e in at.error] == [
        at.error[0].value
    ] and "bad.json: column 'age' needs either min and max" in _as_rendered(at.error[0].value)
    assert not any(n.endswith("bad.json") for n in _uploads(tmp_path))  # a bad schema is not kept
    schema = b'{"columns": {"age": {"min": 0, "max": 100}}, "classes": ["no", "yes"]}'
    at.get("file_uploader")[1].upload("s.json", schema, "application/json").run()
    assert not at.error and not at.info  # nothing left to release
    assert any("public bounds in schema s.json" in _as_rendered(c.value) for c in at.caption)
    at.button(key="data-use").click().run()
    assert Path(at.session_state["dataset"]["schema"]).read_bytes() == schema


def test_an_uploaded_csv_with_text_in_a_numeric_column_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("data")
    at.radio(key="data-kind").set_value("Upload a file").run()
    at.get("file_uploader")[0].upload("bad.csv", _csv(bad_row=True), "text/csv").run()
    at.selectbox(key="data-target").select("label").run()
    assert not at.exception
    assert "column 'age' is numeric but holds text in 1 row (row" in at.error[0].value
    assert _as_rendered(at.error[0].value).startswith("bad.csv: ")  # as uploaded: no digest of its stored copy
    assert not at.button  # nothing to select


@ON_POPULATED
def test_a_diverging_run_fails_its_job_with_the_reason_and_keeps_earlier_runs(populated, tmp_path, monkeypatch):
    import dashboard.actions as actions

    # trained in the job's own process: no worker pool (a pool cell's reason is checked in test_sweeps)
    monkeypatch.setattr(actions, "default_workers", lambda: 1)

    db = tmp_path / "copy.db"
    db.write_bytes(populated.read_bytes())
    monkeypatch.setenv("DPSAT_STORE", str(db))
    before = len(RunStore(db).list_runs(status="done"))
    spec = SweepSpec(
        base=TrainConfig(dataset="digits", epochs=1, lr=1e38), methods=("dpsgd",), epsilons=(3.0,), seeds=(0,)
    )
    view = get_jobs().wait(actions.start_sweep(spec), timeout=120)
    assert view.status == "failed" and "diverged" in view.error and "lower lr" in view.error
    assert len(RunStore(db).list_runs(status="done")) == before
    at = open_page("train")
    assert any("diverged" in e.value for e in at.error)  # the job panel shows it


@ON_POPULATED
def test_the_line_between_runs_defaults_to_a_baseline_and_its_method_at_one_seed(populated, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(populated))
    at = open_page("landscape")
    store = RunStore(populated)
    a, b = (store.get(at.selectbox(key=k).value) for k in ("land-line-a", "land-line-b"))
    assert (a.method, b.method) == ("dpsgd", "dpsat")
    assert (a.config.seed, a.target_epsilon) == (b.config.seed, b.target_epsilon)


def test_a_rho_sweep_gets_a_rho_view_on_the_privacy_utility_page(tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    spec = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64),
        methods=("dpsgd", "dpsat"),
        epsilons=(3.0,),
        seeds=(0, 1),
        rhos=(0.02, 0.2),
    )
    sweep(spec, RunStore(db))
    monkeypatch.setenv("DPSAT_STORE", str(db))
    at = open_page("privacy_utility")
    assert not at.exception and at.selectbox(key="pu-rho-level").value == "ε=3"
    assert len(at.get("plotly_chart")) == 5  # accuracy, curves, ε spent, wall time, and the ρ view


def test_the_job_panel_refreshes_only_while_a_job_is_active(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    refresh, real = [], st.fragment

    def spy(func=None, *, run_every=None, **kwargs):
        refresh.append(run_every)
        return real(func, run_every=run_every, **kwargs)

    monkeypatch.setattr(st, "fragment", spy)
    at = open_page("train")
    assert refresh and set(refresh) == {None}  # idle: no timer, no CPU
    release = threading.Event()
    job = get_jobs().submit("x", "waits", lambda progress, stop: release.wait(60))
    refresh.clear()
    at.run()
    assert refresh == [JOB_PANEL_REFRESH] and not at.exception
    release.set()
    assert get_jobs().wait(job, timeout=60).status == "done"
    refresh.clear()
    at.run()
    assert set(refresh) == {None}


def _upload(at: AppTest, name: str, content: bytes) -> AppTest:
    at.radio(key="data-kind").set_value("Upload a file").run()
    at.get("file_uploader")[0].upload(name, content, "application/octet-stream").run()
    return at


def _uploads(tmp_path: Path) -> list[str]:
    folder = tmp_path / "dpsat_uploads"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("binary.csv", bytes(range(128, 256)) * 8, "binary.csv is not UTF-8 text (it holds byte 0x80)"),
        ("latin.csv", "age,label\n".encode() + "é,1\n".encode("latin-1") * 20, "latin.csv is not UTF-8 text"),
        ("empty.csv", b"", "empty.csv is empty"),
        ("random.npz", bytes(range(256)) * 8, "random.npz is not an NPZ file"),
        ("pa\x00tients.csv", _csv(), "contains a NUL byte: rename the file"),
        ("notes.txt", b"hello", "'notes.txt' is not a .csv or .npz file"),
        ("x" * 300 + ".csv", _csv(), None),  # a name too long for the file system is shortened, not an error
    ],
)
def test_a_bad_upload_gets_one_clear_message_and_is_not_kept(tmp_path, monkeypatch, name, content, message):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = _upload(open_page("data"), name, content)
    assert not at.exception, at.exception
    if message is None:
        assert not at.error and at.selectbox(key="data-target").value == "label"
        assert [len(n) for n in _uploads(tmp_path)] == [9 + 80]  # '<digest>/' and the shortened name
        return
    assert [e.value for e in at.error] == [at.error[0].value] and message in _as_rendered(at.error[0].value)
    assert not re.search(r"[0-9a-f]{8}-", at.error[0].value)  # the file as uploaded, not its stored copy
    assert _uploads(tmp_path) == []  # unreadable files are deleted at once


def test_user_text_in_messages_cannot_render_markdown(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    column = "![b](http://127.0.0.1:9/leak.png)"
    rows = "".join(f"{i},{i % 2}\n" for i in range(30)) + "oops,1\n"
    at = _upload(open_page("data"), "leak.csv", f'"{column}",label\n{rows}'.encode())
    at.selectbox(key="data-target").select("label").run()
    (error,) = at.error
    assert "!\\[b\\](http://127.0.0.1:9/leak.png)" in error.value  # brackets escaped: no image, no link
    assert f"column '{column}' is numeric but holds text" in _as_rendered(error.value)


def test_plain_text_escapes_every_markdown_starter_and_nothing_is_lost():
    from dashboard.widgets import plain_text

    text = "a*b_c`d[e](f)<g>#h|i~j$k{l}m\\n"
    escaped = plain_text(text + "\nsecond line")
    assert escaped == "a\\*b\\_c\\`d\\[e\\](f)\\<g>\\#h\\|i\\~j\\$k\\{l\\}m\\\\n second line"
    assert _as_rendered(escaped) == text + " second line"


def test_uploads_are_pruned_by_age_and_size_but_files_in_use_are_kept(tmp_path):
    from dashboard.uploads import prune_uploads

    files = {}
    for age_days, name in ((30, "old.csv"), (20, "old-in-use.csv"), (2, "big.npz"), (1, "new.csv")):
        files[name] = tmp_path / name
        files[name].write_bytes(b"x" * (600 if name == "big.npz" else 100))
        stamp = 1_000_000_000 - age_days * 86400
        os.utime(files[name], (stamp, stamp))
    deleted = prune_uploads(
        tmp_path, keep=[str(files["old-in-use.csv"])], budget_bytes=500, max_age_seconds=7 * 86400, now=1e9
    )
    # the old one goes by age; then the folder (900 bytes) is over its budget: the oldest left goes next
    assert [p.name for p in deleted] == ["old.csv", "big.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv", "old-in-use.csv"]


def test_a_saved_upload_is_kept_while_a_run_uses_it(tmp_path, monkeypatch):
    from dashboard.uploads import receive_upload

    first = receive_upload(tmp_path, "a.csv", _csv())
    os.utime(first.path, (0, 0))  # long past the age limit
    receive_upload(tmp_path, "b.csv", _csv(rows=20), keep=[str(first.path)])
    assert first.path.exists() and len(list(tmp_path.iterdir())) == 2
    receive_upload(tmp_path, "c.csv", _csv(rows=21))
    assert not first.path.exists()


def test_a_stored_upload_reads_back_only_while_it_is_in_the_uploads_folder(tmp_path):
    from dashboard.uploads import receive_upload, stored_upload

    folder = tmp_path / "uploads"
    folder.mkdir()
    saved = receive_upload(folder, "a.csv", _csv())
    again = stored_upload(folder, str(saved.path))
    assert again is not None and again.path == saved.path and again.preview.equals(saved.preview)
    outside = tmp_path / "a.csv"
    outside.write_bytes(_csv())
    assert stored_upload(folder, str(outside)) is None  # only this server's uploads, never another path
    assert stored_upload(folder, str(folder / ".." / "a.csv")) is None
    saved.path.unlink()  # pruned since
    assert stored_upload(folder, str(saved.path)) is None


def test_the_runs_page_shows_infinite_and_partial_epsilons(tmp_path, monkeypatch):
    import sqlite3

    from dpsat_core import EpochMetrics, run
    from dpsat_core.sweeps import calibrate_cells

    db = tmp_path / "runs.db"
    store = RunStore(db)
    base = TrainConfig(dataset="breast_cancer", method="dpsgd", epochs=1, batch_size=64)
    no_noise = run(dataclasses.replace(base, epsilon=None, noise_multiplier=0.0), store).record
    calibrate_cells([base.normalized()], store)  # σ found first: the stop function below is asked between steps only
    calls = []
    cancelled = run(base, store, should_stop=lambda: calls.append(1) or len(calls) > 3).record
    killed = store.create_run(dataclasses.replace(base, seed=7))
    metrics = dict(train_loss=0.5, test_loss=0.5, test_accuracy=0.9, seconds=1.0, steps=6, releases=6)
    store.add_epoch(killed, EpochMetrics(epoch=1, epsilon_spent=1.25, **metrics))
    with sqlite3.connect(db) as connection:  # its trainer was killed long ago: its lease expired
        connection.execute("UPDATE runs SET heartbeat=0 WHERE run_id=?", (killed,))
    store.reap_interrupted()
    monkeypatch.setenv("DPSAT_STORE", str(db))
    at = open_page("runs")
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc[no_noise.run_id, "ε spent"] == "∞"  # not "-", blank, "inf" or "Infinity"
    assert (
        cancelled.status == "cancelled" and table.loc[cancelled.run_id, "ε spent"] == f"{cancelled.epsilon_spent:.3f}"
    )
    assert 0 < cancelled.epsilon_spent < 3 and table.loc[killed, "ε spent"] == "1.250"
    at.multiselect(key="runs-selected").select(no_noise.run_id).run()
    assert at.dataframe[1].value["epsilon_spent"].tolist() == ["∞"]  # the run's epochs


def test_the_job_panel_shows_an_infinite_epsilon_as_infinity(tmp_path, monkeypatch):
    import math

    from dpsat_core.progress import Progress

    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))

    reported = threading.Event()

    def no_noise_job(progress, stop):
        progress(Progress("train", 1, 2, "epoch 1/2 done", {"epsilon_spent": math.inf, "test_accuracy": 0.9}))
        reported.set()
        while not stop():
            time.sleep(0.05)

    job_id = get_jobs().submit("sweep", "σ=0 run", no_noise_job)
    assert reported.wait(timeout=60)
    at = open_page("train")
    texts = [p.proto.text for p in at.get("progress")]
    assert any("ε spent ∞" in text for text in texts), texts
    get_jobs().cancel(job_id)


def test_the_runs_table_makes_formula_cells_inert_for_its_csv_download(tmp_path, monkeypatch):
    from tests.factories import summary

    db = tmp_path / "runs.db"
    store = RunStore(db)
    config = TrainConfig(dataset='=HYPERLINK("http://evil.example","x")', method="dpsgd", epsilon=2.0, epochs=1)
    run_id = store.create_run(config)
    store.finish(run_id, summary(config, accuracy=0.75, epsilon_spent=1.9, seconds_per_epoch=1.0), {})
    monkeypatch.setenv("DPSAT_STORE", str(db))
    at = open_page("runs")
    (row,) = at.dataframe[0].value.to_dict("records")
    assert row["dataset"] == "'" + config.dataset and row["ε spent"] == "1.900" and row["test accuracy %"] == 75.0


def test_two_sessions_see_each_others_jobs_but_cancel_and_clear_only_their_own(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    monkeypatch.delenv("DPSAT_OPERATOR", raising=False)
    a, b = open_page("train"), open_page("train")  # two browser sessions on one server: one job manager
    owner_a, owner_b = a.session_state["session_owner"], b.session_state["session_owner"]
    assert owner_a != owner_b
    release = threading.Event()
    running = get_jobs().submit("x", "a's long job", lambda progress, stop: release.wait(60), owner=owner_a)
    finished = get_jobs().submit("x", "a's quick job", lambda progress, stop: None, owner=owner_a)
    assert get_jobs().wait(finished, timeout=60).status == "done"
    a.run()
    b.run()
    texts = [p.proto.text for p in b.get("progress")]
    assert any(t.startswith("a's long job · another session's") for t in texts), texts  # B sees A's jobs
    assert not [x for x in b.button if x.key in (f"cancel-{running}", "jobs-clear")]  # but may not touch them
    assert {f"cancel-{running}", "jobs-clear"} <= {x.key for x in a.button}
    a.button(key=f"cancel-{running}").click().run()
    release.set()
    assert get_jobs().wait(running, timeout=60).status == "cancelled"
    a.run()
    a.button(key="jobs-clear").click().run()
    assert get_jobs().jobs() == [] and not a.exception
    # an operator's session may cancel anyone's job
    monkeypatch.setenv("DPSAT_OPERATOR", "1")
    hold = threading.Event()
    other = get_jobs().submit("x", "b's job", lambda progress, stop: hold.wait(60), owner=owner_b)
    a.run()
    a.button(key=f"cancel-{other}").click().run()
    hold.set()
    assert get_jobs().wait(other, timeout=60).status == "cancelled"


def test_a_clicked_cancel_shows_at_once_in_every_session_until_the_job_ends_cancelled(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    monkeypatch.delenv("DPSAT_OPERATOR", raising=False)
    a, b = open_page("train"), open_page("train")
    release = threading.Event()  # a job slow to stop: it ends only when released
    owner = a.session_state["session_owner"]
    job = get_jobs().submit("x", "slow to stop", lambda progress, stop: release.wait(60), owner=owner)
    a.run()
    assert a.button(key=f"cancel-{job}").label == "Cancel" and not a.button(key=f"cancel-{job}").disabled
    a.button(key=f"cancel-{job}").click().run()
    # the click's own rerun already says so, and the button cannot be clicked again
    button = a.button(key=f"cancel-{job}")
    assert button.disabled and button.label == "Cancelling…" and not a.exception
    assert any(p.proto.text.startswith("slow to stop · cancelling…") for p in a.get("progress"))
    b.run()  # another tab reads it from the job, not from A's session
    assert any(p.proto.text.startswith("slow to stop · another session's · cancelling…") for p in b.get("progress"))
    release.set()
    assert get_jobs().wait(job, timeout=60).status == "cancelled"
    a.run()
    texts = [p.proto.text for p in a.get("progress")]
    assert not [x for x in a.button if x.key == f"cancel-{job}"] and not any("cancelling" in t for t in texts), texts
    assert any(t.startswith("slow to stop · cancelled") for t in texts), texts


def test_a_job_started_from_a_page_belongs_to_its_session(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("train")
    at.checkbox(key="train-method-dpsam").uncheck()
    at.checkbox(key="train-method-dpsat").uncheck()
    at.text_input(key="train-epsilons").input("3")
    at.text_input(key="train-seeds").input("0")
    at.number_input(key="train-epochs").set_value(1)
    at.button(key="train-start").click().run()
    (job,) = get_jobs().jobs()
    assert job.owner == at.session_state["session_owner"]


def test_pages_leave_diverged_runs_out_and_say_how_many(tmp_path, monkeypatch):
    from tests.factories import store_one_diverged

    store = RunStore(tmp_path / "runs.db")
    store_one_diverged(store)
    monkeypatch.setenv("DPSAT_STORE", str(store.path))
    at = open_page("privacy_utility")
    assert not at.exception
    assert any(c.value.startswith("1 diverged run left out") for c in at.caption), [c.value for c in at.caption]


def test_the_train_page_trains_in_release_mode_when_asked_and_says_why_delta_is_small(tmp_path, monkeypatch):
    import dashboard.actions as actions
    from dpsat_core.caveats import DELTA_WHY

    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    started: list[SweepSpec] = []
    monkeypatch.setattr(actions, "start_sweep", started.append)  # the page's grid, not its training
    at = open_page("train")
    assert any(DELTA_WHY in _as_rendered(c.value) for c in at.caption)
    at.button(key="train-start").click().run()
    at.checkbox(key="train-secure").check()
    at.button(key="train-start").click().run()
    assert not at.exception and [s.base.randomness for s in started] == ["research", "release"]
    assert {c.randomness for c in started[1].cells()} == {"release"}  # every cell, so every stored config says so


def test_the_data_page_states_the_default_delta_and_why(tmp_path, monkeypatch):
    from dpsat_core.caveats import DELTA_WHY

    monkeypatch.setenv("DPSAT_STORE", str(tmp_path / "runs.db"))
    at = open_page("data")
    at.selectbox(key="data-builtin").select("breast_cancer").run()
    (caption,) = [_as_rendered(c.value) for c in at.caption if "Default δ" in c.value]
    assert caption == f"Default δ for 409 training rows: 0.0001. {DELTA_WHY}"  # 1/(10·409) = 2.4e-4 → 1e-4


@ON_POPULATED
@pytest.mark.parametrize("name", ["overview", "privacy_utility", "sharpness", "landscape", "runs"])
def test_pages_that_show_research_runs_say_their_noise_is_seeded(name, populated, monkeypatch):
    from dpsat_core.caveats import SEEDED_NOISE, TRAINING_DATA

    monkeypatch.setenv("DPSAT_STORE", str(populated))
    at = open_page(name)
    captions = [_as_rendered(c.value) for c in at.caption]
    assert f"Private runs shown: {SEEDED_NOISE}." in captions
    subtitles = [
        json.loads(c.proto.spec)["layout"]["title"].get("subtitle", {}).get("text") for c in at.get("plotly_chart")
    ]
    if name in ("sharpness", "landscape"):  # every analysis here reads training rows: the page and each figure say so
        assert any(c.endswith(f": {TRAINING_DATA}.") for c in captions)
        assert subtitles and all(s and s.endswith(TRAINING_DATA) for s in subtitles)
    if name == "runs":
        at.multiselect(key="runs-selected").select(RunStore(populated).list_runs()[0].run_id).run()
        assert any("train_loss and seconds" in c.value and TRAINING_DATA in c.value for c in at.caption)


def test_pages_open_on_the_data_set_and_setting_of_the_latest_run_and_keep_the_users_choice(tmp_path, monkeypatch):
    from tests.factories import store_finished

    store = RunStore(tmp_path / "runs.db")
    # digits has the most runs, and breast cancer's larger setting (one epoch) the most of its own; the run that
    # finished last is breast cancer's two-epoch one: what the user just trained
    for dataset, seed, epochs in [("digits", s, 1) for s in (0, 1, 2)] + [("breast_cancer", s, 1) for s in (0, 1)]:
        store_finished(store, TrainConfig(dataset=dataset, method="dpsgd", epsilon=3.0, seed=seed, epochs=epochs))
    latest = store_finished(store, TrainConfig(dataset="breast_cancer", method="dpsgd", epsilon=3.0, epochs=2))
    assert max(store.list_runs(), key=lambda r: r.updated).run_id == latest
    monkeypatch.setenv("DPSAT_STORE", str(store.path))
    at = open_page("overview")
    assert not at.exception and at.selectbox(key="overview-dataset").value == "breast_cancer"
    setting = at.selectbox(key="overview-setting-breast_cancer")
    shown = setting.options[setting.index]
    assert shown.startswith("breast_cancer: 2 epochs") and shown.endswith("(1 run)")  # not the larger setting
    at.selectbox(key="overview-dataset").select("digits").run()  # the user's choice sticks over reruns
    at.run()
    assert not at.exception and at.selectbox(key="overview-dataset").value == "digits"


@ON_POPULATED
def test_the_sharpness_page_leaves_runs_a_running_job_analyses_out_of_its_offer(populated, monkeypatch):
    from dpsat_core import cached_analyses

    monkeypatch.setenv("DPSAT_STORE", str(populated))
    store = RunStore(populated)
    ids = [r.run_id for r in store.list_runs(status="done")]
    lacking = [i for i in ids if i not in cached_analyses(store, ids, "hessian")]
    assert len(lacking) == 4
    release = threading.Event()
    work = frozenset((i, kind) for i in lacking[:3] for kind in ("hessian", "adaptive", "noise"))
    job = get_jobs().submit("analysis", "held", lambda progress, stop: release.wait(60), work=work)
    try:
        at = open_page("sharpness")
        assert not at.exception
        assert "3 runs already being analysed by a running job (progress under Jobs)." in [c.value for c in at.caption]
        button = at.button(key="sharp-go").label  # only the one run no job covers
        assert button.startswith("Compute Hessian spectrum, ") and button.endswith(" for 1 run")
    finally:
        release.set()
        get_jobs().wait(job, timeout=60)


SERVER_EXIT = """
import sys
import dpsat_core.workers
dpsat_core.workers.warm_up = lambda: None  # no fork server importing torch: this job runs in a thread
from dashboard.state import get_jobs
from tests import job_tasks
jobs = get_jobs()
job = jobs.submit("x", "waits for a stop", job_tasks.wait_for_stop)
while "pid" not in jobs.get(job).metrics:
    pass
print("running", flush=True)
sys.exit(0)  # the server's main thread ends, as after Streamlit's "Stopping..."
"""


def test_a_stopping_server_cancels_its_jobs_instead_of_waiting_for_them(tmp_path):
    # Python waits for the job threads at exit: a job that runs on would keep a stopped server alive until it ends
    env = {**os.environ, "DPSAT_STORE": str(tmp_path / "runs.db")}
    proc = subprocess.run([sys.executable, "-c", SERVER_EXIT], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "running", proc.stderr[-1500:]
