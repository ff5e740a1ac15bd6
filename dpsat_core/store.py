"""The run store: one SQLite file (WAL) holding configs, status, per-epoch metrics, weights, analyses,
step-cost probes and accountant answers.

Each operation opens its own short connection, so threads (the dashboard's job
manager) and processes (sweep workers) can share one file safely.

A `running` row is a claim on its config hash: at most one per hash (a partial
unique index), kept alive by its trainer's heartbeat. A claim whose heartbeat is
older than the lease is interrupted (marked failed) whenever runs are read.
"""

from __future__ import annotations

import io
import json
import math
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
from .results import AuditResult, CostProbe, EpochMetrics, RunRecord, RunSummary

if TYPE_CHECKING:
    import torch

STORE_ENV = "DPSAT_STORE"
APP_NAME = "dpsat-lab"
STATUSES = ("running", "done", "failed", "cancelled")
LEASE_ENV = "DPSAT_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
INTERRUPTED = "interrupted"  # how the reason of a run whose trainer vanished begins
# An audit's result is kept beside its run in the analyses table (deleted with the run).
_AUDIT_KIND, _AUDIT_KEY = "audit", "one-run"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, config_hash TEXT NOT NULL, config TEXT NOT NULL,
    method TEXT NOT NULL, dataset TEXT NOT NULL, target_epsilon REAL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', summary TEXT NOT NULL DEFAULT '{}',
    weights BLOB, host TEXT, pid INTEGER, created REAL NOT NULL, updated REAL NOT NULL, heartbeat REAL
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


# One `running` row per config hash: the claim a trainer takes before training. Done rows are not in it: stores
# written before it may hold several, and `--no-reuse` keeps an older result beside the new one on purpose.
_CLAIM_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS runs_claim ON runs (config_hash) WHERE status='running'"


def default_lease_seconds() -> float:
    """`$DPSAT_LEASE_SECONDS`, else 60: how long a running run may go without a heartbeat before it counts as
    interrupted."""
    text = os.environ.get(LEASE_ENV)
    if not text:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise StoreError(f"{LEASE_ENV} must be a number of seconds > 0, got {text!r}")
    return value


class ClaimHeld(StoreError):
    """Another run holds the claim on this config hash (`status` 'running'), or finished it since the caller
    last looked ('done')."""

    def __init__(self, run_id: str, status: str):
        super().__init__(f"run {run_id} of the same settings is {status}")
        self.run_id, self.status = run_id, status


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an older version up to date: the heartbeat column, and the claim index once
    duplicate running rows (possible before it) are resolved: the newest stays, the others are interrupted."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
    if "heartbeat" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN heartbeat REAL")
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name='runs_claim'").fetchone() is not None:
        return
    db.execute(
        "UPDATE runs SET status='failed', reason=?, updated=? WHERE status='running' AND EXISTS (SELECT 1 FROM runs"
        " AS newer WHERE newer.config_hash=runs.config_hash AND newer.status='running' AND (newer.created,"
        " newer.run_id) > (runs.created, runs.run_id))",
        (f"{INTERRUPTED}: a newer run of the same settings held the claim when the store was upgraded", time.time()),
    )
    db.execute(_CLAIM_INDEX)


