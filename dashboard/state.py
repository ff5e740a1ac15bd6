"""Shared server state: the run store and the job manager (one per server), and session keys.

Session-state keys used across pages:
- "dataset": {"source": str, "target": str | None, "size": int | None, "schema": str | None}, the data
  set the Data page chose, with its schema file if one was given (default: the built-in digits).
- "upload": {"path": str, "schema": str | None}, the file (and schema) last uploaded on the Data page, as stored
  (`dpsat_uploads/<digest>/<name>`): the page shows it again when the user comes back, until they clear it.
- "watched_jobs": ids of jobs this session saw running (to rerun when they finish).
- "session_owner": this session's id, the owner of the jobs it submits (a reload starts a new session).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Optional

import streamlit as st

from dpsat_core import RunStore
from dpsat_core.jobs import JobManager
from dpsat_core.store import default_store_path
from dpsat_core.workers import warm_up

if TYPE_CHECKING:  # uploads reads tables with pandas: imported on the first upload, not before a page's title
    from .uploads import Upload

DEFAULT_DATASET = {"source": "digits", "target": None, "size": None, "schema": None}
OPERATOR_ENV = "DPSAT_OPERATOR"


@st.cache_resource
def _store(path: str) -> RunStore:
    return RunStore(path)


def get_store() -> RunStore:
    """The run store of this server: `$DPSAT_STORE`, else the per-user one the CLI uses too."""
    return _store(default_store_path())


@st.cache_resource
def get_jobs() -> JobManager:
    """One job manager per server: jobs survive reruns, reloads and other tabs. Its jobs' processes start from a fork
    server started here, before the first click (`workers.warm_up`). When the server stops (Ctrl-C, SIGTERM), its
    jobs are cancelled (their runs stored as cancelled) before Python waits for its threads: else a server whose
    launcher ignored the signal would train on to the end after saying "Stopping..."."""
    warm_up()
    jobs = JobManager(max_workers=2)
    threading._register_atexit(jobs.shutdown)  # type: ignore[attr-defined]  # as concurrent.futures stops its pools
    return jobs


def session_owner() -> str:
    """This browser session's id: the jobs it submits are its own to cancel and clear."""
    return st.session_state.setdefault("session_owner", uuid.uuid4().hex[:12])


def is_operator() -> bool:
    """`$DPSAT_OPERATOR` set (`dpsat dashboard --operator`): every session may cancel and clear every job."""
    return os.environ.get(OPERATOR_ENV, "").strip().lower() in ("1", "true", "yes")


def may_touch(owner: str) -> bool:
    """Whether this session may cancel or clear a job of `owner`."""
    return is_operator() or owner == session_owner()


def uploads_dir() -> Path:
    """Where uploaded data files are kept, next to the store, so jobs can load them by path."""
    folder = get_store().path.parent / "dpsat_uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shown_source(source: str) -> str:
    """A data set as the user knows it: an upload by the name it was uploaded under (where this server keeps it
    is no concern of theirs), anything else as given."""
    path = Path(source)
    return path.name if uploads_dir() in path.parents else source


def save_upload(name: str, content: bytes) -> Upload:
    """Save and check an uploaded file in this server's uploads folder (`uploads.receive_upload`); the files
    stored runs were trained on, and this session's selected data set, are never pruned."""
    from .uploads import receive_upload

    return receive_upload(uploads_dir(), name, content, keep=_in_use())


def save_schema(name: str, content: bytes) -> Path:
    """Save and check an uploaded schema file beside the uploaded data (`uploads.receive_schema`)."""
    from .uploads import receive_schema

    return receive_schema(uploads_dir(), name, content, keep=_in_use())


def _in_use() -> set[str]:
    """Uploaded files that must not be pruned: those stored runs were trained with, and this session's choice and
    kept upload."""
    chosen, kept = current_dataset(), kept_upload() or {}
    runs = get_store().list_runs()
    return (
        {r.config.dataset for r in runs}
        | {r.config.schema for r in runs if r.config.schema}
        | {p for p in (chosen["source"], chosen.get("schema"), kept.get("path"), kept.get("schema")) if p}
    )


def kept_upload() -> Optional[dict]:
    """This session's last upload on the Data page ({"path", "schema"}), or None."""
    return st.session_state.get("upload")


def opens_on_upload(built_in: Collection[str]) -> bool:
    """Whether the Data page opens on its upload side: an upload is kept and the session has not selected one of
    the `built_in` data sets (the default counts as not selected)."""
    chose_built_in = "dataset" in st.session_state and current_dataset()["source"] in built_in
    return kept_upload() is not None and not chose_built_in


def keep_upload(path: Path) -> None:
    """Remember an upload the Data page received (a different file starts without the earlier one's schema)."""
    kept = kept_upload()
    if kept is None or kept["path"] != str(path):
        st.session_state["upload"] = {"path": str(path), "schema": None}


def keep_schema(path: Optional[str]) -> None:
    """Remember the schema given with the kept upload."""
    if kept_upload() is not None:
        st.session_state["upload"] = {**st.session_state["upload"], "schema": path}


def reopen_upload() -> Optional[Upload]:
    """The kept upload read back from the uploads folder, or None (none kept, or pruned since: then forgotten)."""
    from .uploads import stored_upload

    kept = kept_upload()
    found = None if kept is None else stored_upload(uploads_dir(), kept["path"])
    if found is None:
        st.session_state.pop("upload", None)
    return found


def forget_upload() -> None:
    """Clear the kept upload; a selection of it for training goes back to the default data set."""
    kept = st.session_state.pop("upload", None)
    if kept is not None and current_dataset()["source"] == kept["path"]:
        st.session_state["dataset"] = DEFAULT_DATASET


def current_dataset() -> dict:
    return st.session_state.get("dataset", DEFAULT_DATASET)
