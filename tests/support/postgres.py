"""A throwaway PostgreSQL server: Debian's postgresql-15, initdb in a temporary folder as the
postgres user, listening on a unix socket only (no TCP port, nothing on the network)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                          text=True, timeout=120, check=True, stdin=subprocess.DEVNULL)


@contextmanager
def postgres_server(directory: Path) -> Iterator[str]:
    """A running server with a database `hardhost`; yields its URL."""
    if not (BIN / "initdb").exists() or os.geteuid() != 0:
        raise RuntimeError("PostgreSQL tests need root and postgresql-15 (make test has both)")
    user = pwd.getpwnam("postgres")
    directory.mkdir(parents=True, exist_ok=True)
    data, sockets = directory / "data", directory / "sockets"
    for folder in (data, sockets):
        folder.mkdir(mode=0o700)
        os.chown(folder, user.pw_uid, user.pw_gid)
    # The folders above the data folder must be searchable by postgres.
    for parent in [directory, *directory.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    _as_postgres([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8"])
    _as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"),
                  "-w", "-o", f"-c listen_addresses='' -k {sockets} -c fsync=off "
                  "-c max_connections=200", "start"])
    try:
        _as_postgres([str(BIN / "createdb"), "-h", str(sockets), "hardhost"])
        yield f"postgresql://postgres@/hardhost?host={sockets}"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D",
                        str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)
        shutil.rmtree(directory, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new, empty database `name` on the server at `url` (one made by `postgres_server`);
    returns its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')  # a test's own name, not data
    return url.replace("/hardhost?", f"/{name}?", 1)
