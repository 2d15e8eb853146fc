"""The fleet's history: one row per host per run, kept across runs, in an SQLite file or in
PostgreSQL (the verifier service's database, which `hardhost fleet` and `history` share)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.errors import UsageError
from hardhost.core.outputs import check_output_file
from hardhost.verifier.database import Database, Transaction, is_postgres
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


def prepare(location: str | Path, *, create_folder: bool = False) -> None:
    """Check, before a fleet run starts, that the history at `location` can be written: an
    SQLite file that is absent or a database, in a folder that exists (made when
    `create_folder`, as for the default path), or a PostgreSQL URL that answers; and that
    the schema applies. Raises `UsageError` naming the file or the database."""
    if create_folder and not is_postgres(str(location)):
        try:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{Path(location).parent}: cannot make the history's folder: "
                             f"{exc.strerror}") from None
    with _open(location):
        pass


@contextmanager
def _open(location: str | Path, *, read_only: bool = False) -> Iterator[Database]:
    """The history at `location` (an SQLite path or a PostgreSQL URL, the service's database
    included) with the schema applied, or, `read_only`, as it is: an SQLite file is then
    never created. Every failure (not a database, locked, read-only, a folder, a refused
    login) is one `UsageError`."""
    location = str(location)
    if not is_postgres(location):
        if read_only:
            _require_database(Path(location))
        else:
            check_output_file(Path(location), what="history database")
    db = Database(location, pool_size=1, read_only=read_only, what="history database",
                  fix="--history/--db naming another file")
    try:
        if not read_only:
            db.apply(SCHEMA)
            _migrate(db)
        yield db
    finally:
        db.close()


def _migrate(db: Database) -> None:
    # Histories written before verdicts carried an address lack its column.
    if "address" not in db.columns("results"):
        with db.transaction() as tx:
            tx.execute("ALTER TABLE results ADD COLUMN address TEXT NOT NULL DEFAULT ''")


def record(location: str | Path, started: str, inventory: str,
           verdicts: Sequence[Verdict]) -> int:
    """Store one fleet run; return its id."""
    with _open(location) as db, db.transaction() as tx:
        (run_id,) = tx.execute("INSERT INTO runs (started, inventory) VALUES (?, ?) "
                               "RETURNING id", (started, inventory)).fetchone()
        _insert_results(tx, run_id, verdicts)
    return int(run_id)


def record_update(location: str | Path, started: str, label: str, host: str, outcome: str,
                  from_version: str, to_version: str, reason: str,
                  verdicts: Sequence[Verdict]) -> int:
    """Store one host's update: its outcome, and each attestation it made (the running
    image before, the new boot, the old image after a rollback) as results of one run."""
    with _open(location) as db, db.transaction() as tx:
        (run_id,) = tx.execute("INSERT INTO runs (started, inventory) VALUES (?, ?) "
                               "RETURNING id", (started, label)).fetchone()
        tx.execute("INSERT INTO updates (run_id, host, time, outcome, from_version, "
                   "to_version, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (run_id, host, started, outcome, from_version, to_version, reason))
        _insert_results(tx, run_id, verdicts)
    return int(run_id)


def record_results(location: str | Path, run_id: int, verdicts: Sequence[Verdict]) -> None:
    with _open(location) as db, db.transaction() as tx:
        _insert_results(tx, run_id, verdicts)


def _insert_results(tx: Transaction, run_id: int, verdicts: Sequence[Verdict]) -> None:
    if verdicts:
        tx.executemany(
            "INSERT INTO results (run_id, host, time, status, boot_id, manifest_digest, "
            "error, findings, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, v.host, v.time, v.status, v.boot_id, v.manifest_digest, v.error,
              findings_json(v), v.address) for v in verdicts])


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


def updates(location: str | Path, host: str | None = None) -> list[UpdateRecord]:
    """Recorded updates, oldest first. Reads, never creates (see `summary`)."""
    with _open(location, read_only=True) as db:
        if "updates" not in db.tables():
            return []
        with db.transaction() as tx:
            rows = tx.execute(
                "SELECT host, time, outcome, from_version, to_version, reason FROM updates "
                f"WHERE (CAST(? AS TEXT) IS NULL OR host = ?) ORDER BY time, {db.rowid}",
                (host, host)).fetchall()  # the one formatted part is a column name of ours
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


def summary(location: str | Path, host: str | None = None) -> list[HostHistory]:
    """Each host's last verdict and when it last passed. Reads, never creates: a missing
    file, or one that is not a regular file, is a `UsageError`."""
    with _open(location, read_only=True) as db:
        if "results" not in db.tables():
            return []
        address = "r.address" if "address" in db.columns("results") else "''"
        rowid = db.rowid
        with db.transaction() as tx:
            rows = tx.execute(
                f"""
            SELECT r.host, r.time, r.status,
                   COALESCE((SELECT MAX(p.time) FROM results p
                             WHERE p.host = r.host AND p.status = 'pass'), ''),
                   {address}
            FROM results r
            WHERE r.{rowid} = (SELECT q.{rowid} FROM results q WHERE q.host = r.host
                               ORDER BY q.time DESC, q.{rowid} DESC LIMIT 1)
              AND (CAST(? AS TEXT) IS NULL OR r.host = ?)
            ORDER BY r.host
            """, (host, host)).fetchall()  # the formatted parts are column names of ours
    return [HostHistory(*row) for row in rows]
