"""Files, jobs, their events and checkpoints, in SQLite (WAL) under CHARLM_DATA_DIR.

Every process of the server opens the same database: front ends record uploads and jobs and read
them back; the scheduler (one, beside the control plane) moves jobs along. A change of a job's
status is one conditional UPDATE (`... WHERE status IN (...)`), so two processes never both move
the same job. Each thread keeps its own connection (sqlite3 connections are not shared between
threads); a write waits up to BUSY_TIMEOUT_S for another's to finish.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATABASE_FILE = "charlm.sqlite3"
BUSY_TIMEOUT_S = 10.0
TERMINAL = ("succeeded", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    characters INTEGER NOT NULL, alphabet TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    status TEXT NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL, plan TEXT NOT NULL,
    fine_tuned_model TEXT, step INTEGER NOT NULL DEFAULT 0, trained_tokens INTEGER,
    estimated_finish INTEGER, started_at INTEGER, finished_at INTEGER, error TEXT,
    requested TEXT, run_ref TEXT, events_offset INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    level TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    step INTEGER NOT NULL, metrics TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints (job_id, seq);
"""
JSON_COLUMNS = ("request", "plan", "error", "data", "metrics")


def now() -> int:
    return int(time.time())


class Store:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.path = data_dir / DATABASE_FILE
        self.local = threading.local()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.connection().executescript(SCHEMA)  # idempotent; executescript commits by itself

    def connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self.local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a process killed loses no committed write
            self.local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: BEGIN IMMEDIATE takes the write lock first, so it never fails halfway."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [decode(row) for row in self.connection().execute(sql, args).fetchall()]

    def one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = self.query(sql, *args)
        return rows[0] if rows else None

    # Files

    def add_file(self, record: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO files (id, filename, purpose, bytes, characters, alphabet, created_at) "
                       "VALUES (:id, :filename, :purpose, :bytes, :characters, :alphabet, :created_at)", record)

    def file(self, file_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM files WHERE id = ?", file_id)

    def files(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM files ORDER BY created_at DESC, id")

    def delete_file(self, file_id: str) -> list[str]:
        """Delete the file unless unfinished jobs use it; those jobs (none: it was deleted). One
        transaction, so that no job is created on a file being deleted."""
        with self.transaction() as db:
            users = [row[0] for row in db.execute(
                "SELECT id FROM jobs WHERE status IN ('queued', 'running', 'paused') AND "
                "(json_extract(request, '$.training_file') = ? OR json_extract(request, '$.validation_file') = ?)",
                (file_id, file_id))]
            if not users:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        return users

    # Jobs

    def add_job(self, job: dict[str, Any], max_waiting: int) -> str | None:
        """Insert a queued job; None, or why not: "full" (max_waiting jobs wait already), or "gone" (a
        file it names was deleted meanwhile)."""
        files = [job["request"][k] for k in ("training_file", "validation_file") if job["request"].get(k)]
        with self.transaction() as db:
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if waiting >= max_waiting:
                return "full"
            marks = ",".join("?" * len(files))
            if db.execute(f"SELECT COUNT(*) FROM files WHERE id IN ({marks})", files).fetchone()[0] < len(set(files)):
                return "gone"
            db.execute("INSERT INTO jobs (id, created_at, status, model, request, plan, fine_tuned_model) "
                       "VALUES (?, ?, 'queued', ?, ?, ?, NULL)",
                       (job["id"], job["created_at"], job["model"], json.dumps(job["request"]),
                        json.dumps(job["plan"])))
            self._add_event(db, job["id"], "info", "message", f"Created fine-tuning job {job['id']}")
        return None

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM jobs WHERE id = ?", job_id)

    def jobs(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; after: the jobs older than that one."""
        if after is None:
            return self.query("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", limit)
        return self.query("SELECT * FROM jobs WHERE seq < (SELECT seq FROM jobs WHERE id = ?) "
                          "ORDER BY seq DESC LIMIT ?", after, limit)

    def jobs_in(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        return self.query(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", *statuses)

    def move(self, job_id: str, from_statuses: tuple[str, ...], message: str | None = None,
             level: str = "info", **fields: Any) -> bool:
        """Set fields (status among them) if the job's status is one of from_statuses; with an event."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = [json.dumps(v) if name in JSON_COLUMNS and v is not None else v for name, v in fields.items()]
        marks = ",".join("?" * len(from_statuses))
        with self.transaction() as db:
            moved = db.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
                               (*values, job_id, *from_statuses)).rowcount > 0
            if moved and message:
                self._add_event(db, job_id, level, "message", message)
        return moved

    # Events and checkpoints

    def add_event(self, job_id: str, level: str, kind: str, message: str, data: Any = None) -> None:
        with self.transaction() as db:
            self._add_event(db, job_id, level, kind, message, data)

    def _add_event(self, db: sqlite3.Connection, job_id: str, level: str, kind: str, message: str,
                   data: Any = None) -> None:
        db.execute("INSERT INTO events (job_id, created_at, level, type, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                   (job_id, now(), level, kind, message, None if data is None else json.dumps(data)))

    def record_run(self, job_id: str, offset: int, events: list[tuple[str, str, str, Any]],
                   checkpoints: list[tuple[int, dict[str, Any]]], progress: dict[str, Any]) -> None:
        """What a run reported since `events_offset`, all in one transaction with the new offset, so that
        a restart neither loses nor repeats any of it."""
        with self.transaction() as db:
            for level, kind, message, data in events:
                self._add_event(db, job_id, level, kind, message, data)
            for step, metrics in checkpoints:
                db.execute("INSERT INTO checkpoints (job_id, created_at, step, metrics) VALUES (?, ?, ?, ?)",
                           (job_id, now(), step, json.dumps(metrics)))
            assignments = "".join(f", {name} = ?" for name in progress)
            db.execute(f"UPDATE jobs SET events_offset = ?{assignments} WHERE id = ?",
                       (offset, *progress.values(), job_id))

    def events(self, job_id: str, after: int, limit: int, newest_first: bool) -> list[dict[str, Any]]:
        if newest_first:
            return self.query("SELECT * FROM events WHERE job_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                              job_id, after or 2**62, limit)
        return self.query("SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                          job_id, after, limit)

    def checkpoints(self, job_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM checkpoints WHERE job_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                          job_id, after or 2**62, limit)


def decode(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for name in JSON_COLUMNS:
        if record.get(name) is not None:
            record[name] = json.loads(record[name])
    return record
