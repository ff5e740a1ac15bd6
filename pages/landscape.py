"""Landscape: 1D slices overlaid, 2D contours on one colour scale, 3D on demand, the line between two runs."""

import streamlit as st

from dashboard.actions import offer_analyses, start_line
from dashboard.state import get_store
from dashboard.widgets import (
    ANALYSED_ROWS,
    baseline_pair,
    chart,
    comparable_runs_or_stop,
    job_panel,
    one_run_per_method,
    run_multiselect,
    training_data_caption,
)
from dpsat_core import cached_analyses, figures, run_line
from dpsat_core.compare import best_epsilon, group_runs

st.title("Loss landscape")
st.caption("Every run is sliced along the same seeded, filter-normalised random directions (Li et al. 2018).")
training_data_caption(f"Slices, surfaces and lines show the loss on {ANALYSED_ROWS}")
store = get_store()
runs = comparable_runs_or_stop(store.list_runs(status="done"), key="land")
middle = best_epsilon(group_runs(runs))
chosen = run_multiselect(runs, key="land-runs", default=one_run_per_method(runs, middle))
labels = {r.run_id: figures.run_label(r) for r in runs}


chosen_ids = [r.run_id for r in chosen]
stored_slices = cached_analyses(store, chosen_ids, "slice")
stored_surfaces = cached_analyses(store, chosen_ids, "surface")
slices = {labels[r.run_id]: (r.method, stored_slices[r.run_id]) for r in chosen if r.run_id in stored_slices}
surfaces = {labels[r.run_id]: stored_surfaces[r.run_id] for r in chosen if r.run_id in stored_surfaces}
lacking = {
    kind: [r for r in chosen_ids if r not in stored]
    for kind, stored in (("slice", stored_slices), ("surface", stored_surfaces))
}
offer_analyses(lacking, chosen, label="Compute slices and surfaces", key="land-go")
if slices:
    chart(figures.slices_overlay(slices), key="land-slices")
if surfaces:
    chart(figures.surfaces_side_by_side(surfaces), key="land-contours")
    if st.checkbox("Show a 3D surface", key="land-3d"):
        which = st.selectbox("Run", list(surfaces), key="land-3d-run")
        chart(figures.surface_3d(which, surfaces[which]), key="land-3d-plot")

st.subheader("The straight line between two runs")
ids = [r.run_id for r in runs]
first, second = baseline_pair(runs, middle)
a, b = st.columns(2)
run_a = a.selectbox("From (t = 0)", ids, index=first, format_func=labels.get, key="land-line-a")
run_b = b.selectbox("To (t = 1)", ids, index=second, format_func=labels.get, key="land-line-b")
line = run_line(store, run_a, run_b, cached_only=True) if run_a != run_b else None
if line:
    chart(figures.line_between_runs(line, labels[run_a], labels[run_b]), key="land-line")
elif run_a != run_b and st.button("Compute the line", key="land-line-go"):
    start_line(run_a, run_b)
job_panel()
