"""Overview: accuracy vs ε, sharpness vs ε and 1D slices side by side, with a plain-words verdict."""

import streamlit as st

# The title first: Streamlit sends it to the browser while the imports below (pandas, plotly, the library) and the
# store read run, so a cold server shows the page at once.
st.title("Do flat minima help under differential privacy?")

from functools import partial

from dashboard.actions import offer_analyses, report_file, start_default_comparison, start_probe
from dashboard.state import get_store
from dashboard.widgets import (
    chart,
    download,
    job_panel,
    methods_table,
    one_run_per_method,
    setting_picker,
)
from dpsat_core import analysed_cells, cached_analyses, figures, method_info, step_cost
from dpsat_core.caveats import PER_RUN
from dpsat_core.compare import (
    best_epsilon,
    comparisons_at,
    headline_comparisons,
    interval_scope,
    private_epsilons,
    setting_key,
    verdict,
)
from dpsat_core.export import find_chromium
from dpsat_core.sweeps import default_comparison

store = get_store()
runs = setting_picker(store.list_runs(status="done"), key="overview")
if not runs:
    st.markdown(
        "Train small models with differentially private methods at several privacy budgets ε and compare "
        "accuracy, sharpness (Hessian eigenvalues, loss landscapes) and cost, each method against its baseline:"
    )
    methods_table()
    spec = default_comparison()
    st.caption(
        f"Default comparison: {spec.base.dataset}, {', '.join(method_info(m).label for m in spec.methods)}, "
        f"ε = {', '.join(f'{e:g}' for e in spec.epsilons)}, seeds {', '.join(map(str, spec.seeds))}, "
        f"{spec.base.epochs} epochs."
    )
    if st.button("Run the default comparison", type="primary", key="overview-default"):
        start_default_comparison()
    job_panel()
    st.stop()

stats = analysed_cells(store, runs)
epsilons = private_epsilons(stats)
if len(epsilons) > 1:
    epsilon = st.select_slider(
        "ε for the slices and the verdict", epsilons, value=best_epsilon(stats), key="overview-eps"
    )
else:  # nothing to choose: say which ε the verdict and slices are at
    epsilon = epsilons[0] if epsilons else None
    if epsilon is not None:
        st.caption(f"Verdict and slices at ε = {epsilon:g}, the only budget trained so far.")

private = [c.method for c in stats if c.private]
cost = step_cost(store, runs[0].config, private, cached_only=True)
if epsilon is not None:
    headline = headline_comparisons(comparisons_at(stats, epsilon, cost=cost))
    for comparison in headline:
        st.markdown(f"- {verdict(comparison)}")
    st.caption(f"{interval_scope(headline)} {PER_RUN}.".strip())
if cost is None and private and st.button("Measure the step cost side by side (about a minute)", key="overview-probe"):
    start_probe(runs[0].config, private)

acc, sharp = st.columns(2)
chart(figures.accuracy_vs_epsilon(stats), key="overview-acc", where=acc)
with sharp:  # the scale-invariant measure: λ_max alone can move with a layer's scale (see Sharpness)
    if any(c.adaptive_mean is not None for c in stats):
        chart(figures.adaptive_vs_epsilon(stats), key="overview-adaptive")
    analysed = cached_analyses(store, [r.run_id for r in runs], "adaptive")
    missing = [r.run_id for r in runs if r.run_id not in analysed]
    offer_analyses({"adaptive": missing}, runs, label="Compute adaptive sharpness", key="overview-adaptive-go")
slices_col, report_col = st.columns(2)
with slices_col:
    chosen = one_run_per_method(runs, epsilon)
    stored = cached_analyses(store, [r.run_id for r in chosen], "slice")
    slices = {figures.run_label(r): (r.method, stored[r.run_id]) for r in chosen if r.run_id in stored}
    if slices:
        chart(figures.slices_overlay(slices, title=f"1D loss slices at ε={epsilon:g}"), key="overview-slices")
    missing_slices = [r.run_id for r in chosen if r.run_id not in stored]
    offer_analyses({"slice": missing_slices}, chosen, label="Compute 1D slices", key="overview-slices-go")
with report_col:
    st.markdown("**Pilot report** for managers: the question, the settings, the verdicts, the figures, the caveats.")
    setting = setting_key(runs[0])
    for fmt in ("html", "pdf") if find_chromium() else ("html",):
        build = partial(report_file, fmt, setting)
        download(st, f"Report ({fmt.upper()})", build, f"pilot_report.{fmt}", key=f"overview-report-{fmt}")
    if not find_chromium():
        st.caption("PDF needs Chromium (apt-get install chromium)")
job_panel()
