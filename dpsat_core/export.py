"""Exports: figures as PNG/SVG/PDF (plotly + kaleido + Chromium) or offline HTML, results as CSV/JSON.

One kaleido server is started per process on first use, so every image after
the first costs a fraction of a second. Without Chromium, images fail with one
message naming the fix; HTML, CSV and JSON need no browser.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
import warnings
from typing import Any, Mapping, Optional, Sequence

import plotly.graph_objects as go

from .caveats import randomness_note
from .errors import DpsatError
from .results import HessianSpectrum, RunRecord, strict_json

IMAGE_FORMATS = ("png", "svg", "pdf")
MIME = {
    "png": "image/png",
    "svg": "image/svg+xml",
    "pdf": "application/pdf",
    "html": "text/html",
    "csv": "text/csv",
    "json": "application/json",
}
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_server_lock = threading.Lock()
_server_started = False


class ExportError(DpsatError):
    """An export format cannot be produced here; the message says how to fix it."""


def find_chromium() -> Optional[str]:
    """The browser kaleido will use: `$BROWSER_PATH`, else the first Chromium/Chrome on PATH."""
    configured = os.environ.get("BROWSER_PATH")
    if configured:
        return configured if os.path.exists(configured) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _ensure_server() -> None:
    global _server_started
    if find_chromium() is None:
        raise ExportError(
            "PNG, SVG and PDF export need Chromium: install it (Debian: apt-get install chromium) "
            "or set BROWSER_PATH to a Chrome/Chromium binary. HTML, CSV and JSON work without it."
        )
    with _server_lock:
        if not _server_started:
            import kaleido

            kaleido.start_sync_server(silence_warnings=True)
            _server_started = True


def figure_image(fig: go.Figure, fmt: str, *, width: int = 1000, height: int = 560, scale: float = 2.0) -> bytes:
    """The figure as PNG, SVG or PDF bytes."""
    if fmt not in IMAGE_FORMATS:
        raise ExportError(f"unknown image format {fmt!r}: choose one of {', '.join(IMAGE_FORMATS)}")
    _ensure_server()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "kopts ignored when using a server"
        return fig.to_image(format=fmt, width=width, height=height, scale=scale if fmt == "png" else 1)


def figure_html(fig: go.Figure) -> bytes:
    """A self-contained HTML page: plotly.js embedded, so it opens offline."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    return figure_html(fig) if fmt == "html" else figure_image(fig, fmt)


def results_rows(
    records: Sequence[RunRecord], spectra: Optional[Mapping[str, HessianSpectrum]] = None
) -> list[dict[str, Any]]:
    """One row per run: identity, config (its `epsilon` is the target ε), ε spent, accuracy, λ_max, trace ± its
    standard error, seconds,
    and what its randomness means (`caveats.randomness_note`: seeded noise is for research, not for release)."""
    spectra = spectra or {}
    rows = []
    for r in records:
        s, spectrum = r.summary, spectra.get(r.run_id)
        rows.append(
            {
                "run_id": r.run_id,
                "status": r.status,
                **{f"config.{k}": v for k, v in r.config.to_dict().items() if k != "epsilon"},  # as target_epsilon
                "target_epsilon": r.target_epsilon,
                "epsilon_spent": r.epsilon_spent,
                "delta": s and s.delta,
                "noise_multiplier": s and s.noise_multiplier,
                "releases": s and s.releases,
                "privacy_note": r.privacy_note,
                "test_accuracy": r.test_accuracy,
                "lambda_max": spectrum.lambda_max if spectrum else None,
                "trace": spectrum.trace if spectrum else None,
                "trace_stderr": spectrum.trace_stderr if spectrum else None,  # Hutchinson's standard error
                "seconds": s and s.seconds,
                "randomness_note": randomness_note(r.config),
            }
        )
    return rows


def inert_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (a data-set path or target column starting with '=',
    '+', '-', '@', a tab or a carriage return, and more after it) prefixed with a single quote, as OWASP advises;
    numbers (-0.5 stays a number), a lone sign (a "-" placeholder is no formula) and other text as they are."""
    formula = isinstance(value, str) and len(value) > 1 and value.startswith(FORMULA_STARTS)
    return "'" + value if formula else value


def results_csv(records: Sequence[RunRecord], spectra: Optional[Mapping[str, HessianSpectrum]] = None) -> bytes:
    """`results_rows` as CSV, every text cell made inert for spreadsheets (`inert_cell`)."""
    rows = [{k: inert_cell(v) for k, v in row.items()} for row in results_rows(records, spectra)]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue().encode()


def results_json(records: Sequence[RunRecord], spectra: Optional[Mapping[str, HessianSpectrum]] = None) -> bytes:
    return json.dumps(strict_json(results_rows(records, spectra)), indent=1, allow_nan=False).encode()
