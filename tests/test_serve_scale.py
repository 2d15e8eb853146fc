"""hardhost serve over 200 loopback sshd hosts for several intervals: every host attested
exactly once per interval (a run is an interval), by one worker on SQLite, and by two
workers sharing a real PostgreSQL through procrastinate, one of them killed with SIGKILL
halfway, after which the other attests every host from the next interval on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.postgres import postgres_server
from tests.support.serve import config_text, postgres_query, sqlite_query, wait_for
from tests.support.sshd import RunningSshd, start_sshd

pytestmark = pytest.mark.e2e

HOSTS = 200
# OpenSSH listens on at most 16 sockets per sshd (MAX_LISTEN_SOCKS).
PORTS_PER_SSHD = 16
INTERVAL = 20  # 200 hosts take about 12 s of this machine's two cores


@dataclass(frozen=True)
class Fleet:
    config: Path
    query: Callable[[str], list[tuple[Any, ...]]]


def start_hosts(tmp_path: Path, client_key: KeyPair, stack: ExitStack) -> dict[str, int]:
    """200 host names, each its own loopback port, served by a few sshds."""
    ports: dict[str, int] = {}
    known: list[str] = []
    for index in range(0, HOSTS, PORTS_PER_SSHD):
        extra = [free_port() for _ in range(min(PORTS_PER_SSHD, HOSTS - index) - 1)]
        server: RunningSshd = start_sshd(
            tmp_path / f"sshd{index}", client_key, extra_config="".join(
                f"ListenAddress 127.0.0.1:{p}\n" for p in extra)
            + "MaxStartups 400\nMaxSessions 100\n")
        stack.callback(server.stop)
        key = server.host.known_hosts.read_text().split(" ", 1)[1]
        for port in [server.host.port, *extra]:
            ports[f"h{len(ports):03d}"] = port
            known.append(f"[127.0.0.1]:{port} {key}")
    (tmp_path / "known_hosts").write_text("".join(known))
    return ports


def write_config(tmp_path: Path, ports: dict[str, int], keys: SigningKeys,
                 client_key: KeyPair, database: str) -> Path:
    (tmp_path / "hosts.ini").write_text(
        "".join(f"{n} ansible_host=127.0.0.1 ansible_port={p}\n" for n, p in ports.items())
        + "[all:vars]\nansible_user=root\n")
    write_signed(tmp_path, sample_manifest(), keys.key)
    config = tmp_path / "serve.toml"
    config.write_text(config_text(database, inventory="hosts.ini",
                                  manifest="manifest.dsse.json", trust_key=keys.public,
                                  known_hosts="known_hosts", identity=client_key.private,
                                  timeout=30, interval=INTERVAL, jitter=0.4, parallelism=12))
    return config


def worker(config: Path, stack: ExitStack) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "hardhost", "serve", str(config)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)

    def cleanup() -> None:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
        print(f"worker {process.pid}'s stderr:\n{stderr[-3000:]}")  # shown on a failure

    stack.callback(cleanup)
    return process


def complete_runs(fleet: Fleet, after: int, count: int) -> list[int]:
    """Wait until `count` runs after run `after` have all their attestations; return them.
    A run's attestations end within its interval (the jitter plus the checks)."""
    def done() -> bool:
        rows = fleet.query(f"SELECT id FROM runs WHERE id > {after} ORDER BY id")
        return len(rows) > count  # the run after them started, an interval after the last
    wait_for(f"{count} intervals after run {after}", done, timeout=INTERVAL * (count + 3))
    time.sleep(2)  # the last attestations of the last run, under way when the next began
    return [r[0] for r in fleet.query(f"SELECT id FROM runs WHERE id > {after} ORDER BY id")
            ][:count]


def assert_each_host_once(fleet: Fleet, runs: list[int]) -> None:
    for run in runs:
        rows = fleet.query(f"SELECT host, COUNT(*) FROM results WHERE run_id = {run} "
                           "GROUP BY host")
        counts = dict(rows)
        assert len(counts) == HOSTS, f"run {run}: {HOSTS - len(counts)} hosts missed"
        twice = {h: c for h, c in counts.items() if c != 1}
        assert not twice, f"run {run}: attested more than once: {twice}"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_one_worker_on_sqlite_attests_each_host_once_per_interval(
        tmp_path: Path, client_key: KeyPair, signing_keys: SigningKeys,
        stack: ExitStack) -> None:
    ports = start_hosts(tmp_path, client_key, stack)
    fleet = Fleet(write_config(tmp_path, ports, signing_keys, client_key, "service.db"),
                  sqlite_query(tmp_path / "service.db"))
    process = worker(fleet.config, stack)
    runs = complete_runs(fleet, 0, 3)
    assert_each_host_once(fleet, runs)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0


def test_two_workers_on_postgresql_share_the_fleet_and_survive_a_kill(
        tmp_path: Path, client_key: KeyPair, signing_keys: SigningKeys,
        stack: ExitStack) -> None:
    url = stack.enter_context(postgres_server(tmp_path / "postgres"))
    ports = start_hosts(tmp_path, client_key, stack)
    fleet = Fleet(write_config(tmp_path, ports, signing_keys, client_key, url),
                  postgres_query(url))
    first, second = worker(fleet.config, stack), worker(fleet.config, stack)
    # Counted once both workers beat and one interval has attested every host. The first
    # intervals are the workers' start-up (their inventory loads, their connections): on a
    # loaded machine the first attested 69 of the 200 hosts within its 20 s, and a host still
    # waiting from it when the next interval began was, rightly, not deferred twice (its
    # queueing lock).
    wait_for("both workers' heartbeats", lambda: fleet.query(
        "SELECT COUNT(*) FROM procrastinate_workers") == [(2,)], timeout=INTERVAL * 3)
    wait_for("an interval that attested every host", lambda: bool(fleet.query(
        "SELECT run_id FROM results GROUP BY run_id "
        f"HAVING COUNT(DISTINCT host) = {HOSTS}")), timeout=INTERVAL * 5)
    (under_way,) = fleet.query("SELECT MAX(id) FROM runs")[0]
    runs = complete_runs(fleet, under_way, 2)
    assert_each_host_once(fleet, runs)
    shared = fleet.query("SELECT COUNT(DISTINCT worker_id) FROM procrastinate_jobs WHERE "
                         "task_name = 'hardhost.attest' AND status = 'succeeded'")
    assert shared == [(2,)]  # both workers took hosts
    doing = "SELECT id FROM procrastinate_jobs WHERE status = 'doing'"
    wait_for("attestations under way", lambda: len(fleet.query(doing)) >= 4,
             timeout=INTERVAL * 2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    held = {row[0] for row in fleet.query(doing)}
    (killed_in,) = fleet.query("SELECT MAX(id) FROM runs")[0]
    # The interval after the one the kill cut short is the next lease: all of it is the
    # survivor's.
    runs = complete_runs(fleet, killed_in, 1)
    assert_each_host_once(fleet, runs)
    # What the killed worker held leaves 'doing' once its heartbeat is 30 s old: the
    # survivor marks it failed instead of leaving it there for good.
    wait_for("the killed worker's jobs to be failed", lambda: not held & {
        row[0] for row in fleet.query(doing)}, timeout=INTERVAL * 4)
    assert fleet.query("SELECT COUNT(*) FROM procrastinate_jobs WHERE status = 'failed'")[0][0]
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=90) == 0
    # `hardhost history` reads the workers' database as it reads a fleet run's.
    shown = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db", url, "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)) == len(ports)
