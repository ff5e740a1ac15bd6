"""Train & sweep: methods × ε grid × seeds, with the advanced settings; progress below."""

import streamlit as st

from dashboard.actions import start_sweep, sweep_target
from dashboard.state import current_dataset, shown_source
from dashboard.widgets import job_panel, plain_text, show_error
from dpsat_core import METHODS, DpsatError, SweepSpec, TrainConfig
from dpsat_core.caveats import DELTA_WHY, SEEDED_NOISE
from dpsat_core.config import ACCOUNTANTS, DEVICES, MAX_PREPROCESSING_SHARE, MAX_VALIDATION_FRACTION, parse_numbers
from dpsat_core.methods import rho_methods
from dpsat_core.results import counted

st.title("Train & sweep")
dataset = current_dataset()
st.caption(
    f"Data set: **{plain_text(shown_source(dataset['source']))}** (change it on the Data page). "
    "Runs already stored are reused. " + sweep_target()
)
defaults = TrainConfig()

st.markdown("**Methods**")
columns = st.columns(len(METHODS))
methods = [
    name
    for (name, info), col in zip(METHODS.items(), columns)
    if col.checkbox(info.label, value=info.private, key=f"train-method-{name}")
]
epsilons = st.text_input("Target ε values (comma-separated)", "1, 2, 4, 8", key="train-epsilons")
seeds = st.text_input("Seeds (comma-separated)", "0, 1", key="train-seeds")
epochs = st.number_input("Epochs", 1, 500, defaults.epochs, key="train-epochs")
secure = st.checkbox(
    "Release mode: noise and batch sampling from the OS entropy source",
    key="train-secure",
    help="For a model you will release: its noise and batches are never stored and no seed reproduces them, so "
    "runs of one setting differ. Off (research mode): seeded from the run's seed, reproducible and paired "
    f"across methods — {SEEDED_NOISE}. The model's initial weights stay seeded in both modes.",
)
with st.expander("Advanced settings"):
    a, b, c = st.columns(3)
    clip = a.number_input("Clipping norm C", 0.001, 100.0, defaults.clip_norm, key="train-clip")
    rhos = a.text_input(f"ρ values ({rho_methods()}; one cell each)", f"{defaults.rho:g}", key="train-rhos")
    lr = b.number_input("Learning rate", 0.0001, 100.0, defaults.lr, format="%.4f", key="train-lr")
    batch = b.number_input("Expected batch size", 1, 100_000, defaults.batch_size, key="train-batch")
    momentum = c.number_input("Momentum", 0.0, 0.99, defaults.momentum, key="train-momentum")
    accountant = c.selectbox("Accountant", ACCOUNTANTS, key="train-accountant")
    device = c.selectbox("Device", DEVICES, key="train-device")
    validation = a.number_input(
        "Validation fraction",
        0.0,
        MAX_VALIDATION_FRACTION,
        defaults.validation_fraction,
        step=0.05,
        key="train-validation",
        help="Share of the non-test rows held out (by the split seed) to choose ρ, lr or C on. "
        "Verdicts use test accuracy, which plays no part in that choice.",
    )
    share = b.number_input(
        "ε share for scaling statistics",
        0.01,
        MAX_PREPROCESSING_SHARE,
        defaults.preprocessing_share,
        step=0.01,
        key="train-share",
        help="Only for a table whose numeric columns have no public bounds (see the Data page): the share of each "
        "private run's ε its released scaling statistics take on their own, composed with training.",
    )
    st.caption(f"δ: the largest power of ten ≤ 1/(10n) for n training rows (the Data page shows it). {DELTA_WHY}")

if st.button("Start training", type="primary", key="train-start"):
    try:
        base = TrainConfig(
            dataset=dataset["source"],
            target=dataset["target"],
            schema=dataset.get("schema"),
            preprocessing_share=share,
            dataset_size=dataset["size"],
            epochs=int(epochs),
            clip_norm=clip,
            lr=lr,
            batch_size=int(batch),
            momentum=momentum,
            accountant=accountant,
            device=device,
            validation_fraction=validation,
            randomness="release" if secure else "research",
        )
        spec = SweepSpec(
            base=base,
            methods=tuple(methods),
            epsilons=parse_numbers(epsilons, name="ε values"),
            seeds=parse_numbers(seeds, name="seeds", kind=int),
            rhos=parse_numbers(rhos, name="ρ values"),
        )
        start_sweep(spec)
        st.success(
            f"Started {counted(len(spec.cells()), 'run')}. Progress is below; results appear on the other pages."
        )
    except DpsatError as exc:
        show_error(exc)
job_panel()
