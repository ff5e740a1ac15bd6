"""The Data page's upload side: a CSV/NPZ and its optional schema, saved, previewed and kept for the session, so
the page shows them again on return from another page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st

from dpsat_core.data import FILE_TYPES
from dpsat_core.errors import DpsatError
from dpsat_core.serve import SERVER_OPTIONS

from .state import forget_upload, keep_schema, keep_upload, kept_upload, reopen_upload, save_schema, save_upload
from .widgets import plain_text, show_error

MAX_UPLOAD_MB = SERVER_OPTIONS["server.maxUploadSize"]


def upload_picker(chosen_before: dict) -> tuple[str, Optional[str], Optional[str]]:
    """(source path, target column, schema path) of this session's upload, or the page stops with a pointer or
    one clear message; `chosen_before` (the selection for training) opens the target on its column."""
    target, schema = None, None
    # No `type=`: Streamlit would raise on a forged name (a NUL byte) before this page runs; `save_upload`
    # checks the name and the type and answers in one message.
    upload = st.file_uploader(
        f"CSV (with a header row) or NPZ with arrays x and y ({', '.join(FILE_TYPES)}), ≤ {MAX_UPLOAD_MB} MB",
        max_upload_size=MAX_UPLOAD_MB,
        key="data-upload",
    )
    if upload is not None:
        try:
            received = save_upload(upload.name, upload.getvalue())
        except DpsatError as exc:
            show_error(exc)
            st.stop()
        keep_upload(received.path)
    else:
        earlier = reopen_upload()
        if earlier is None:
            st.info("Upload a file to check and preview it. Nothing leaves this machine.")
            st.stop()
        received = earlier
        note, clear = st.columns([5, 1], vertical_alignment="center")  # the button on the caption's line
        note.caption(f"Your earlier upload: **{plain_text(received.path.name)}** (kept for this session).")
        clear.button("Clear", key="data-upload-clear", on_click=forget_upload)
    source = str(received.path)
    if received.preview is not None:
        st.dataframe(received.preview, hide_index=True)
        columns = [str(c) for c in received.preview.columns]
        same = chosen_before["source"] == source and chosen_before["target"] in columns
        opened = columns.index(chosen_before["target"]) if same else len(columns) - 1
        target = st.selectbox("Target (label) column", columns, index=opened, key="data-target")
    schema_upload = st.file_uploader(
        "Schema (optional, JSON or TOML): public column bounds, category levels and classes, so that scaling "
        "reads nothing private (format in the README)",
        key="data-schema",
    )
    if schema_upload is not None:
        try:
            schema = str(save_schema(schema_upload.name, schema_upload.getvalue()))
        except DpsatError as exc:
            show_error(exc)
            st.stop()
        keep_schema(schema)
    elif upload is None and (kept_upload() or {}).get("schema"):  # back on the page: the schema given with it
        schema = kept_upload()["schema"]
        st.caption(f"Schema from earlier: **{plain_text(Path(schema).name)}**.")
    return source, target, schema
