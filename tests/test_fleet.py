"""hardhost fleet over real OpenSSH: many sshd processes on loopback, dead ports, a silent
server, and a fake host whose output floods."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hardhost.image.signing import load_trusted_keys
from hardhost.verifier import fleet as fleet_mod
from hardhost.verifier import history
from hardhost.verifier.attestation import Connection
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.transport import Target
from hardhost.verifier.verdict import Finding, Severity, Verdict
from tests.support.advisories import FEED, write_sbom
from tests.support.fake_image_host import image_host, recorded_manifest
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.net import free_port, silent_tcp_server
from tests.support.paths import REPO
from tests.support.postgres import fresh_database, postgres_server
from tests.support.sshd import RunningSshd, start_sshd

pytestmark = pytest.mark.e2e

HOSTS = 50
TIMEOUT = 8


@dataclass(frozen=True)
class Fleet:
    inventory: Path
    known_hosts: Path
    manifest: Path
    live: list[int]
    dead: list[int]
    silent: int
    flood: int


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, client_key: KeyPair,
          signing_keys: SigningKeys) -> Iterator[Fleet]:
    """Fifty sshds and the faulty peers, shared by the module's tests (starting them is most
    of the module's time): every test only reads from them."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    running: list[RunningSshd] = []
    with silent_tcp_server() as silent_server:
        try:
            for index in range(HOSTS):
                running.append(start_sshd(tmp_path / f"host{index}", client_key))
            # FAKE host: a real sshd whose every session floods 100 MB instead of evidence.
            running.append(start_sshd(tmp_path / "flood", client_key,
                                      extra_config="ForceCommand head -c 100000000 /dev/zero\n"))
            known = tmp_path / "known_hosts"
            known.write_text("".join(r.host.known_hosts.read_text() for r in running))
            dead = [free_port(), free_port()]
            live = [r.host.port for r in running[:HOSTS]]
            flood = running[HOSTS].host.port
            lines = ["[live]"] + [f"live{i} ansible_host=127.0.0.1 ansible_port={p}"
                                  for i, p in enumerate(live)]
            lines += ["[broken]"] + [f"dead{i} ansible_host=127.0.0.1 ansible_port={p}"
                                     for i, p in enumerate(dead)]
            lines += [f"silent ansible_host=127.0.0.1 ansible_port={silent_server}",
                      f"flood ansible_host=127.0.0.1 ansible_port={flood}",
                      "[all:vars]", "ansible_user=root"]
            inventory = tmp_path / "inventory.ini"
            inventory.write_text("\n".join(lines) + "\n")
            manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
            yield Fleet(inventory, known, manifest, live, dead, silent_server, flood)
        finally:
            for server in running:
                server.stop()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty history: an SQLite file, or a database of its own on a real PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "history.db")
    return fresh_database(request.getfixturevalue("postgres"), f"t{time.monotonic_ns()}")


