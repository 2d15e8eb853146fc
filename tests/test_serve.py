"""hardhost serve over real OpenSSH: drift found within an interval, reset within the
budget, one signed webhook event per change, a receiver that was down served later, and
SIGTERM then a restart that resumes from the database. The hosts are FAKE image hosts whose
`systemctl reboot` restores their evidence (tests/support/fake_image_host.py); a real
reboot is tested on a booted image in tests/e2e."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.fake_image_host import RebootableHost, rebootable_host, recorded_manifest
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import write_signed
from tests.support.net import free_port
from tests.support.paths import REPO

pytestmark = pytest.mark.e2e

SECRET = b"a webhook secret of 32 bytes...."


@dataclass
class Receiver:
    """A webhook receiver on loopback, recording each POST; `up` is False while it refuses."""

    port: int
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def events(self) -> list[dict[str, object]]:
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


@dataclass(frozen=True)
class Setup:
    config: Path
    database: Path
    hosts: dict[str, RebootableHost]


def write_config(tmp_path: Path, hosts: dict[str, RebootableHost], keys: SigningKeys,
                 client_key: KeyPair, webhook_port: int, *, remediation: str) -> Setup:
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
    config.write_text(f"""
database = "service.db"
[fleet]
inventory = "hosts.ini"
manifest = "manifest.dsse.json"
trust_keys = ["{keys.public}"]
[ssh]
known_hosts = "known_hosts"
identity = "{client_key.private}"
timeout = 10
[schedule]
interval = 2
jitter = 0.2
parallelism = 4
[remediation]
{remediation}
reset_timeout = 30
[alerts]
syslog = false
[[alerts.webhook]]
url = "http://127.0.0.1:{webhook_port}/hook"
secret_file = "webhook.secret"
timeout = 5
""")
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


@pytest.fixture
def two_hosts(tmp_path: Path, client_key: KeyPair) -> Iterator[dict[str, RebootableHost]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(rebootable_host(tmp_path / name, client_key))
               for name in ("web1", "web2")}


def test_drift_is_reset_and_each_change_is_one_signed_event(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    with receiver() as hook:
        setup = write_config(tmp_path, two_hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = true\nmax_concurrent = 1\n"
                                         "max_per_hour = 5")
        with serving(setup) as process:
            wait_for("both hosts to pass",
                     lambda: states(setup.database) == {"web1": "pass", "web2": "pass"})
            first_boot = two_hosts["web1"].boot_id()
            drifted_at = time.monotonic()
            two_hosts["web1"].drift()
            wait_for("the drift event and the remediated event",
                     lambda: [e["event"] for e in hook.events()] == ["drift", "remediated"])
            found_and_fixed = time.monotonic() - drifted_at
            # A few more intervals: a host that stays as it is sends nothing more.
            time.sleep(5)
            stop(process)
    assert found_and_fixed < 2 * 2 + 30  # an interval (with jitter), the reset, an interval
    assert two_hosts["web1"].reboots() == 1 and two_hosts["web2"].reboots() == 0
    assert two_hosts["web1"].boot_id() != first_boot
    drift, remediated = hook.events()
    assert all(signed_by_secret(h, b) for h, b in hook.got)
    assert drift["host"] == "web1" and drift["previous"] == "pass"
    assert drift["findings"] == ["sysctl.kernel.kptr_restrict"]
    assert remediated["host"] == "web1" and remediated["previous"] == "drift"
    seconds = remediated["remediation_seconds"]
    assert isinstance(seconds, float) and 0 < seconds < 60
    assert rows(setup.database, "SELECT host, reset FROM remediations") == [("web1", 1)]
    assert rows(setup.database, "SELECT host, outcome FROM resets") == [("web1", "pass")]
    # Every verdict is in the history the history command reads.
    shown = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db",
                            str(setup.database), "--json"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert {h["host"] for h in json.loads(shown.stdout)} == {"web1", "web2"}


def test_an_event_waits_for_a_receiver_that_is_down_across_a_restart(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    port = free_port()  # nothing listens there yet
    setup = write_config(tmp_path, two_hosts, signing_keys, client_key, port,
                         remediation="enabled = false")
    with serving(setup) as process:
        wait_for("both hosts to pass",
                 lambda: states(setup.database) == {"web1": "pass", "web2": "pass"})
        two_hosts["web2"].drift()
        wait_for("web2 to drift", lambda: states(setup.database)["web2"] == "drift")
        wait_for("a failed delivery",
                 lambda: rows(setup.database,
                              "SELECT COUNT(*) FROM deliveries WHERE attempts > 0") == [(1,)])
        stop(process)
    # Stopped with the event undelivered; it is still owed after the restart.
    assert rows(setup.database, "SELECT state FROM deliveries") == [("pending",)]
    with receiver(port) as hook, serving(setup) as process:
        wait_for("the owed event", lambda: len(hook.got) >= 1, timeout=90)
        time.sleep(5)  # more intervals of drift: no new event
        stop(process)
    assert [(e["event"], e["host"]) for e in hook.events()] == [("drift", "web2")]
    assert signed_by_secret(*hook.got[0])
    assert two_hosts["web2"].reboots() == 0  # remediation is off
    # Resumed, not started over: web2 is still the drifted host it was, and the restart
    # announced nothing new.
    assert states(setup.database) == {"web1": "pass", "web2": "drift"}


def test_the_reset_budget_holds_when_several_hosts_drift_at_once(
        tmp_path: Path, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    with ExitStack() as stack:
        # Each reboot takes 3 s before the new boot answers, so resets would overlap.
        hosts = {name: stack.enter_context(rebootable_host(tmp_path / name, client_key,
                                                           delay=3))
                 for name in ("a", "b", "c")}
        hook = stack.enter_context(receiver())
        setup = write_config(tmp_path, hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = true\nmax_concurrent = 1\n"
                                         "max_per_hour = 2")
        process = stack.enter_context(serving(setup))
        wait_for("every host to pass",
                 lambda: set(states(setup.database).values()) == {"pass"})
        for host in hosts.values():
            host.drift()
        wait_for("two resets to finish", lambda: len(rows(
            setup.database, "SELECT id FROM resets WHERE finished IS NOT NULL")) == 2,
            timeout=120)
        time.sleep(6)  # three more intervals: the third host must not be reset
        stop(process)
    resets = rows(setup.database, "SELECT host, started, finished FROM resets ORDER BY id")
    assert len(resets) == 2  # max_per_hour
    (_, _, first_end), (_, second_start, _) = resets
    assert isinstance(first_end, float) and isinstance(second_start, float)
    assert second_start >= first_end  # max_concurrent = 1: never two at once
    assert sum(h.reboots() for h in hosts.values()) == 2
    final = states(setup.database)
    assert sorted(final.values()) == ["drift", "pass", "pass"]


def test_a_host_that_fails_trust_is_never_reset(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    with receiver() as hook:
        setup = write_config(tmp_path, two_hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = true")
        # web2's key in known_hosts is another host's: a changed host key.
        known = tmp_path / "known_hosts"
        lines = known.read_text().splitlines()
        web1_key = lines[0].split(" ", 1)[1]
        known.write_text(f"{lines[0]}\n[127.0.0.1]:{two_hosts['web2'].host.port} {web1_key}\n")
        with serving(setup) as process:
            wait_for("web2's trust failure",
                     lambda: states(setup.database).get("web2") == "trust")
            time.sleep(5)
            stop(process)
    assert two_hosts["web2"].reboots() == 0 and two_hosts["web2"].commands() == []
    assert [(e["event"], e["host"]) for e in hook.events()] == [("trust", "web2")]
    assert rows(setup.database, "SELECT COUNT(*) FROM resets") == [(0,)]


def test_serve_refuses_a_webhook_secret_others_can_read(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    setup = write_config(tmp_path, two_hosts, signing_keys, client_key, free_port(),
                         remediation="enabled = false")
    os.chmod(tmp_path / "webhook.secret", 0o644)
    result = subprocess.run([sys.executable, "-m", "hardhost", "serve", str(setup.config)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("chmod 600 " + str(tmp_path / "webhook.secret"))
    assert not setup.database.exists()  # nothing started
