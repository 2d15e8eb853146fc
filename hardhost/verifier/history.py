"""The fleet's SQLite history: one row per host per run, kept across runs."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.errors import UsageError
from hardhost.core.outputs import check_output_file
from hardhost.verifier.verdict import Verdict

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
    findings TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS results_host ON results(host, time);
CREATE TABLE IF NOT EXISTS updates (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    host TEXT NOT NULL,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL,
    from_version TEXT NOT NULL,
    to_version TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


def default_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "hardhost" / "history.db"


def prepare(path: Path, *, create_folder: bool = False) -> None:
    """Check, before a fleet run starts, that the history at `path` can be written: it is
    absent or an SQLite database, its folder exists (made when `create_folder`, as for the
    default path), and the schema applies. Raises `UsageError` naming the file."""
    if create_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{path.parent}: cannot make the history's folder: "
                             f"{exc.strerror}") from None
    check_output_file(path, what="history database")
    with _open(path):
        pass


@contextmanager
def _open(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """The database at `path` with the schema applied (or, `read_only`, as it is). Every
    SQLite failure (not a database, locked, read-only, a folder) is one `UsageError`."""
    target, uri = (path.resolve().as_uri() + "?mode=ro", True) if read_only else (str(path),
                                                                                  False)
    try:
        with closing(sqlite3.connect(target, timeout=30, uri=uri)) as db, db:
            if not read_only:
                db.executescript(SCHEMA)
                _migrate(db)
            yield db
    except sqlite3.Error as exc:
        raise UsageError(f"{path}: not a usable hardhost history database: {exc}. Fix with: "
                         "--history/--db naming another file") from None


def _migrate(db: sqlite3.Connection) -> None:
    # Histories written before verdicts carried an address lack its column.
    columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
    if "address" not in columns:
        db.execute("ALTER TABLE results ADD COLUMN address TEXT NOT NULL DEFAULT ''")


def record(path: Path, started: str, inventory: str, verdicts: Sequence[Verdict]) -> int:
    """Store one fleet run; return its id."""
    with _open(path) as db:
        run_id = db.execute("INSERT INTO runs (started, inventory) VALUES (?, ?)",
                            (started, inventory)).lastrowid
    assert run_id is not None
    record_results(path, run_id, verdicts)
    return run_id


def record_update(path: Path, started: str, label: str, host: str, outcome: str,
                  from_version: str, to_version: str, reason: str,
                  verdicts: Sequence[Verdict]) -> int:
    """Store one host's update: its outcome, and each attestation it made (the running
    image before, the new boot, the old image after a rollback) as results of one run."""
    with _open(path) as db:
        run_id = db.execute("INSERT INTO runs (started, inventory) VALUES (?, ?)",
                            (started, label)).lastrowid
        db.execute("INSERT INTO updates (run_id, host, time, outcome, from_version, "
                   "to_version, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (run_id, host, started, outcome, from_version, to_version, reason))
    assert run_id is not None
    record_results(path, run_id, verdicts)
    return run_id


def record_results(path: Path, run_id: int, verdicts: Sequence[Verdict]) -> None:
    with _open(path) as db:
        db.executemany(
            "INSERT INTO results (run_id, host, time, status, boot_id, manifest_digest, "
            "error, findings, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, v.host, v.time, v.status, v.boot_id, v.manifest_digest, v.error,
              findings_json(v),
              v.address)
             for v in verdicts])


def findings_json(verdict: Verdict) -> str:
    """The findings that count, as the `findings` column stores them."""
    return json.dumps([f.__dict__ for f in verdict.findings if f.counts()], default=str)


@dataclass(frozen=True)
class UpdateRecord:
    host: str
    time: str
    outcome: str
    from_version: str
    to_version: str
    reason: str


def updates(path: Path, host: str | None = None) -> list[UpdateRecord]:
    """Recorded updates, oldest first. Reads, never creates (see `summary`)."""
    _require_database(path)
    with _open(path, read_only=True) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "updates" not in tables:
            return []
        rows = db.execute("SELECT host, time, outcome, from_version, to_version, reason "
                          "FROM updates WHERE (? IS NULL OR host = ?) ORDER BY time, rowid",
                          (host, host)).fetchall()
    return [UpdateRecord(*row) for row in rows]


def _require_database(path: Path) -> None:
    """A missing file, or one that is not a regular file, is a `UsageError`."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: no history database here (hardhost fleet --history "
                         "writes one)") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the history database: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path}: the history database is not a regular file")


@dataclass(frozen=True)
class HostHistory:
    host: str
    last_time: str
    last_status: str
    last_pass: str  # "" when the host never passed
    address: str = ""


def summary(path: Path, host: str | None = None) -> list[HostHistory]:
    """Each host's last verdict and when it last passed. Reads, never creates: a missing
    file, or one that is not a regular file, is a `UsageError`."""
    _require_database(path)
    with _open(path, read_only=True) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
        address = "r.address" if "address" in columns else "''"
        rows = db.execute(
            f"""
            SELECT r.host, r.time, r.status,
                   COALESCE((SELECT MAX(p.time) FROM results p
                             WHERE p.host = r.host AND p.status = 'pass'), ''),
                   {address}
            FROM results r
            WHERE r.rowid = (SELECT q.rowid FROM results q WHERE q.host = r.host
                             ORDER BY q.time DESC, q.rowid DESC LIMIT 1)
              AND (? IS NULL OR r.host = ?)
            ORDER BY r.host
            """, (host, host)).fetchall()  # the one formatted part is a column name of ours
    return [HostHistory(*row) for row in rows]