def run_fleet(fleet: Fleet, keys: SigningKeys, identity: Path, out: Path,
              *extra: str, history_db: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardhost", "fleet", str(fleet.inventory), "--manifest",
         str(fleet.manifest), "--trust-key", str(keys.public), "--known-hosts",
         str(fleet.known_hosts), "--identity", str(identity), "--timeout", str(TIMEOUT),
         "--forks", "50", "--history", history_db or str(out / "history.db"), "--json",
         str(out / "fleet.json"), "--junit", str(out / "fleet.xml"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_fleet_reports_every_host(fleet: Fleet, signing_keys: SigningKeys,
                                  client_key: KeyPair, tmp_path: Path) -> None:
    start = time.monotonic()
    result = run_fleet(fleet, signing_keys, client_key.private, tmp_path)
    elapsed = time.monotonic() - start
    assert result.returncode == 3, result.stderr  # unreachable hosts are the worst outcome
    data = json.loads((tmp_path / "fleet.json").read_text())
    by_port = {int(h["address"].rsplit(":", 1)[1]): h for h in data["hosts"]}
    assert len(by_port) == HOSTS + 4
    assert by_port[fleet.live[3]]["host"] == "live3"  # named by the inventory
    # This machine is no immutable host: every live sshd answers, and reports drift.
    assert {by_port[p]["status"] for p in fleet.live} == {"drift"}
    assert all(len(by_port[p]["boot_id"]) == 36 for p in fleet.live)
    for port in [*fleet.dead, fleet.silent]:
        assert by_port[port]["status"] == "error"
        assert by_port[port]["exit_code"] == 3
    flood = by_port[fleet.flood]
    assert flood["status"] == "drift"
    assert [f["id"] for f in flood["findings"]] == ["evidence.invalid"]
    assert "exceeds" in flood["findings"][0]["observed"]
    # The silent server and dead ports cost one timeout, not one per host in turn.
    assert elapsed < 60 + 4 * TIMEOUT, elapsed

    suite = ET.parse(tmp_path / "fleet.xml").getroot()
    assert suite.get("tests") == str(HOSTS + 4)
    assert suite.get("errors") == "3" and suite.get("failures") == str(HOSTS + 1)

    rows = history.summary(tmp_path / "history.db")
    assert len(rows) == HOSTS + 4 and {r.last_pass for r in rows} == {""}
    shown = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db",
                            str(tmp_path / "history.db"), "--host", "live0"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "drift" in shown.stdout and "never" in shown.stdout


def test_limit_selects_hosts_with_ansible_patterns(fleet: Fleet, signing_keys: SigningKeys,
                                                   client_key: KeyPair,
                                                   tmp_path: Path) -> None:
    result = run_fleet(fleet, signing_keys, client_key.private, tmp_path, "--limit",
                       "live0:live1")
    assert result.returncode == 1, result.stderr  # both reachable, both drift
    data = json.loads((tmp_path / "fleet.json").read_text())
    assert data["summary"] == {"hosts": 2, "drift": 2}


def test_shards_of_a_fleet_share_one_postgresql_history(
        fleet: Fleet, signing_keys: SigningKeys, client_key: KeyPair, tmp_path: Path,
        postgres: str) -> None:
    """Two slices of the fleet, as two jobs of an indexed job would run them, write to one
    PostgreSQL database; `history` reads every host from it, once."""
    url = fresh_database(postgres, "shards")
    names: list[set[str]] = []
    for shard in ("1/2", "2/2"):
        result = run_fleet(fleet, signing_keys, client_key.private, tmp_path, "--shard", shard,
                           history_db=url)
        assert result.returncode == 3, result.stderr
        names.append({h["host"] for h in json.loads((tmp_path / "fleet.json").read_text())
                      ["hosts"]})
    assert names[0] and names[1] and not names[0] & names[1]
    shown = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db", url, "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert sorted(r["host"] for r in rows) == sorted(names[0] | names[1])
    assert len(rows) == HOSTS + 4
    assert {r["last_status"] for r in rows if r["host"].startswith("live")} == {"drift"}


def test_history_keeps_runs(database: str) -> None:
    db = database
    history.record(db, "t1", "inv", [Verdict("a", "b1", "2026-01-01T00:00:00Z", "m")])
    history.record(db, "t2", "inv", [Verdict("a", "b2", "2026-01-02T00:00:00Z", "m",
                                             error="down", exit_code=3)])
    (row,) = history.summary(db)
    assert (row.host, row.last_status, row.last_pass) == ("a", "error",
                                                          "2026-01-01T00:00:00Z")


def test_the_fleet_reset_attests_again_before_it_reboots(client_key: KeyPair,
                                                        signing_keys: SigningKeys,
                                                        tmp_path: Path) -> None:
    """A host whose drift verdict is stale (it passes by the time its turn comes) goes
    through the one reset-then-attest and is not rebooted: on the FAKE image host, where
    nothing could reboot this machine anyway, the command log shows none was asked for."""
    manifest = write_signed(tmp_path, recorded_manifest(), signing_keys.key)
    manifests = fleet_mod.Manifests(manifest, load_trusted_keys(signing_keys.public))
    with image_host(tmp_path / "image", client_key) as image:
        host = FleetHost("vm", Target("root", "127.0.0.1", image.host.port), None, None)
        stale = Verdict("vm", "b", "t", "d", (Finding("sysctl.kernel.kptr_restrict",
                                                      Severity.HIGH, "2", "0"),),
                        address=host.address)
        drifted = fleet_mod.reset_drifted(
            [host], [stale], manifests,
            Connection(image.host.known_hosts, client_key.private), batch=1,
            reset_timeout=5)
        asked = image.commands()
    (verdict,) = drifted
    assert verdict.status == "pass" and verdict.host == "vm" and verdict.address == host.address
    assert len(verdict.boot_id) == 36
    assert len(asked) == 1 and asked[0].startswith("/bin/sh -s"), asked


def test_fleet_reports_each_passing_hosts_known_vulnerabilities(
        client_key: KeyPair, signing_keys: SigningKeys, tmp_path: Path) -> None:
    """Two FAKE image hosts pass and a third drifts. With a feed, each passing host is
    reported with the issues of the image it proved it runs, from the SBOM beside its
    manifest; the drifted host proves no image. A newer feed shows the hosts it exposes, and
    an SBOM that is not the one the manifest signs is never scanned."""
    image = tmp_path / "image"
    image.mkdir()
    sbom = write_sbom(image / "sbom.spdx.json")
    manifest = write_signed(image, dataclasses.replace(
        recorded_manifest(), sbom_digest=hashlib.sha256(sbom.read_bytes()).hexdigest()),
        signing_keys.key)
    older = tmp_path / "older-feed.json"
    older.write_text("{}")
    kptr = (b"/proc/sys/kernel/kptr_restrict:2", b"/proc/sys/kernel/kptr_restrict:0")
    with image_host(tmp_path / "a", client_key) as a, \
            image_host(tmp_path / "b", client_key) as b, \
            image_host(tmp_path / "c", client_key, drift=kptr) as c:
        hosts = {"a": a, "b": b, "c": c}
        inventory = tmp_path / "hosts.ini"
        inventory.write_text("".join(f"{n} ansible_host=127.0.0.1 ansible_port={h.host.port} "
                                     "ansible_user=root\n" for n, h in hosts.items()))
        known = tmp_path / "known_hosts"
        known.write_text("".join(h.host.known_hosts.read_text() for h in hosts.values()))

        def run(feed: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
            result = subprocess.run(
                [sys.executable, "-m", "hardhost", "fleet", str(inventory), "--manifest",
                 str(manifest), "--trust-key", str(signing_keys.public), "--known-hosts",
                 str(known), "--identity", str(client_key.private), "--history",
                 str(tmp_path / "history.db"), "--json", str(tmp_path / "fleet.json"),
                 "--feed", str(feed)], cwd=REPO, capture_output=True, text=True, timeout=300)
            data = json.loads((tmp_path / "fleet.json").read_text())
            return result, {h["host"]: h["advisories"] for h in data["hosts"]} | {
                "summary": data["summary"]}

        before, was = run(older)
        after, now = run(FEED)
        (image / "sbom.spdx.json").write_text(sbom.read_text().replace("3.0.15", "3.0.99"))
        tampered, then = run(FEED)
    assert before.returncode == after.returncode == 1, after.stderr  # c drifts
    assert was["a"]["proven"] and was["a"]["failing"] == [] and was["summary"]["exposed"] == 0
    assert set(now["a"]["failing"]) == set(now["b"]["failing"]) == {
        "CVE-2025-4802", "CVE-2025-32728", "CVE-2025-9230", "CVE-2024-13176"}
    assert now["a"]["counts"]["unfixed"] == 1 and now["summary"]["exposed"] == 2
    assert not now["c"]["proven"] and "not attested as passing (drift)" in now["c"]["reason"]
    table = after.stdout.split("Known vulnerabilities", 1)[1]
    assert re.search(r"^a  container-host  exposed  CVE-", table, re.M), table
    assert re.search(r"^c  -               unknown  not attested", table, re.M), table
    assert then["a"]["proven"] and then["a"]["counts"] == {}
    assert "not the SBOM the manifest signs" in then["a"]["reason"]
    assert then["summary"]["exposed"] == 0 and tampered.returncode == 1
