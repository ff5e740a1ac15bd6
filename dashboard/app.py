"""Streamlit entry point: `streamlit run dashboard/app.py` (from any working directory)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # streamlit puts dashboard/ on the path, not the project root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="dpsat-lab", layout="wide")
page = st.navigation([st.Page(ROOT / "pages" / "overview.py", title="Overview", default=True)])
page.run()
