"""One SQLite database (WAL) per run directory; a row per (evaluation, metric).

Rows are keyed by ``(eval_key, metric)`` where ``eval_key`` digests the evaluation's full spec, so
writing the same evaluation twice replaces rather than duplicates, and all metrics of one
evaluation land in a single transaction.

The database file appears on the first write, complete (built beside it and linked into place), so a
command that fails before writing leaves no empty store behind, and a reader never finds a
half-made one. An existing file is checked when opened: one that is not a readable radprobe store
raises :class:`StoreError` naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from radprobe.core.runtime import pid_alive
from radprobe.errors import RadprobeError

DB_NAME = "results.db"


class StoreError(RadprobeError):
    """A run directory's results.db exists but is not a readable radprobe store."""


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
    """Results database of one run directory.

    ``create=False`` opens an existing store only (``FileNotFoundError`` otherwise). With ``create``
    the file is made on the first write; until then reads see an empty store.
    """

    def __init__(self, run_dir: str | Path, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self._create = create
        self._con: sqlite3.Connection | None = None
        if os.path.lexists(self.path):
            self._open()
        elif not create:
            raise FileNotFoundError(self.path)

    def _open(self) -> sqlite3.Connection:
        # A writer adopts an empty file: another process may be creating it the old way, in place.
        if not (self._create and self.path.is_file() and self.path.stat().st_size == 0):
            check_file(self.path)
        self._con = sqlite3.connect(self.path, timeout=60)
        self._wal()
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(_SCHEMA)
        self._con.execute(_JOBS_SCHEMA)
        self._add_job_columns()
        self._con.commit()
        return self._con

    def _reader(self) -> sqlite3.Connection | None:
        """The connection, or None while no store exists yet (reads then see no rows)."""
        if self._con is None and os.path.lexists(self.path):
            self._open()
        return self._con

    def _writer(self) -> sqlite3.Connection:
        """The connection, creating the database first if it does not exist yet."""
        con = self._reader()
        if con is None:
            _create(self.path)
            con = self._open()
        return con

    def _add_job_columns(self) -> None:
        assert self._con is not None
        _add_job_columns(self._con)

    def _wal(self, wait_s: float = 60.0) -> None:
        assert self._con is not None
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
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _insert(self, con: sqlite3.Connection, rows: Iterable[ResultRow]) -> int:
        now = _now()
        values = []
        for r in rows:
            d = asdict(r)
            d["created_at"] = d["created_at"] or now
            for c in _JSON_COLS:
                d[c] = json.dumps(d[c], sort_keys=True, default=str)
            values.append(tuple(d[c] for c in COLUMNS))
        con.executemany(
            f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            values,
        )
        return len(values)

    def write(self, rows: Iterable[ResultRow]) -> int:
        """Insert (or replace, by ``(eval_key, metric)``) rows in one transaction."""
        con = self._writer()
        with con:
            return self._insert(con, rows)

    # -- study jobs -------------------------------------------------------------------------
    def add_jobs(self, jobs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Register jobs as pending; jobs already known keep their state."""
        con = self._writer()
        with con:
            con.executemany(
                "INSERT OR IGNORE INTO jobs (job_key, status, spec) VALUES (?, 'pending', ?)",
                [(k, json.dumps(spec, sort_keys=True, default=str)) for k, spec in jobs],
            )

    def claim_job(self, job_key: str, pid: int, host: str, lease_s: float = LEASE_S) -> bool:
        """Take job ``job_key`` for the process ``pid`` on ``host``, unless it is done or another live
        process holds it: one atomic step, so concurrent runners of a study never run a job twice.
        A holder is dead when, on this host, its process is gone, or when its heartbeat is older
        than ``lease_s`` (other hosts)."""
        now = time.time()
        con = self._writer()
        con.execute("BEGIN IMMEDIATE")  # read and write under one write lock
        try:
            row = con.execute(
                "SELECT status, pid, host, heartbeat FROM jobs WHERE job_key=?", (job_key,)
            ).fetchone()
            status, owner_pid, owner_host, beat = row if row else ("pending", None, None, None)
            fresh = beat is not None and now - beat < lease_s
            alive = pid_alive(owner_pid) and fresh if owner_host == host else fresh
            if status == "done" or (status == "running" and alive):
                con.execute("ROLLBACK")
                return False
            con.execute(
                "UPDATE jobs SET status='running', pid=?, host=?, heartbeat=?, started_at=?, "
                "attempts=attempts+1 WHERE job_key=?",
                (pid, host, now, _now(), job_key),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return True

    def beat(self, job_key: str, pid: int, host: str) -> None:
        """Renew the lease of a job this process holds."""
        con = self._writer()
        with con:
            con.execute(
                "UPDATE jobs SET heartbeat=? WHERE job_key=? AND pid=? AND host=? AND status='running'",
                (time.time(), job_key, pid, host),
            )

    def finish_job(
        self, job_key: str, rows: Iterable[ResultRow], wall_time_s: float, adopt_run_id: str | None = None
    ) -> int:
        """Write a job's rows and mark it done, atomically.

        ``adopt_run_id``: rows already written by that run (a protocol that writes its own rows) are
        tagged with ``job_key`` in the same transaction.
        """
        con = self._writer()
        with con:
            n = self._insert(con, rows)
            if adopt_run_id is not None:
                n += con.execute(
                    "UPDATE results SET job_key=? WHERE run_id=?", (job_key, adopt_run_id)
                ).rowcount
            con.execute(
                "UPDATE jobs SET status='done', error=NULL, finished_at=?, wall_time_s=? WHERE job_key=?",
                (_now(), wall_time_s, job_key),
            )
        return n

    def fail_job(self, job_key: str, error: str) -> None:
        con = self._writer()
        with con:
            con.execute(
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
        check_file(db)
        cols = ", ".join(COLUMNS)
        con = self._writer()
        con.execute("ATTACH DATABASE ? AS shard", (str(db),))
        try:
            with con:
                n = con.execute(
                    f"INSERT OR REPLACE INTO results ({cols}) "
                    f"SELECT {cols} FROM shard.results ORDER BY row_id"
                ).rowcount
                con.execute(
                    "INSERT OR IGNORE INTO jobs (job_key, status, spec) "
                    "SELECT job_key, 'pending', spec FROM shard.jobs"
                )
                con.execute(
                    "UPDATE jobs SET status=s.status, error=s.error, attempts=jobs.attempts+s.attempts, "
                    "pid=s.pid, started_at=s.started_at, finished_at=s.finished_at, "
                    "wall_time_s=s.wall_time_s "
                    "FROM shard.jobs AS s WHERE jobs.job_key = s.job_key AND s.status IN ('done', 'failed')"
                )
        finally:
            con.execute("DETACH DATABASE shard")
        return n

    def jobs(self) -> list[dict[str, Any]]:
        """Every registered job with its state."""
        con = self._reader()
        if con is None:
            return []
        cur = con.execute(
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
        con = self._reader()
        if con is None:
            return False
        cur = con.execute("SELECT 1 FROM results WHERE eval_key = ? LIMIT 1", (eval_key,))
        return cur.fetchone() is not None

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), optionally filtered by equality on columns."""
        for k in where:
            if k not in COLUMNS:
                raise KeyError(f"unknown column {k!r}")
        clause = " AND ".join(f"{k} = ?" for k in where)
        sql = f"SELECT {', '.join(COLUMNS)} FROM results" + (f" WHERE {clause}" if clause else "")
        sql += " ORDER BY row_id"
        con = self._reader()
        out: list[dict[str, Any]] = []
        for tup in con.execute(sql, tuple(where.values())) if con is not None else ():
            d = dict(zip(COLUMNS, tup, strict=True))
            for c in _JSON_COLS:
                d[c] = json.loads(d[c]) if d[c] else None
            out.append(d)
        return out


def check_run_dir(run_dir: str | Path) -> None:
    """Raise :class:`StoreError` when ``run_dir`` holds a results.db that is not a readable store
    (before a command writes anything there: an empty file counts as unreadable here)."""
    path = Path(run_dir) / DB_NAME
    if os.path.lexists(path):
        check_file(path)


def check_file(path: Path) -> None:
    """Raise :class:`StoreError` unless ``path`` is an intact SQLite database with radprobe's tables."""
    why = _unreadable(path)
    if why:
        raise StoreError(f"{path}: not a readable radprobe store ({why}); move it away or restore it")


def _unreadable(path: Path) -> str:
    """Why ``path`` cannot be read as a store, or "" when it can."""
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:  # to SQLite, an empty file is an empty database
        return "the file is empty"
    # Only SQLite opens the file: closing a descriptor of our own would drop the POSIX locks this
    # process's other connections hold on it, and let another process corrupt the database.
    try:
        con = sqlite3.connect(path, timeout=60)  # read-write: a WAL left by a crash is recovered
    except sqlite3.Error as e:
        return f"cannot open: {e}"
    try:
        problems = [str(r[0]) for r in con.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            return f"damaged: {'; '.join(problems)}"
        have = {r[1] for r in con.execute("PRAGMA table_info(results)")}
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise  # in use for longer than the timeout, not damaged
        return f"damaged: {e}"
    except sqlite3.DatabaseError as e:
        return "not an SQLite database" if "not a database" in str(e) else f"damaged: {e}"
    finally:
        con.close()
    if not have:
        return "no results table: another program's database?"
    missing = [c for c in COLUMNS if c not in have]
    if missing:
        return f"its results table lacks {', '.join(missing[:3])}: written by another version?"
    return ""


def _add_job_columns(con: sqlite3.Connection) -> None:
    have = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
    for name, kind in _JOB_COLUMNS_ADDED.items():
        if name not in have:
            try:
                con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):  # another process added it since we looked
                    raise


def _create(path: Path) -> None:
    """Make an empty store at ``path``, whole: built under a temporary name and hard-linked into place,
    so that processes creating one run directory's store together (torchrun ranks) all end up with
    the first one made, and none ever sees a half-made file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stay on the store; SQLite creates the file under the umask.
    tmp = str(path.parent / f".{DB_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
            con.execute(_SCHEMA)
            con.execute(_JOBS_SCHEMA)
            _add_job_columns(con)
            con.commit()
        finally:
            con.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:  # no hard links on this filesystem: a rename, unless one appeared meanwhile
            if not path.exists():
                os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
