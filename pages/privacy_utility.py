"""Privacy–utility: accuracy vs ε (mean ± std over seeds), training curves, ε over epochs, cost."""

import pandas as pd
import streamlit as st

from dashboard.state import get_store
from dashboard.widgets import chart, comparable_runs_or_stop, job_panel
from dpsat_core import figures
from dpsat_core.compare import group_runs

st.title("Privacy–utility")
runs = comparable_runs_or_stop(get_store().list_runs(status="done", with_epochs=True), key="pu")
stats = group_runs(runs)
chart(figures.accuracy_vs_epsilon(stats), key="pu-accuracy")
st.dataframe(
    pd.DataFrame(
        [
            {
                "method": c.label,
                "target ε": c.target_epsilon,
                "seeds": c.seeds,
                "accuracy %": round(100 * c.accuracy_mean, 2),
                "± std": None if c.accuracy_std is None else round(100 * c.accuracy_std, 2),
                "ε spent": None if c.epsilon_spent_mean is None else round(c.epsilon_spent_mean, 3),
                "s / epoch": round(c.seconds_per_epoch, 3),
            }
            for c in stats
        ]
    ),
    hide_index=True,
)
left, right = st.columns(2)
chart(figures.training_curves(runs), key="pu-curves", where=left)
chart(figures.epsilon_over_epochs(runs), key="pu-epsilon", where=right)
chart(figures.cost_per_epoch(stats), key="pu-cost")
job_panel()
