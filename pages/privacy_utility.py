"""Privacy–utility: accuracy vs ε (mean ± std over seeds), paired gains with intervals, curves, ε over epochs."""

import streamlit as st

from dashboard.state import get_store
from dashboard.widgets import cell_table, chart, comparable_runs_or_stop, comparison_table, job_panel
from dpsat_core import analysed_cells, figures
from dpsat_core.compare import comparisons, rho_levels

st.title("Privacy–utility")
store = get_store()
runs = comparable_runs_or_stop(store.list_runs(status="done", with_epochs=True), key="pu")
stats = analysed_cells(store, runs)
compared = comparisons(stats)
chart(figures.accuracy_vs_epsilon(stats), key="pu-accuracy")
cell_table(stats)
release = runs[0].config.randomness == "release"  # a setting has one randomness mode
shared = "release mode: same initial weights only" if release else "same batches and noise draws"
st.markdown(f"**Each method against its baseline**, paired by seed ({shared}), 95% interval:")
comparison_table(compared)
levels = rho_levels(compared)
if levels:
    level = st.selectbox("ρ view at", levels, key="pu-rho-level")
    at_level = ([c for c in stats if c.privacy == level], [c for c in compared if c.privacy == level])
    chart(figures.rho_view(*at_level), key="pu-rho")
    st.caption(
        "The circled ρ has the best mean validation accuracy (rows held out of training, by `split_seed`); "
        "the gain plotted is on the test set, measured after that choice and not adjusted for it: confirm "
        "a pick on new seeds. ε holds for each run alone: choosing among runs trained on the same rows "
        "costs privacy beyond it. For a release, fix ρ in advance, tune on public data, or use a DP "
        "tuning procedure."
    )
left, right = st.columns(2)
chart(figures.training_curves(runs), key="pu-curves", where=left)
chart(figures.epsilon_over_epochs(runs), key="pu-epsilon", where=right)
chart(figures.cost_per_epoch(stats), key="pu-cost")
job_panel()
