"""Sharpness: Hessian top-k and trace per method and ε, adaptive λ_max, the eigenvalue density, noise robustness."""

import streamlit as st

from dashboard.actions import offer_analyses
from dashboard.state import get_store
from dashboard.widgets import (
    ANALYSED_ROWS,
    chart,
    comparable_runs_or_stop,
    job_panel,
    one_run_per_method,
    run_multiselect,
    training_data_caption,
)
from dpsat_core import cached_analyses, figures
from dpsat_core.analysis import ANALYSES
from dpsat_core.compare import best_epsilon, group_runs

st.title("Sharpness")
training_data_caption(f"Hessian spectra, adaptive sharpness and noise robustness use {ANALYSED_ROWS}")
store = get_store()
runs = comparable_runs_or_stop(store.list_runs(status="done"), key="sharp")
run_ids = [r.run_id for r in runs]
spectra = cached_analyses(store, run_ids, "hessian")
adaptive = cached_analyses(store, run_ids, "adaptive")
noise = cached_analyses(store, run_ids, "noise")
stored = {"hessian": spectra, "adaptive": adaptive, "noise": noise}
lacking = {kind: [i for i in run_ids if i not in done] for kind, done in stored.items()}
lacking = {kind: ids for kind, ids in lacking.items() if ids}
if lacking:
    st.caption(
        "Not computed yet: "
        + "; ".join(f"{ANALYSES[kind].label} for {len(ids)} of {len(runs)} runs" for kind, ids in lacking.items())
        + "."
    )
    names = ", ".join(ANALYSES[kind].label for kind in lacking)
    offer_analyses(lacking, runs, label=f"Compute {names}", key="sharp-go")
stats = group_runs(runs, spectra, adaptive)
if spectra:
    chart(figures.hessian_vs_epsilon(stats), key="sharp-vs-eps")
if adaptive:
    chart(figures.adaptive_vs_epsilon(stats), key="sharp-adaptive")
    st.caption(
        "Adaptive λ_max is λ_max measured in units of each weight's own size (Kwon et al. 2021): "
        "rescaling a layer that a normalisation undoes no longer changes it."
    )
middle = best_epsilon(stats)
analysed = [r for r in runs if r.run_id in spectra]
chosen = run_multiselect(analysed, key="sharp-runs", default=one_run_per_method(analysed, middle)) if analysed else []
if chosen:
    labelled = {figures.run_label(r): (r.method, spectra[r.run_id]) for r in chosen}
    left, right = st.columns(2)
    chart(figures.top_eigenvalues(labelled), key="sharp-top", where=left)
    chart(figures.eigenvalue_density(labelled), key="sharp-density", where=right)
    curves = {figures.run_label(r): (r.method, noise[r.run_id]) for r in chosen if r.run_id in noise}
    if curves:
        chart(figures.noise_robustness(curves), key="sharp-noise")
job_panel()
