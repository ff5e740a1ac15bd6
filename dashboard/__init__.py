"""The Streamlit dashboard: entry point and UI pieces shared by the pages."""