class RunStore:
    """A run store in one SQLite file; created (with its folder) on first use."""

    def __init__(self, path: Optional[str | os.PathLike] = None, *, lease_seconds: Optional[float] = None):
        self.path = Path(default_store_path() if path is None else path).expanduser()
        self.lease_seconds = default_lease_seconds() if lease_seconds is None else lease_seconds
        if not (math.isfinite(self.lease_seconds) and self.lease_seconds > 0):
            raise StoreError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            _migrate(db)

    @property
    def heartbeat_seconds(self) -> float:
        """How often a trainer renews its lease: a quarter of the lease (at most 5 s), so a few missed beats
        (a busy machine) never end a live run."""
        return min(5.0, self.lease_seconds / 4)

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
    def create_run(self, config: TrainConfig, *, unless_done_since: Optional[float] = None) -> str:
        """Claim `config`'s hash with a new `running` run and return its id, atomically: `ClaimHeld` when another
        live run holds the claim, or (given `unless_done_since`, a time.time()) when a run of this config
        finished since then, so the caller can reuse it instead of training it again."""
        self.reap_interrupted()
        run_id = uuid.uuid4().hex[:12]
        config_hash = config.config_hash()
        while True:
            now = time.time()
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")  # the done check and the insert see one state of the store
                if unless_done_since is not None:
                    row = db.execute(
                        "SELECT run_id FROM runs WHERE config_hash=? AND status='done' AND updated>=?"
                        " ORDER BY updated DESC LIMIT 1",
                        (config_hash, unless_done_since),
                    ).fetchone()
                    if row is not None:
                        raise ClaimHeld(row["run_id"], "done")
                try:
                    db.execute(
                        "INSERT INTO runs (run_id, config_hash, config, method, dataset, target_epsilon, seed, status,"
                        " host, pid, created, updated, heartbeat) VALUES (?,?,?,?,?,?,?,'running',?,?,?,?,?)",
                        (
                            run_id,
                            config_hash,
                            json.dumps(config.to_dict()),
                            config.method,
                            config.dataset,
                            config.epsilon,
                            config.seed,
                            socket.gethostname(),
                            os.getpid(),
                            now,
                            now,
                            now,
                        ),
                    )
                    return run_id
                except sqlite3.IntegrityError:
                    owner = db.execute(
                        "SELECT run_id FROM runs WHERE config_hash=? AND status='running'", (config_hash,)
                    ).fetchone()
                    if owner is not None:
                        raise ClaimHeld(owner["run_id"], "running") from None
            # (the claim ended between the insert and the look-up: try again)

    def heartbeat(self, run_id: str) -> bool:
        """Renew a running run's lease; False once it is no longer running (finished, or judged interrupted)."""
        with self._connect() as db:
            changed = db.execute(
                "UPDATE runs SET heartbeat=? WHERE run_id=? AND status='running'", (time.time(), run_id)
            ).rowcount
        return changed > 0

    def add_epoch(self, run_id: str, metrics: EpochMetrics) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) VALUES (?,?,?)",
                (run_id, metrics.epoch, json.dumps(metrics.to_dict())),
            )
            now = time.time()
            db.execute(
                "UPDATE runs SET updated=?, heartbeat=CASE WHEN status='running' THEN ? ELSE heartbeat END"
                " WHERE run_id=?",
                (now, now, run_id),
            )

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
        """Mark `running` runs whose lease expired (no heartbeat for `lease_seconds`: their trainer was killed,
        or its machine or container is gone) as failed, interrupted; return how many. Runs stored before leases
        existed count from their last update."""
        now = time.time()
        stale = "status='running' AND COALESCE(heartbeat, updated) < ?"
        with self._connect() as db:
            # a read first, so the usual case (nothing expired) takes no write lock
            if db.execute(f"SELECT 1 FROM runs WHERE {stale} LIMIT 1", (now - self.lease_seconds,)).fetchone() is None:
                return 0
            reason = (
                f"{INTERRUPTED}: its trainer stopped renewing its lease (no heartbeat for {self.lease_seconds:g} s)"
            )
            return db.execute(
                f"UPDATE runs SET status='failed', reason=?, updated=? WHERE {stale}",
                (reason, now, now - self.lease_seconds),
            ).rowcount

    def delete(self, run_id: str) -> None:
        """Delete a finished (or failed, or cancelled) run; a run still training is refused, since deleting
        its row under it would kill its trainer: cancel it first."""
        self.reap_interrupted()  # a run whose lease expired is no longer running
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
        self.reap_interrupted()
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
        self.reap_interrupted()
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

    # --- empirical privacy audits ----------------------------------------------------------------------
    def save_audit(self, result: AuditResult) -> None:
        self.save_analysis(result.run_id, _AUDIT_KIND, _AUDIT_KEY, result.to_dict())

    def audits(self) -> list[AuditResult]:
        """Every stored audit result, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT result FROM analyses WHERE kind=? AND key=? ORDER BY created", (_AUDIT_KIND, _AUDIT_KEY)
            ).fetchall()
        return [AuditResult.from_dict(json.loads(r["result"])) for r in rows]

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
        return self.find_accounting_many([question]).get(question)

    def find_accounting_many(self, questions: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored answers to these questions, by question (those without one left out), in one connection."""
        with self._connect() as db:
            rows = {q: db.execute("SELECT answer FROM accounting WHERE question=?", (q,)).fetchone() for q in questions}
        return {q: json.loads(row["answer"]) for q, row in rows.items() if row is not None}

    def save_accounting(self, question: str, answer: dict[str, Any]) -> None:
        """Keep an accountant's answer (a pure function of the question, so a second writer writes the same)."""
        self.save_accounting_many({question: answer})

    def save_accounting_many(self, answers: dict[str, dict[str, Any]]) -> None:
        """Keep many answers in one transaction: one disk sync, not one per answer (a 400-epoch run's per-epoch
        ε took ~7 s written one by one)."""
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO accounting (question, answer, created) VALUES (?,?,?)",
                [(question, json.dumps(answer), now) for question, answer in answers.items()],
            )
