"""What the tests of hardhost serve share: a webhook receiver on loopback, a config for
FAKE image hosts, the service as a subprocess, and waits on its database."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.fake_image_host import RebootableHost, recorded_manifest
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import write_signed
from tests.support.net import free_port
from tests.support.paths import REPO

SECRET = b"a webhook secret of 32 bytes...."


@dataclass
class Receiver:
    """A webhook receiver on loopback, recording each POST; `up` is False while it refuses."""

    port: int
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@contextmanager
def receiver(port: int | None = None) -> Iterator[Receiver]:
    found = Receiver(port or free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            found.got.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", found.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def signed_by_secret(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Hub-Signature-256"], expected)


def config_text(database: str, *, inventory: str | Path, manifest: str | Path,
                trust_key: Path, known_hosts: str | Path, identity: Path, timeout: float,
                interval: float, jitter: float, parallelism: int, tables: str = "") -> str:
    """A service config (syslog off); `tables` is appended ([remediation], [http], ...)."""
    return f"""
database = "{database}"
[fleet]
inventory = "{inventory}"
manifest = "{manifest}"
trust_keys = ["{trust_key}"]
[ssh]
known_hosts = "{known_hosts}"
identity = "{identity}"
timeout = {timeout}
[schedule]
interval = {interval}
jitter = {jitter}
parallelism = {parallelism}
[alerts]
syslog = false
""" + tables


def sqlite_query(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    """Rows of a query on the service's SQLite file; none before its tables exist."""
    def query(sql: str) -> list[tuple[Any, ...]]:
        if not path.exists():
            return []
        with sqlite3.connect(path) as db:
            try:
                return db.execute(sql).fetchall()
            except sqlite3.OperationalError:
                return []
    return query


def postgres_query(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    """Rows of a query on the service's PostgreSQL; none before its tables exist."""
    def query(sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(url) as db:
            try:
                return db.execute(sql).fetchall()
            except psycopg.errors.UndefinedTable:
                return []
    return query


@dataclass(frozen=True)
class Setup:
    config: Path
    database: Path
    hosts: dict[str, RebootableHost]


def write_config(tmp_path: Path, hosts: dict[str, RebootableHost], keys: SigningKeys,
                 client_key: KeyPair, webhook_port: int, *, remediation: str,
                 extra: str = "") -> Setup:
    """The config of a service over `hosts` (inventory group `web`), attesting every 2 s;
    `extra` is appended (an [http] table, say)."""
    known = tmp_path / "known_hosts"
    known.write_text("".join(h.host.known_hosts.read_text() for h in hosts.values()))
    (tmp_path / "hosts.ini").write_text(
        "[web]\n" + "".join(f"{name} ansible_host=127.0.0.1 ansible_port={h.host.port}\n"
                            for name, h in hosts.items())
        + "[all:vars]\nansible_user=root\n")
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    write_signed(tmp_path, recorded_manifest(), keys.key)
    config = tmp_path / "serve.toml"
    config.write_text(config_text(
        "service.db", inventory="hosts.ini", manifest="manifest.dsse.json",
        trust_key=keys.public, known_hosts="known_hosts", identity=client_key.private,
        timeout=10, interval=2, jitter=0.2, parallelism=4,
        tables=f"[remediation]\n{remediation}\nreset_timeout = 30\n"
               f"[[alerts.webhook]]\nurl = \"http://127.0.0.1:{webhook_port}/hook\"\n"
               "secret_file = \"webhook.secret\"\ntimeout = 5\n" + extra))
    return Setup(config, tmp_path / "service.db", hosts)


@contextmanager
def serving(setup: Setup) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-m", "hardhost", "serve", str(setup.config)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        if process.stderr is not None and not process.stderr.closed:
            _, stderr = process.communicate()
            print(f"hardhost serve's stderr:\n{stderr[-3000:]}")  # shown when a test fails


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    return stderr


def rows(database: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(query, args).fetchall()


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout:g}s for {what}")


def states(database: Path) -> dict[str, str]:
    try:
        found = rows(database, "SELECT name, state FROM hosts") if database.exists() else []
    except sqlite3.OperationalError:  # the service has not made its tables yet
        return {}
    return {str(n): str(s) for n, s in found}
