"""One SQLite database (WAL) per run directory; a row per (evaluation, metric).

Rows are keyed by ``(eval_key, metric)`` where ``eval_key`` digests the evaluation's full spec, so
writing the same evaluation twice replaces rather than duplicates, and all metrics of one
evaluation land in a single transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from radprobe.core.runtime import pid_alive

DB_NAME = "results.db"


@dataclass
class ResultRow:
    """Everything needed to reproduce and compare one metric of one evaluation."""

    eval_key: str
    run_id: str
    backbone: str
    weights_digest: str
    dataset: str
    manifest_digest: str
    split_digest: str
    protocol: str
    metric: str
    value: float
    seed: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str = ""
    n: int = 0
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    task: str = ""
    num_classes: int = 0
    resolution: int = 0
    hparams: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, Any] = field(default_factory=dict)
    params: int = 0
    trainable_params: int = 0
    wall_time_s: float = 0.0
    extract_time_s: float = 0.0
    imgs_per_s: float = 0.0
    peak_mem_mb: float = 0.0
    feature_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    job_key: str = ""
    created_at: str = ""


COLUMNS = [f.name for f in fields(ResultRow)]
_JSON_COLS = {"hparams", "selected", "feature_keys", "warnings", "env"}


def _sql_type(name: str) -> str:
    if name in _JSON_COLS:
        return "TEXT"
    t = ResultRow.__dataclass_fields__[name].type
    return {"int": "INTEGER", "float": "REAL", "str": "TEXT"}.get(
        str(t), "REAL" if "float" in str(t) else "TEXT"
    )


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (row_id INTEGER PRIMARY KEY AUTOINCREMENT, "
    + ", ".join(f"{c} {_sql_type(c)}" for c in COLUMNS)
    + ", UNIQUE(eval_key, metric))"
)
# Study jobs: their state lives beside the rows so that a job's rows and its "done" mark commit
# in one transaction — a run killed at any point never holds one without the other.
_JOBS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (job_key TEXT PRIMARY KEY, status TEXT NOT NULL, spec TEXT, "
    "error TEXT, attempts INTEGER DEFAULT 0, pid INTEGER, started_at TEXT, finished_at TEXT, "
    "wall_time_s REAL)"
)
JOB_STATES = ("pending", "running", "done", "failed")
# Columns added after the first release: older stores get them on open.
_JOB_COLUMNS_ADDED = {"host": "TEXT", "heartbeat": "REAL"}
# A running job whose owner has not beaten its heart for this long is taken over by another runner.
LEASE_S = 120.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class ResultStore:
    """Results database of one run directory."""

    def __init__(self, run_dir: str | Path, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if not create and not self.path.is_file():
            raise FileNotFoundError(self.path)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=60)
        self._wal()
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(_SCHEMA)
        self._con.execute(_JOBS_SCHEMA)
        self._add_job_columns()
        self._con.commit()

    def _add_job_columns(self) -> None:
        have = {r[1] for r in self._con.execute("PRAGMA table_info(jobs)")}
        for name, kind in _JOB_COLUMNS_ADDED.items():
            if name not in have:
                self._con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def _wal(self, wait_s: float = 60.0) -> None:
        # Switching a new database to WAL takes an exclusive lock and SQLite does not wait for it
        # (no busy handler), so processes opening one run directory together (torchrun ranks) retry.
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._con.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _insert(self, rows: Iterable[ResultRow]) -> int:
        now = _now()
        values = []
        for r in rows:
            d = asdict(r)
            d["created_at"] = d["created_at"] or now
            for c in _JSON_COLS:
                d[c] = json.dumps(d[c], sort_keys=True, default=str)
            values.append(tuple(d[c] for c in COLUMNS))
        self._con.executemany(
            f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            values,
        )
        return len(values)

    def write(self, rows: Iterable[ResultRow]) -> int:
        """Insert (or replace, by ``(eval_key, metric)``) rows in one transaction."""
        with self._con:
            return self._insert(rows)

    # -- study jobs -------------------------------------------------------------------------
    def add_jobs(self, jobs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Register jobs as pending; jobs already known keep their state."""
        with self._con:
            self._con.executemany(
                "INSERT OR IGNORE INTO jobs (job_key, status, spec) VALUES (?, 'pending', ?)",
                [(k, json.dumps(spec, sort_keys=True, default=str)) for k, spec in jobs],
            )

    def claim_job(self, job_key: str, pid: int, host: str, lease_s: float = LEASE_S) -> bool:
        """Take job ``job_key`` for the process ``pid`` on ``host``, unless it is done or another live
        process holds it: one atomic step, so concurrent runners of a study never run a job twice.
        A holder is dead when, on this host, its process is gone, or when its heartbeat is older
        than ``lease_s`` (other hosts)."""
        now = time.time()
        self._con.execute("BEGIN IMMEDIATE")  # read and write under one write lock
        try:
            row = self._con.execute(
                "SELECT status, pid, host, heartbeat FROM jobs WHERE job_key=?", (job_key,)
            ).fetchone()
            status, owner_pid, owner_host, beat = row if row else ("pending", None, None, None)
            fresh = beat is not None and now - beat < lease_s
            alive = pid_alive(owner_pid) and fresh if owner_host == host else fresh
            if status == "done" or (status == "running" and alive):
                self._con.execute("ROLLBACK")
                return False
            self._con.execute(
                "UPDATE jobs SET status='running', pid=?, host=?, heartbeat=?, started_at=?, "
                "attempts=attempts+1 WHERE job_key=?",
                (pid, host, now, _now(), job_key),
            )
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return True

    def beat(self, job_key: str, pid: int, host: str) -> None:
        """Renew the lease of a job this process holds."""
        with self._con:
            self._con.execute(
                "UPDATE jobs SET heartbeat=? WHERE job_key=? AND pid=? AND host=? AND status='running'",
                (time.time(), job_key, pid, host),
            )

    def start_job(self, job_key: str, pid: int) -> None:
        with self._con:
            self._con.execute(
                "UPDATE jobs SET status='running', pid=?, started_at=?, attempts=attempts+1 WHERE job_key=?",
                (pid, _now(), job_key),
            )

    def finish_job(
        self, job_key: str, rows: Iterable[ResultRow], wall_time_s: float, adopt_run_id: str | None = None
    ) -> int:
        """Write a job's rows and mark it done, atomically.

        ``adopt_run_id``: rows already written by that run (a protocol that writes its own rows) are
        tagged with ``job_key`` in the same transaction.
        """
        with self._con:
            n = self._insert(rows)
            if adopt_run_id is not None:
                n += self._con.execute(
                    "UPDATE results SET job_key=? WHERE run_id=?", (job_key, adopt_run_id)
                ).rowcount
            self._con.execute(
                "UPDATE jobs SET status='done', error=NULL, finished_at=?, wall_time_s=? WHERE job_key=?",
                (_now(), wall_time_s, job_key),
            )
        return n

    def fail_job(self, job_key: str, error: str) -> None:
        with self._con:
            self._con.execute(
                "UPDATE jobs SET status='failed', error=?, finished_at=? WHERE job_key=?",
                (error, _now(), job_key),
            )

    def merge(self, other: str | Path) -> int:
        """Take in the rows and job states of another run directory's store (a shard written on
        another machine), in one transaction: rows replace by ``(eval_key, metric)``; jobs take the
        shard's state, and attempts add up. Returns the number of rows taken."""
        db = Path(other) / DB_NAME
        if not db.is_file():
            raise FileNotFoundError(db)
        cols = ", ".join(COLUMNS)
        self._con.execute("ATTACH DATABASE ? AS shard", (str(db),))
        try:
            with self._con:
                n = self._con.execute(
                    f"INSERT OR REPLACE INTO results ({cols}) "
                    f"SELECT {cols} FROM shard.results ORDER BY row_id"
                ).rowcount
                self._con.execute(
                    "INSERT OR IGNORE INTO jobs (job_key, status, spec) "
                    "SELECT job_key, 'pending', spec FROM shard.jobs"
                )
                self._con.execute(
                    "UPDATE jobs SET status=s.status, error=s.error, attempts=jobs.attempts+s.attempts, "
                    "pid=s.pid, started_at=s.started_at, finished_at=s.finished_at, "
                    "wall_time_s=s.wall_time_s "
                    "FROM shard.jobs AS s WHERE jobs.job_key = s.job_key AND s.status IN ('done', 'failed')"
                )
        finally:
            self._con.execute("DETACH DATABASE shard")
        return n

    def jobs(self) -> list[dict[str, Any]]:
        """Every registered job with its state."""
        cur = self._con.execute(
            "SELECT job_key, status, spec, error, attempts, pid, started_at, finished_at, wall_time_s "
            "FROM jobs"
        )
        cols = [d[0] for d in cur.description]
        out = []
        for tup in cur:
            d = dict(zip(cols, tup, strict=True))
            d["spec"] = json.loads(d["spec"]) if d["spec"] else {}
            out.append(d)
        return out

    def has(self, eval_key: str) -> bool:
        """Whether any row of evaluation ``eval_key`` is stored."""
        cur = self._con.execute("SELECT 1 FROM results WHERE eval_key = ? LIMIT 1", (eval_key,))
        return cur.fetchone() is not None

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), optionally filtered by equality on columns."""
        for k in where:
            if k not in COLUMNS:
                raise KeyError(f"unknown column {k!r}")
        clause = " AND ".join(f"{k} = ?" for k in where)
        sql = f"SELECT {', '.join(COLUMNS)} FROM results" + (f" WHERE {clause}" if clause else "")
        sql += " ORDER BY row_id"
        out = []
        for tup in self._con.execute(sql, tuple(where.values())):
            d = dict(zip(COLUMNS, tup, strict=True))
            for c in _JSON_COLS:
                d[c] = json.loads(d[c]) if d[c] else None
            out.append(d)
        return out
