"""Runs: the store as a table: filter, select, delete, re-open one run."""

from functools import partial

import pandas as pd
import streamlit as st

from dashboard.state import get_store, shown_source
from dashboard.widgets import (
    BLANK,
    chart,
    data_table,
    download,
    job_panel,
    plain_text,
    randomness_caption,
    show_error,
    training_data_caption,
)
from dpsat_core import DpsatError, cached_analyses, figures, method_info
from dpsat_core.export import inert_cell, results_csv, results_json
from dpsat_core.results import counted, format_number
from dpsat_core.store import STATUSES

CLASSES_PREDICTED = st.column_config.NumberColumn(
    help="How many classes the model predicts on the test set at its last finished epoch: 1 means one class for "
    "every example, so its accuracy is that class's share"
)

st.title("Runs")
store = get_store()


def delete_runs(run_ids: list[str]) -> None:
    """Delete the confirmed runs before the page redraws, so the selection can drop them, and keep what happened
    for the next run of the page to say."""
    deleted = []
    try:
        for run_id in run_ids:
            store.delete(run_id)  # a run still training is refused (cancel it first)
            deleted.append(run_id)
    except DpsatError as exc:
        st.session_state["runs-delete-error"] = exc
    st.session_state["runs-selected"] = [r for r in run_ids if r not in deleted]
    st.session_state.pop("runs-confirm", None)
    if deleted:
        st.session_state["runs-deleted"] = deleted


if deleted := st.session_state.pop("runs-deleted", None):
    st.success(f"Deleted {counted(len(deleted), 'run')}: {', '.join(deleted)}.")
if failed := st.session_state.pop("runs-delete-error", None):
    show_error(failed)
records = store.list_runs()
if not records:
    st.info("The store is empty: start runs on **Train & sweep**, or run the default comparison on the Overview.")
    st.stop()
a, b, c = st.columns(3)
statuses = a.multiselect("Status", STATUSES, default=list(STATUSES), key="runs-status")
datasets = b.multiselect(
    "Data set", sorted({r.config.dataset for r in records}), format_func=shown_source, key="runs-dataset"
)
methods = c.multiselect("Method", sorted({r.method for r in records}), key="runs-method")
shown = [
    r
    for r in records
    if r.status in statuses and (not datasets or r.config.dataset in datasets) and (not methods or r.method in methods)
]
table = pd.DataFrame(
    [
        {
            "run": figures.run_label(r),
            "status": r.status,
            "dataset": shown_source(r.config.dataset),
            "target ε": format_number(r.target_epsilon, "g", missing=BLANK),
            "ρ": format_number(r.config.rho if method_info(r.method).uses_rho else None, "g", missing=BLANK),
            "ε spent": format_number(r.epsilon_spent, ".3f", missing=BLANK),  # ∞ for runs without noise
            "test accuracy %": None if r.test_accuracy is None else round(100 * r.test_accuracy, 2),
            "validation %": None if r.validation_accuracy is None else round(100 * r.validation_accuracy, 2),
            "classes predicted": None if r.summary is None else r.summary.test_classes_predicted,  # 1: constant
            "epochs": r.config.epochs,
            "randomness": r.config.randomness,
            "reason": r.reason,
            "run_id": r.run_id,
        }
        for r in shown
    ]
)
# text cells inert for spreadsheets: the table's own CSV download writes them as shown
data_table(table.map(inert_cell), key="runs-table", column_config={"classes predicted": CLASSES_PREDICTED})
randomness_caption(shown)
spectra = cached_analyses(store, [r.run_id for r in shown], "hessian")
down_csv, down_json, _ = st.columns([1, 1, 4])
download(down_csv, "Results CSV", partial(results_csv, shown, spectra), "dpsat_results.csv", key="runs-csv")
download(down_json, "Results JSON", partial(results_json, shown, spectra), "dpsat_results.json", key="runs-json")
selected = st.multiselect("Select runs", [r.run_id for r in shown], key="runs-selected")
if selected:
    left, right = st.columns(2)
    if left.button(f"Delete {counted(len(selected), 'run')}", key="runs-delete"):
        st.session_state["runs-confirm"] = list(selected)
    if st.session_state.get("runs-confirm") == list(selected):
        st.warning("Deleting removes the runs, their weights and analyses.")
        right.button(
            "Yes, delete", type="primary", key="runs-delete-confirm", on_click=delete_runs, args=(list(selected),)
        )
    record = store.get(selected[0])
    st.subheader(f"Run {record.run_id}: {figures.run_label(record)}")
    st.caption(plain_text(record.privacy_note))
    chart(figures.training_curves([record]), key="runs-curve")
    training_data_caption("train_loss and seconds (which track the Poisson batch sizes) in this table")
    epochs = pd.DataFrame([e.to_dict() for e in record.epochs])
    if not epochs.empty:
        epochs["epsilon_spent"] = [format_number(e.epsilon_spent, ".3f", missing=BLANK) for e in record.epochs]
    data_table(epochs)
    st.json(record.to_dict(), expanded=False)
job_panel()
