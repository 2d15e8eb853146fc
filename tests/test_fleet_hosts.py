"""hardhost fleet over real OpenSSH: verdicts named by the inventory, one host's bad
variables costing only that host, and an interrupted run keeping what it checked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.verifier import history
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.paths import REPO
from tests.support.sshd import RunningSshd, start_sshd

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Pair:
    ports: list[int]
    known_hosts: Path
    manifest: Path


@pytest.fixture
def pair(tmp_path: Path, client_key: KeyPair, signing_keys: SigningKeys) -> Iterator[Pair]:
    running: list[RunningSshd] = []
    try:
        running = [start_sshd(tmp_path / f"sshd{i}", client_key) for i in range(2)]
        known = tmp_path / "known_hosts"
        known.write_text("".join(r.host.known_hosts.read_text() for r in running))
        manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
        yield Pair([r.host.port for r in running], known, manifest)
    finally:
        for server in running:
            server.stop()


def fleet(inventory: Path, pair: Pair, keys: SigningKeys, identity: Path, out: Path,
          *extra: str) -> list[str]:
    return [sys.executable, "-m", "hardhost", "fleet", str(inventory), "--manifest",
            str(pair.manifest), "--trust-key", str(keys.public), "--known-hosts",
            str(pair.known_hosts), "--identity", str(identity), "--history",
            str(out / "history.db"), "--json", str(out / "fleet.json"), "--junit",
            str(out / "fleet.xml"), *extra]


def test_verdicts_keep_inventory_names_and_bad_hosts_cost_one_verdict(
        tmp_path: Path, pair: Pair, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    live = pair.ports[0]
    inventory = tmp_path / "inventory.yml"
    # Three names behind one address and port; then hosts whose own variables are wrong.
    inventory.write_text(json.dumps({"all": {"hosts": {
        "web1": {"ansible_host": "127.0.0.1", "ansible_port": live},
        "web2": {"ansible_host": "127.0.0.1", "ansible_port": live},
        "db\x1bc\r": {"ansible_host": "127.0.0.1", "ansible_port": pair.ports[1]},
        "badport": {"ansible_host": "127.0.0.1", "ansible_port": "ssh"},
        "badhost": {"ansible_host": ["127.0.0.1"], "ansible_port": live},
        "badmanifest": {"ansible_host": "127.0.0.1", "ansible_port": live,
                        "hardhost_manifest": str(tmp_path / "typo.json")},
    }, "vars": {"ansible_user": "root"}}}))
    result = subprocess.run(fleet(inventory, pair, signing_keys, client_key.private, tmp_path,
                                  "--timeout", "20"),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    # Drift on the live ones (this machine is no hardhost image); 2 for the bad variables.
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads((tmp_path / "fleet.json").read_text())
    by_name = {h["host"]: h for h in data["hosts"]}
    assert set(by_name) == {"web1", "web2", "db\x1bc\r", "badport", "badhost",
                            "badmanifest"}
    for name in ("web1", "web2"):
        assert by_name[name]["status"] == "drift"
        assert by_name[name]["address"] == f"root@127.0.0.1:{live}"
    assert by_name["db\x1bc\r"]["address"] == f"root@127.0.0.1:{pair.ports[1]}"
    for name, text in (("badport", "ansible_port 'ssh' is not a TCP port"),
                       ("badhost", "ansible_host ['127.0.0.1'] is not a host address"),
                       ("badmanifest", f"{tmp_path / 'typo.json'}: manifest not found")):
        assert by_name[name]["status"] == "error"
        assert by_name[name]["exit_code"] == 2
        assert text in by_name[name]["error"]

    # The table names hosts by inventory name, escaped, with their addresses beside them.
    assert "\x1b" not in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert f"root@127.0.0.1:{live}" in lines["web1"] and "drift" in lines["web1"]
    assert "db\\x1bc\\x0d" in lines
    assert "error" in lines["badport"]

    suite = ET.parse(tmp_path / "fleet.xml").getroot()
    names = {case.get("name") for case in suite.findall("testcase")}
    assert {"web1", "web2", "db\\x1bc\\x0d", "badport"} <= names
    assert suite.get("errors") == "3" and suite.get("failures") == "3"

    rows = {r.host: r for r in history.summary(tmp_path / "history.db")}
    assert rows["web2"].address == f"root@127.0.0.1:{live}"
    assert rows["badhost"].last_status == "error"
    shown = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db",
                            str(tmp_path / "history.db"), "--host", "web2"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "web2" in shown.stdout and "web1" not in shown.stdout and "never" in shown.stdout


SILENT_TIMEOUT = 25  # seconds


def test_interrupted_run_writes_what_it_checked(tmp_path: Path, pair: Pair,
                                                signing_keys: SigningKeys,
                                                client_key: KeyPair,
                                                silent_server: int) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"live0 ansible_host=127.0.0.1 ansible_port={pair.ports[0]}\n"
        f"live1 ansible_host=127.0.0.1 ansible_port={pair.ports[1]}\n"
        f"silent ansible_host=127.0.0.1 ansible_port={silent_server}\n"
        "[all:vars]\nansible_user=root\n")
    # A shell starts a background job with SIGINT ignored, and a child inherits that (Python
    # then installs no handler): a handler here becomes the default again in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(fleet(inventory, pair, signing_keys, client_key.private,
                                         tmp_path, "--timeout", str(SILENT_TIMEOUT)),
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert process.stderr is not None
    seen = []
    launched = time.monotonic()
    deadline = launched + 120
    # Progress lines come one per host here; the silent host holds the third until its
    # timeout, which must outlast the two live hosts' answers even on a loaded machine (15 s
    # was not, once).
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(f"{time.monotonic() - launched:.1f}s {line}")
        if line.startswith("[2/3]") or not line:
            break
    assert " [2/3]" in seen[-1], seen
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=SILENT_TIMEOUT + 30)
    assert process.returncode == 130, (seen, stderr)
    assert time.monotonic() - started < SILENT_TIMEOUT + 5  # the silent host's timeout
    assert "interrupted after 2 of 3 hosts; their verdicts are written" in stderr
    assert "Traceback" not in stderr
    data = json.loads((tmp_path / "fleet.json").read_text())
    assert [h["host"] for h in data["hosts"]] == ["live0", "live1"]
    assert {h["status"] for h in data["hosts"]} == {"drift"}
    assert len(ET.parse(tmp_path / "fleet.xml").getroot().findall("testcase")) == 2
    assert {r.host for r in history.summary(tmp_path / "history.db")} == {"live0", "live1"}


def test_shards_check_every_host_once_between_them(tmp_path: Path, pair: Pair,
                                                   signing_keys: SigningKeys,
                                                   client_key: KeyPair) -> None:
    """Three jobs of `--shard K/3` over five names (two sshd behind them) check each host in
    exactly one job; a fourth shard of eight has no host and still writes its outputs."""
    inventory = tmp_path / "inventory.ini"
    names = ["e", "a", "d", "b", "c"]  # the inventory's order is not the shards' order
    inventory.write_text("".join(
        f"{name} ansible_host=127.0.0.1 ansible_port={pair.ports[i % 2]}\n"
        for i, name in enumerate(names)) + "[all:vars]\nansible_user=root\n")
    seen: list[list[str]] = []
    for index in (1, 2, 3):
        out = tmp_path / f"shard{index}"
        out.mkdir()
        result = subprocess.run(fleet(inventory, pair, signing_keys, client_key.private, out,
                                      "--shard", f"{index}/3"),
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr  # drift: this machine is no image
        assert f"Shard {index}/3:" in result.stderr
        seen.append(sorted(h["host"] for h in
                           json.loads((out / "fleet.json").read_text())["hosts"]))
    assert seen == [["a", "d"], ["b", "e"], ["c"]]
    empty = tmp_path / "shard8"
    empty.mkdir()
    result = subprocess.run(fleet(inventory, pair, signing_keys, client_key.private, empty,
                                  "--shard", "8/8"),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((empty / "fleet.json").read_text())["hosts"] == []
    assert ET.parse(empty / "fleet.xml").getroot().findall("testcase") == []


@pytest.mark.parametrize("shard", ["0/3", "4/3", "1/0", "1", "a/b", "1/3/4", "+1/3", " 1/3",
                                   "1/1000000"])
def test_a_bad_shard_is_refused_before_any_host(tmp_path: Path, pair: Pair,
                                                signing_keys: SigningKeys,
                                                client_key: KeyPair, shard: str) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"a ansible_host=127.0.0.1 ansible_port={pair.ports[0]}\n")
    result = subprocess.run(fleet(inventory, pair, signing_keys, client_key.private, tmp_path,
                                  "--shard", shard),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"hardhost: --shard {shard!r}:")
    assert not (tmp_path / "fleet.json").exists()
