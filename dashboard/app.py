"""Streamlit entry point: `dpsat dashboard`, or `streamlit run dashboard/app.py` once the project is installed."""

from pathlib import Path

import streamlit as st

from dashboard.state import get_store, session_owner

# pages/ sits beside dashboard/ both in the repository and in site-packages.
PAGES = Path(__file__).resolve().parents[1] / "pages"
st.set_page_config(page_title="dpsat-lab", layout="wide")
page = st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", default=True),
        st.Page(PAGES / "data.py", title="Data"),
        st.Page(PAGES / "train.py", title="Train & sweep"),
        st.Page(PAGES / "privacy_utility.py", title="Privacy–utility"),
        st.Page(PAGES / "sharpness.py", title="Sharpness"),
        st.Page(PAGES / "landscape.py", title="Landscape"),
        st.Page(PAGES / "audit.py", title="Privacy audit"),
        st.Page(PAGES / "runs.py", title="Runs"),
    ]
)
st.sidebar.caption(f"Run store: `{get_store().path}` (`DPSAT_STORE` or `dpsat dashboard --store` changes it)")
session_owner()  # fixed at the session's first run: the owner of every job it submits
page.run()
