"""Streamlit entry point: `dpsat dashboard`, or `streamlit run dashboard/app.py` once the project is installed."""


def main() -> None:
    """Draw the chosen page (the job manager it asks for starts the fork server that jobs start from)."""
    from pathlib import Path

    import streamlit as st

    from dashboard.state import get_store, session_owner

    # pages/ sits beside dashboard/ both in the repository and in site-packages.
    pages = Path(__file__).resolve().parents[1] / "pages"
    st.set_page_config(page_title="dpsat-lab", layout="wide")
    page = st.navigation(
        [
            st.Page(pages / "overview.py", title="Overview", default=True),
            st.Page(pages / "data.py", title="Data"),
            st.Page(pages / "train.py", title="Train & sweep"),
            st.Page(pages / "privacy_utility.py", title="Privacy–utility"),
            st.Page(pages / "sharpness.py", title="Sharpness"),
            st.Page(pages / "landscape.py", title="Landscape"),
            st.Page(pages / "audit.py", title="Privacy audit"),
            st.Page(pages / "runs.py", title="Runs"),
        ]
    )
    st.sidebar.caption(f"Run store: `{get_store().path}` (`DPSAT_STORE` or `dpsat dashboard --store` changes it)")
    session_owner()  # fixed at the session's first run: the owner of every job it submits
    page.run()


# Streamlit runs this file as `__main__`. Every process the server starts (job processes, their sweep workers)
# imports it again as its own main module (`__mp_main__`: multiprocessing does that with the parent's `__main__`),
# where it must draw nothing, start nothing and import nothing: without this guard each of them imported Streamlit
# and drew the Overview in bare mode before its work.
if __name__ == "__main__":
    main()
