"""Uploaded data files: saved under a safe name, checked, and kept within a size and age budget.

Each file is saved as `<digest>/<safe name>` (the same bytes land in the same place): the path is unique, and
the file's own name is the one the user uploaded, so every message, data-set name, schema name and job label that
names the file says what the user called it.

A file that is not a readable CSV or NPZ is deleted at once. Uploads that no stored run was trained on
are deleted once older than `MAX_AGE_SECONDS`, then oldest first while the folder holds more than
`BUDGET_BYTES`. Files a run was trained on, or that a session has selected, are kept: analyses re-read them.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional

import pandas as pd

from dpsat_core.data import FILE_TYPES, SCHEMA_TYPES, load_schema, npz_arrays, read_csv
from dpsat_core.errors import DataError

BUDGET_BYTES = 1024**3  # all uploads together (one upload is at most the server's 50 MB)
MAX_AGE_SECONDS = 7 * 24 * 3600
MAX_NAME_CHARS = 80
PREVIEW_ROWS = 8


@dataclass(frozen=True)
class Upload:
    """A saved, readable upload: its path, and for a CSV its first rows (None for an NPZ)."""

    path: Path
    preview: Optional[pd.DataFrame]


def safe_name(name: str, types: tuple[str, ...] = FILE_TYPES) -> str:
    """The upload's name reduced to letters, digits, '.', '_' and '-' (at most `MAX_NAME_CHARS`), or a
    `DataError` for a name no browser sends (a NUL byte) or a type the loaders cannot read (`types`)."""
    if "\0" in name:
        raise DataError(f"the file name {name!r} contains a NUL byte: rename the file and upload it again")
    suffix = Path(name).suffix.lower()
    if suffix not in types:
        raise DataError(f"{name!r} is not a {' or '.join(types)} file: upload one of those")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name[: -len(suffix)])[: MAX_NAME_CHARS - len(suffix)]
    return stem + suffix


def _save(folder: Path, name: str, content: bytes) -> Path:
    """Write `content` as '<digest>/<name>' in `folder`: a unique path whose file keeps the uploaded name."""
    path = folder / hashlib.sha256(content).hexdigest()[:8] / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def receive_upload(folder: Path, name: str, content: bytes, *, keep: Collection[str] = ()) -> Upload:
    """Save `content` as '<digest>/<safe name>' in `folder`, prune the folder (never touching `keep`, the data
    sets in use), and check the file can be read: a CSV's header and first rows, an NPZ's arrays as declared.
    An unreadable file is deleted and its `DataError` raised."""
    path = _save(folder, safe_name(name), content)
    prune_uploads(folder, keep=[*keep, str(path)])
    try:
        return _checked(path)
    except DataError as exc:
        if path.resolve() not in _resolved(keep):
            _delete(path, folder)
        raise _as_uploaded(exc, path, name) from None


def _checked(path: Path) -> Upload:
    """A saved upload read back: a CSV's header and first rows, an NPZ's arrays as declared (`DataError` if not)."""
    preview = read_csv(path, rows=PREVIEW_ROWS) if path.suffix.lower() == ".csv" else None
    if preview is None:
        npz_arrays(path)
    return Upload(path, preview)


def stored_upload(folder: Path, path: str) -> Optional[Upload]:
    """An upload saved earlier in `folder` (`<digest>/<name>`), read back to show it again; None when it is no
    longer there (pruned), lies outside `folder`, or no longer reads."""
    stored = Path(path)
    if folder.resolve() not in stored.resolve().parents or not stored.is_file():
        return None
    try:
        return _checked(stored)
    except DataError:
        return None


def receive_schema(folder: Path, name: str, content: bytes, *, keep: Collection[str] = ()) -> Path:
    """Save a schema (JSON or TOML) like a data file and check it (`load_schema`); a bad one is deleted and its
    `DataError` raised."""
    path = _save(folder, safe_name(name, SCHEMA_TYPES), content)
    prune_uploads(folder, keep=[*keep, str(path)])
    try:
        load_schema(path)
    except DataError as exc:
        if path.resolve() not in _resolved(keep):
            _delete(path, folder)
        raise _as_uploaded(exc, path, name) from None
    return path


def _delete(path: Path, folder: Path) -> None:
    """Delete an upload and its digest folder once empty (files of the earlier flat layout sit in `folder`)."""
    path.unlink(missing_ok=True)
    if path.parent != folder and not any(path.parent.iterdir()):
        path.parent.rmdir()


def _as_uploaded(exc: DataError, path: Path, name: str) -> DataError:
    """The same error, naming the file as the user uploaded it, not its stored copy."""
    return DataError(str(exc).replace(str(path), name).replace(path.name, name))


def _resolved(paths: Collection[str]) -> set[Path]:
    return {Path(p).resolve() for p in paths}


def prune_uploads(
    folder: Path,
    *,
    keep: Collection[str] = (),
    budget_bytes: int = BUDGET_BYTES,
    max_age_seconds: float = MAX_AGE_SECONDS,
    now: Optional[float] = None,
) -> list[Path]:
    """Delete uploads not in `keep` (paths of data sets in use) that are older than `max_age_seconds`, then the oldest
    while the folder exceeds `budget_bytes`; returns what was deleted."""
    now = time.time() if now is None else now
    kept = _resolved(keep)
    saved = [*folder.glob("*"), *folder.glob("*/*")]  # '<digest>/<name>', and '<digest>-<name>' saved earlier
    files = sorted((p for p in saved if p.is_file()), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    deleted = []
    for path in files:
        stat = path.stat()
        if path.resolve() in kept or (now - stat.st_mtime <= max_age_seconds and total <= budget_bytes):
            continue
        _delete(path, folder)
        total -= stat.st_size
        deleted.append(path)
    return deleted
