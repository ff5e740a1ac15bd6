"""Overview (placeholder until the dashboard issue): the three methods and the stored runs."""

import pandas as pd
import streamlit as st

from dpsat_core import RunStore, method_table
from dpsat_core.cli import default_store_path

st.title("dpsat-lab: why flat minima help under differential privacy")
st.subheader("The methods")
st.dataframe(pd.DataFrame(method_table()), hide_index=True)
st.subheader("Stored runs")
runs = RunStore(default_store_path()).list_runs()
if runs:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    k: r.to_dict()[k]
                    for k in (
                        "run_id",
                        "status",
                        "method",
                        "dataset",
                        "seed",
                        "target_epsilon",
                        "epsilon",
                        "test_accuracy",
                    )
                }
                for r in runs
            ]
        ),
        hide_index=True,
    )
else:
    st.info("No runs yet. Train some with: python -m dpsat_core sweep --dataset digits --epochs 5")
