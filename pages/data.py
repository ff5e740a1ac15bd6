"""Data: pick a built-in data set or upload a CSV/NPZ (and its schema); preview it; say what ε covers of its
preprocessing; every problem explained here."""

import pandas as pd
import streamlit as st

from dashboard.state import current_dataset, opens_on_upload, shown_source
from dashboard.upload_picker import upload_picker
from dashboard.widgets import plain_text, show_error
from dpsat_core import BUILTIN_DATASETS, DpsatError, TrainConfig, default_delta, load_dataset
from dpsat_core.caveats import DELTA_WHY
from dpsat_core.data import DEFAULT_SIZES

st.title("Data")
chosen_before = current_dataset()
st.caption(f"Selected for training: **{plain_text(shown_source(chosen_before['source']))}**")
# the widgets' own state is dropped while another page shows: they open on this session's choice and upload
kinds = ["Built-in", "Upload a file"]
kind = st.radio("Source", kinds, index=int(opens_on_upload(BUILTIN_DATASETS)), horizontal=True, key="data-kind")
size, target, schema = None, None, None
if kind == "Built-in":
    builtins = list(BUILTIN_DATASETS)
    opened = builtins.index(chosen_before["source"]) if chosen_before["source"] in builtins else 0
    source = st.selectbox("Data set", builtins, index=opened, key="data-builtin")
    if source in DEFAULT_SIZES:
        size = int(st.number_input("Examples to generate", 200, 100_000, DEFAULT_SIZES[source], key="data-size"))
else:
    source, target, schema = upload_picker(chosen_before)

try:
    data = load_dataset(
        source, target=target, size=size, validation_fraction=TrainConfig().validation_fraction, schema=schema
    )
except DpsatError as exc:
    show_error(exc)
    st.stop()

info = data.describe()
cols = st.columns(5)
cols[0].metric("Training examples", info["n_train"])
cols[1].metric("Validation examples", info["n_validation"])
cols[2].metric("Test examples", info["n_test"])
cols[3].metric("Classes", info["n_classes"])
cols[4].metric("Input shape", " × ".join(map(str, info["input_shape"])))
st.caption(
    f"The default split (seed 0): the test rows first, then {TrainConfig().validation_fraction:.0%} of the rest "
    "held out for validation (change the share on the Train page). Only the training rows are trained on; "
    "validation accuracy is for choosing ρ, lr or C, and verdicts report test accuracy."
)
st.markdown("**What a private run's ε covers of the preprocessing**")
if data.pending:
    share = TrainConfig().preprocessing_share
    st.info(
        f"{len(data.pending)} numeric feature group(s) have no public bounds: a private run releases their scale "
        f"(a clipped mean and std per column) with Gaussian noise, which takes {share:.0%} of its ε on its own "
        "(the share is a Train page setting); the accountant composes it with training, so the run's total ε is "
        "still its target. Give their ranges in a schema to spend nothing on scaling."
    )
if data.scaling:
    st.caption(
        plain_text(f"Scaling: {data.scaling}.")
        + " Classes and category levels come from the schema or the training rows only."
    )
st.caption(f"Default δ for {info['n_train']:,} training rows: {default_delta(info['n_train']):g}. {DELTA_WHY}")
st.bar_chart(pd.DataFrame({"examples": info["class_counts"]}, index=list(data.class_names)))


def _use(choice: dict) -> None:
    """Store the choice before the page reruns, so the caption at the top already names it."""
    st.session_state["dataset"] = choice


chosen = {"source": source, "target": target, "size": size, "schema": schema}
if st.button("Use this data set", type="primary", key="data-use", on_click=_use, args=(chosen,)):
    st.success(f"Training will use {plain_text(data.name)}.")
