"""Privacy audit: train one audit run in the background; the accountant's ε beside the audit's lower bound."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.actions import start_audit
from dashboard.state import current_dataset, get_store, shown_source
from dashboard.widgets import data_table, job_panel, plain_text, show_error
from dpsat_core import METHODS, DpsatError, TrainConfig
from dpsat_core.config import AUDIT_MODES, DEFAULT_CANARIES, DEFAULT_EPSILON, MIN_CANARIES
from dpsat_core.results import format_number

st.title("Privacy audit")
dataset = current_dataset()
st.caption(
    f"Data set: **{plain_text(shown_source(dataset['source']))}** (change it on the Data page). "
    "An audit trains one run with "
    "canaries, each included with probability 1/2, and bounds its ε from below at 95% confidence from how well "
    "an attacker guesses which were included (Steinke, Nasr & Jagielski, NeurIPS 2023). Audit runs are kept "
    "out of every comparison."
)
defaults = TrainConfig()
a, b, c = st.columns(3)
private = [name for name, info in METHODS.items() if info.private]
method = a.selectbox("Method", private, format_func=lambda m: METHODS[m].label, key="audit-method")
epsilon = b.number_input("Target ε", 0.01, 100.0, DEFAULT_EPSILON, key="audit-epsilon")
epochs = c.number_input("Epochs", 1, 500, defaults.epochs, key="audit-epochs")
mode = a.radio(
    "Mode",
    AUDIT_MODES,
    key="audit-mode",
    help="whitebox: gradient canaries, the auditor sees every released noisy gradient (the strongest attacker); "
    "blackbox: mislabelled training rows, the auditor sees the final model only.",
)
canaries = b.number_input("Canaries", MIN_CANARIES, 100_000, DEFAULT_CANARIES, key="audit-canaries")

if st.button("Start audit", type="primary", key="audit-start"):
    try:
        config = TrainConfig(
            dataset=dataset["source"],
            target=dataset["target"],
            dataset_size=dataset["size"],
            method=method,
            epsilon=epsilon,
            epochs=int(epochs),
        )
        start_audit(config, mode=mode, canaries=int(canaries))
    except DpsatError as exc:
        show_error(exc)

audits = get_store().audits()
if audits:
    latest = audits[-1]
    st.subheader(
        plain_text(
            f"Latest audit: {METHODS[latest.method].label} on {Path(latest.dataset).name}, {latest.mode}, "
            f"{latest.canaries:,} canaries"
        )
    )
    left, right = st.columns(2)
    left.metric("Accountant's ε (upper bound)", format_number(latest.epsilon_spent, ".2f"))
    right.metric(f"Audit's ε lower bound ({latest.confidence:.0%} confidence)", f"{latest.epsilon_lower_bound:.2f}")
    st.markdown(latest.gap_text())
    table = pd.DataFrame(
        [
            {
                "run": r.run_id,
                "data set": r.dataset,
                "audit": f"{METHODS[r.method].label}, {r.mode}, {r.canaries} canaries",
                "ε (accountant)": format_number(r.epsilon_spent, ".2f"),
                "ε ≥ (95%)": round(r.epsilon_lower_bound, 3),
                "right": f"{r.correct}/{r.guesses}",
                "AUC ± s.e.": f"{r.auc:.3f} ± {r.auc_stderr:.3f}",
                "s": round(r.seconds, 1),
            }
            for r in reversed(audits)
        ]
    )
    data_table(table, key="audit-table")
    st.caption(
        "ε ≥: the audit's lower bound at 95% confidence; right: correct guesses of those made; AUC: the membership "
        "scores' area under the ROC curve; s: seconds the audit took."
    )
else:
    st.info("No audits yet: start one above.")
job_panel()
