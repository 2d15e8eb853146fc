"""Where the verifier keeps its records: an SQLite file (the embedded default) or
a PostgreSQL database that several workers share, behind one small interface. The SQL is
written once, with `?` placeholders and types both accept; the few differences (the
placeholder, the row id, an exclusive transaction) are this module's alone."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

from hardhost.core.errors import UsageError

_POSTGRES_RE = re.compile(r"postgres(ql)?://[!-~]*")
# An arbitrary key of pg_advisory_xact_lock for the service's exclusive transactions.
_LOCK_KEY = 0x68617264


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction:
    """The statements of one transaction; `?` placeholders in every dialect."""

    def __init__(self, connection: Any, postgres: bool) -> None:
        self.connection, self.postgres = connection, postgres

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        if self.postgres:
            return self.connection.execute(sql.replace("?", "%s"), tuple(args))  # type: ignore[no-any-return]
        return self.connection.execute(sql, tuple(args))  # type: ignore[no-any-return]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self.connection.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])
        else:
            self.connection.executemany(sql, [tuple(r) for r in rows])


def is_postgres(location: str) -> bool:
    return bool(_POSTGRES_RE.fullmatch(location))


def shown(location: str) -> str:
    """`location` fit to print: a URL's password masked."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", location)


class Database:
    """The SQLite file or PostgreSQL URL at `location`."""

    def __init__(self, location: str, *, pool_size: int = 8, read_only: bool = False,
                 what: str = "service database",
                 fix: str = "database = naming another file") -> None:
        """`read_only`: an SQLite file is opened as it is, never created or changed. `what`
        and `fix` name the database and the way out in its errors."""
        self.location, self.read_only, self.what, self.fix = location, read_only, what, fix
        self.postgres = is_postgres(location)
        self.rowid = "id" if self.postgres else "rowid"
        self.pool: Any = None
        if self.postgres:
            from psycopg_pool import ConnectionPool

            self.pool = ConnectionPool(location, min_size=1, max_size=pool_size, open=False,
                                       timeout=30)
            try:
                self.pool.open(wait=True, timeout=30)
            except Exception as exc:  # psycopg's errors carry the server's reason
                self.pool.close()
                raise UsageError(f"{self.shown}: cannot connect to PostgreSQL: "
                                 f"{str(exc).splitlines()[0][:200]}") from None

    @property
    def shown(self) -> str:
        """The location without a password."""
        return shown(self.location)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def apply(self, schema: str) -> None:
        """Create what `schema` declares (written for SQLite) and is not there yet."""
        if self.postgres:
            schema = (schema.replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY")
                      .replace("PRAGMA journal_mode=WAL;", ""))
            schema += "ALTER TABLE results ADD COLUMN IF NOT EXISTS id BIGSERIAL;\n"
            with self.transaction(exclusive=True) as db:
                for statement in filter(str.strip, schema.split(";")):
                    db.execute(statement)
            return
        try:
            with closing(sqlite3.connect(self.location, timeout=30)) as db:
                db.executescript(schema)
        except sqlite3.Error as exc:
            raise UsageError(f"{self.location}: not a usable hardhost {self.what}: {exc}. "
                             f"Fix with: {self.fix}") from None

    def tables(self) -> set[str]:
        """The names of the tables there are."""
        sql = ("SELECT table_name FROM information_schema.tables "
               "WHERE table_schema = current_schema()" if self.postgres
               else "SELECT name FROM sqlite_master WHERE type = 'table'")
        with self.transaction() as db:
            return {row[0] for row in db.execute(sql).fetchall()}

    def columns(self, table: str) -> set[str]:
        """The column names of `table` (one of ours: it is not quoted)."""
        with self.transaction() as db:
            if self.postgres:
                rows = db.execute("SELECT column_name FROM information_schema.columns "
                                  "WHERE table_schema = current_schema() AND table_name = ?",
                                  (table,)).fetchall()
                return {row[0] for row in rows}
            return {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[Transaction]:
        """One transaction, committed at the end. `exclusive`: no other exclusive
        transaction runs beside it, in any worker, so what it reads cannot change before it
        writes (SQLite's write lock; PostgreSQL's advisory lock)."""
        if self.postgres:
            import psycopg

            try:
                with self.pool.connection() as connection, connection.transaction():
                    if exclusive:
                        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    yield Transaction(connection, True)
            except psycopg.Error as exc:
                raise UsageError(f"{self.shown}: the {self.what} failed: "
                                 f"{str(exc).splitlines()[0][:200]}") from None
            return
        target, uri = self.location, False
        if self.read_only:
            target, uri = Path(self.location).resolve().as_uri() + "?mode=ro", True
        try:
            with closing(sqlite3.connect(target, timeout=30, isolation_level=None,
                                         uri=uri)) as db:
                db.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
                try:
                    yield Transaction(db, False)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise UsageError(f"{self.location}: not a usable hardhost {self.what}: {exc}. "
                             f"Fix with: {self.fix}") from None
