"""Privacy–utility: accuracy vs ε (mean ± std over seeds), paired gains with intervals, curves, ε over epochs."""

import streamlit as st

from dashboard.state import get_store
from dashboard.widgets import cell_table, chart, comparable_runs_or_stop, comparison_table, job_panel
from dpsat_core import figures
from dpsat_core.compare import comparisons, group_runs

st.title("Privacy–utility")
runs = comparable_runs_or_stop(get_store().list_runs(status="done", with_epochs=True), key="pu")
stats = group_runs(runs)
chart(figures.accuracy_vs_epsilon(stats), key="pu-accuracy")
cell_table(stats)
st.markdown("**Each method against its baseline**, paired by seed (same batches and noise draws), 95% interval:")
comparison_table(comparisons(stats))
left, right = st.columns(2)
chart(figures.training_curves(runs), key="pu-curves", where=left)
chart(figures.epsilon_over_epochs(runs), key="pu-epsilon", where=right)
chart(figures.cost_per_epoch(stats), key="pu-cost")
job_panel()
