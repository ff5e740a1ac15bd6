"""Streamlit entry point: `streamlit run dashboard/app.py` (from any working directory)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # streamlit puts dashboard/ on the path, not the project root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

PAGES = ROOT / "pages"
st.set_page_config(page_title="dpsat-lab", layout="wide")
page = st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", default=True),
        st.Page(PAGES / "data.py", title="Data"),
        st.Page(PAGES / "train.py", title="Train & sweep"),
        st.Page(PAGES / "privacy_utility.py", title="Privacy–utility"),
        st.Page(PAGES / "sharpness.py", title="Sharpness"),
        st.Page(PAGES / "landscape.py", title="Landscape"),
        st.Page(PAGES / "runs.py", title="Runs"),
    ]
)
page.run()
