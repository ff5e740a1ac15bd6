"""The run store: one SQLite file (WAL) holding configs, status, per-epoch metrics, weights, analyses,
step-cost probes and accountant answers.

Each operation opens its own short connection, so threads (the dashboard's job
manager) and processes (sweep workers) can share one file safely.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

from .config import TrainConfig
from .errors import StoreError
from .results import CostProbe, EpochMetrics, RunRecord, RunSummary

if TYPE_CHECKING:
    import torch

STORE_ENV = "DPSAT_STORE"
APP_NAME = "dpsat-lab"
STATUSES = ("running", "done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, config_hash TEXT NOT NULL, config TEXT NOT NULL,
    method TEXT NOT NULL, dataset TEXT NOT NULL, target_epsilon REAL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', summary TEXT NOT NULL DEFAULT '{}',
    weights BLOB, host TEXT, pid INTEGER, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs (config_hash, status);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS analyses (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE, kind TEXT NOT NULL, key TEXT NOT NULL,
    result TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (run_id, kind, key)
);
CREATE TABLE IF NOT EXISTS probes (
    setting TEXT NOT NULL, device TEXT NOT NULL, result TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (setting, device)
);
CREATE TABLE IF NOT EXISTS accounting (
    question TEXT PRIMARY KEY, answer TEXT NOT NULL, created REAL NOT NULL
);
"""


