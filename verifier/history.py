"""The fleet's SQLite history: one row per host per run, kept across runs."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from verifier.verdict import Verdict

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    inventory TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    host TEXT NOT NULL,
    time TEXT NOT NULL,
    status TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    error TEXT NOT NULL,
    findings TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_host ON results(host, time);
"""


def default_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "hardhost" / "history.db"


@contextmanager
def _open(path: Path) -> Iterator[sqlite3.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as db, db:
        db.executescript(SCHEMA)
        yield db


def record(path: Path, started: str, inventory: str, verdicts: Sequence[Verdict]) -> int:
    """Store one fleet run; return its id."""
    with _open(path) as db:
        run_id = db.execute("INSERT INTO runs (started, inventory) VALUES (?, ?)",
                            (started, inventory)).lastrowid
        db.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, v.host, v.time, v.status, v.boot_id, v.manifest_digest, v.error,
              json.dumps([f.__dict__ for f in v.findings if f.counts()], default=str))
             for v in verdicts])
    assert run_id is not None
    return run_id


@dataclass(frozen=True)
class HostHistory:
    host: str
    last_time: str
    last_status: str
    last_pass: str  # "" when the host never passed


def summary(path: Path, host: str | None = None) -> list[HostHistory]:
    """Each host's last verdict and when it last passed."""
    if not path.exists():
        return []
    with _open(path) as db:
        rows = db.execute(
            """
            SELECT r.host, r.time, r.status,
                   COALESCE((SELECT MAX(p.time) FROM results p
                             WHERE p.host = r.host AND p.status = 'pass'), '')
            FROM results r
            WHERE r.rowid = (SELECT q.rowid FROM results q WHERE q.host = r.host
                             ORDER BY q.time DESC, q.rowid DESC LIMIT 1)
              AND (? IS NULL OR r.host = ?)
            ORDER BY r.host
            """, (host, host)).fetchall()
    return [HostHistory(*row) for row in rows]
