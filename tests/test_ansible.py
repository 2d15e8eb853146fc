"""The Ansible collection hardhost.host, run by real ansible-playbook and ansible-doc."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, KeyPair, RunningSshd, SigningKeys, start_sshd
from tests.test_signing import sample_manifest, write_signed

BIN = Path(sys.executable).parent
COLLECTIONS = REPO / "ansible"


def ansible(tool: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_LOCAL_TEMP": str(cwd / ".ansible-tmp")}
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("module", ["attest", "reset"])
def test_ansible_doc_shows_the_modules(module: str, tmp_path: Path) -> None:
    result = ansible("ansible-doc", f"hardhost.host.{module}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"hardhost.host.{module}" in result.stdout
    for option in ("manifest", "trust_key", "known_hosts", "timeout", "fail_on_drift"):
        assert option in result.stdout
    assert "RETURN VALUES" in result.stdout


@pytest.mark.parametrize("readme", [COLLECTIONS / "ansible_collections/hardhost/host/README.md",
                                    REPO / "README.md"])
def test_readme_playbook_is_valid_yaml(readme: Path) -> None:
    import yaml

    (block,) = re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.S)
    (play,) = yaml.safe_load(block)
    assert [next(k for k in t if k.startswith("hardhost.")) for t in play["tasks"]] == [
        "hardhost.host.attest", "hardhost.host.reset"]


@pytest.fixture
def hosts(tmp_path: Path, client_key: KeyPair) -> Iterator[list[RunningSshd]]:
    running = [start_sshd(tmp_path / f"h{i}", client_key) for i in range(3)]
    try:
        yield running
    finally:
        for server in running:
            server.stop()


def playbook(tmp_path: Path, hosts: list[RunningSshd], keys: SigningKeys, identity: Path,
             fail_on_drift: bool) -> subprocess.CompletedProcess[str]:
    known = tmp_path / "known_hosts"
    known.write_text("".join(h.host.known_hosts.read_text() for h in hosts))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[loopback]\n" + "".join(
        f"h{i} ansible_host=127.0.0.1 ansible_port={h.host.port} ansible_user=root "
        f"ansible_ssh_private_key_file={identity}\n" for i, h in enumerate(hosts)))
    manifest = write_signed(tmp_path, sample_manifest(), keys.key)
    play = tmp_path / "attest.yml"
    play.write_text(json.dumps([{
        "hosts": "loopback", "gather_facts": False,
        "tasks": [{"name": "Attest", "register": "verdict", "hardhost.host.attest": {
            "manifest": str(manifest), "trust_key": str(keys.public),
            "known_hosts": str(known), "timeout": 30, "fail_on_drift": fail_on_drift}},
            {"name": "Show", "debug": {"msg": "STATUS={{ verdict.status }}"}}],
    }]))
    return ansible("ansible-playbook", "-i", str(inventory), str(play), cwd=tmp_path)


def recap(output: str) -> dict[str, dict[str, int]]:
    rows = re.findall(r"^(h\d)\s+:\s+(.*)$", output, re.M)
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
            for host, counts in rows}


@pytest.mark.e2e
def test_one_failed_task_per_drifted_host(tmp_path: Path, hosts: list[RunningSshd],
                                          signing_keys: SigningKeys,
                                          client_key: KeyPair) -> None:
    result = playbook(tmp_path, hosts, signing_keys, client_key.private, fail_on_drift=True)
    assert result.returncode == 2, result.stdout + result.stderr
    summary = recap(result.stdout)
    assert set(summary) == {"h0", "h1", "h2"}
    assert all(s["failed"] == 1 and s["ok"] == 0 for s in summary.values()), summary
    assert len(re.findall(r"^fatal: \[h\d\]", result.stdout, re.M)) == 3
    assert "drift from its manifest" in result.stdout


@pytest.mark.e2e
def test_drift_can_be_recorded_without_failing(tmp_path: Path, hosts: list[RunningSshd],
                                               signing_keys: SigningKeys,
                                               client_key: KeyPair) -> None:
    result = playbook(tmp_path, hosts, signing_keys, client_key.private, fail_on_drift=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(s["failed"] == 0 and s["ok"] == 2 for s in recap(result.stdout).values())
    assert result.stdout.count("STATUS=drift") == 3