def default_store_path() -> str:
    """`$DPSAT_STORE`, else `runs.db` in the per-user data folder: one store for the CLI and the dashboard,
    wherever they are started."""
    configured = os.environ.get(STORE_ENV)
    if configured:
        return configured
    from platformdirs import user_data_path

    return str(user_data_path(APP_NAME, appauthor=False) / "runs.db")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """A run store in one SQLite file; created (with its folder) on first use."""

    def __init__(self, path: Optional[str | os.PathLike] = None):
        self.path = Path(default_store_path() if path is None else path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the run store {self.path}: {exc}") from None
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        try:
            with db:
                yield db
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the run store {self.path} cannot be used: {exc}") from None
        finally:
            db.close()

    # --- writing a run -------------------------------------------------------------------------
    def create_run(self, config: TrainConfig) -> str:
        """Record a new run as `running` and return its id."""
        self.reap_interrupted()
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (run_id, config_hash, config, method, dataset, target_epsilon, seed, status,"
                " host, pid, created, updated) VALUES (?,?,?,?,?,?,?,'running',?,?,?,?)",
                (
                    run_id,
                    config.config_hash(),
                    json.dumps(config.to_dict()),
                    config.method,
                    config.dataset,
                    config.epsilon,
                    config.seed,
                    socket.gethostname(),
                    os.getpid(),
                    now,
                    now,
                ),
            )
        return run_id

    def add_epoch(self, run_id: str, metrics: EpochMetrics) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) VALUES (?,?,?)",
                (run_id, metrics.epoch, json.dumps(metrics.to_dict())),
            )
            db.execute("UPDATE runs SET updated=? WHERE run_id=?", (time.time(), run_id))

    def finish(self, run_id: str, summary: RunSummary, weights: dict[str, torch.Tensor]) -> None:
        """Store the outcome: status, reason, summary and weights (kept for failed runs too, for diagnosis)."""
        buffer = io.BytesIO()
        import torch  # only where weights are written or read: listing runs needs no torch

        torch.save(weights, buffer)
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status=?, reason=?, summary=?, weights=?, updated=? WHERE run_id=?",
                (
                    summary.status,
                    summary.reason,
                    json.dumps(summary.to_dict()),
                    buffer.getvalue(),
                    time.time(),
                    run_id,
                ),
            )

    def fail(self, run_id: str, reason: str) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status='failed', reason=?, updated=? WHERE run_id=?", (reason, time.time(), run_id)
            )

    def reap_interrupted(self) -> int:
        """Mark `running` runs whose process on this host has ended as failed; return how many."""
        host = socket.gethostname()
        with self._connect() as db:
            rows = db.execute("SELECT run_id, pid FROM runs WHERE status='running' AND host=?", (host,)).fetchall()
            dead = [r["run_id"] for r in rows if r["pid"] is not None and not _pid_alive(r["pid"])]
            for run_id in dead:
                db.execute(
                    "UPDATE runs SET status='failed', reason='interrupted: its process ended', updated=?"
                    " WHERE run_id=?",
                    (time.time(), run_id),
                )
        return len(dead)

    def delete(self, run_id: str) -> None:
        """Delete a finished (or failed, or cancelled) run; a run still training is refused, since deleting
        its row under it would kill its trainer: cancel it first."""
        self.reap_interrupted()  # a run whose process died is no longer running
        with self._connect() as db:
            row = db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.path}")
            if row["status"] == "running":
                raise StoreError(f"run {run_id} is still training: cancel it first, then delete it")
            db.execute("DELETE FROM runs WHERE run_id=?", (run_id,))

    # --- reading -------------------------------------------------------------------------------
    def find_done(self, config_hash: str) -> Optional[str]:
        """The newest finished run with this config hash, if any."""
        with self._connect() as db:
            row = db.execute(
                "SELECT run_id FROM runs WHERE config_hash=? AND status='done' ORDER BY created DESC LIMIT 1",
                (config_hash,),
            ).fetchone()
        return None if row is None else row["run_id"]

    def _record(self, row: sqlite3.Row, epochs: Iterable[EpochMetrics]) -> RunRecord:
        summary = json.loads(row["summary"])
        return RunRecord(
            run_id=row["run_id"],
            config=TrainConfig.from_stored(json.loads(row["config"])),
            config_hash=row["config_hash"],
            status=row["status"],
            reason=row["reason"],
            summary=RunSummary.from_dict(summary) if summary else None,
            created=row["created"],
            updated=row["updated"],
            epochs=tuple(epochs),
        )

    def _epochs(self, db: sqlite3.Connection, run_id: str) -> list[EpochMetrics]:
        rows = db.execute("SELECT metrics FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
        return [EpochMetrics.from_dict(json.loads(r["metrics"])) for r in rows]

    def get(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.path}: list them with `dpsat runs --store {self.path}`")
            return self._record(row, self._epochs(db, run_id))

    def list_runs(
        self,
        *,
        status: Optional[str] = None,
        dataset: Optional[str] = None,
        method: Optional[str] = None,
        with_epochs: bool = False,
    ) -> list[RunRecord]:
        """Runs, oldest first, optionally filtered; `with_epochs` loads every run's per-epoch metrics (runs without
        a summary always get theirs)."""
        clauses, args = [], []
        for column, value in (("status", status), ("dataset", dataset), ("method", method)):
            if value is not None:
                clauses.append(f"{column}=?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT run_id, config_hash, config, status, reason, summary, created, updated"
                f" FROM runs {where} ORDER BY created",
                args,
            ).fetchall()
            # epochs of all listed runs when asked, else only of runs without a summary (their ε is the last epoch's)
            wanted = [r["run_id"] for r in rows if with_epochs or r["summary"] in ("", "{}")]
            epochs: dict[str, list[EpochMetrics]] = {r["run_id"]: [] for r in rows}
            if wanted:  # one query for all of them, not one per run
                for e in db.execute(
                    "SELECT run_id, metrics FROM epochs WHERE run_id IN (SELECT value FROM json_each(?))"
                    " ORDER BY run_id, epoch",
                    (json.dumps(wanted),),
                ):
                    epochs[e["run_id"]].append(EpochMetrics.from_dict(json.loads(e["metrics"])))
            return [self._record(r, epochs[r["run_id"]]) for r in rows]

    def load_weights(self, run_id: str) -> dict[str, torch.Tensor]:
        """The run's final weights, read with `weights_only=True` (no code runs on load)."""
        with self._connect() as db:
            row = db.execute("SELECT weights FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None or row["weights"] is None:
            raise StoreError(f"run {run_id!r} has no stored weights (missing, or still running)")
        import torch

        return torch.load(io.BytesIO(row["weights"]), weights_only=True, map_location="cpu")

    # --- analyses (Hessian, landscape) -----------------------------------------------------------
    def save_analysis(self, run_id: str, kind: str, key: str, result: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO analyses (run_id, kind, key, result, created) VALUES (?,?,?,?,?)",
                (run_id, kind, key, json.dumps(result), time.time()),
            )

    def get_analysis(self, run_id: str, kind: str, key: str) -> Optional[dict[str, Any]]:
        return self.get_analyses([run_id], kind, key).get(run_id)

    def get_analyses(self, run_ids: Iterable[str], kind: str, key: str) -> dict[str, dict[str, Any]]:
        """The stored results of one analysis (kind and settings key) for many runs, in one query."""
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        with self._connect() as db:
            rows = db.execute(
                "SELECT run_id, result FROM analyses WHERE kind=? AND key=? AND run_id IN"
                " (SELECT value FROM json_each(?))",
                (kind, key, json.dumps(ids)),
            ).fetchall()
        return {r["run_id"]: json.loads(r["result"]) for r in rows}

    # --- step-cost probes (one per setting and device) -----------------------------------------------
    def save_probe(self, probe: CostProbe) -> None:
        """Keep `probe` as the step cost of its setting on its device (replacing an older one)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO probes (setting, device, result, created) VALUES (?,?,?,?)",
                (probe.setting, probe.device, json.dumps(probe.to_dict()), probe.created),
            )

    def find_probe(self, setting: str, device: str) -> Optional[CostProbe]:
        """The stored step-cost probe of this setting on this device, if any."""
        with self._connect() as db:
            row = db.execute("SELECT result FROM probes WHERE setting=? AND device=?", (setting, device)).fetchone()
        return None if row is None else CostProbe.from_dict(json.loads(row["result"]))

    # --- accountant answers (ε and σ calibrations, shared by runs and processes) ------------------------
    def find_accounting(self, question: str) -> Optional[dict[str, Any]]:
        """The stored answer to one accountant question (`dpsat_core.accounting`'s key), if any."""
        with self._connect() as db:
            row = db.execute("SELECT answer FROM accounting WHERE question=?", (question,)).fetchone()
        return None if row is None else json.loads(row["answer"])

    def save_accounting(self, question: str, answer: dict[str, Any]) -> None:
        """Keep an accountant's answer (a pure function of the question, so a second writer writes the same)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO accounting (question, answer, created) VALUES (?,?,?)",
                (question, json.dumps(answer), time.time()),
            )
