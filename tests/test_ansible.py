"""The Ansible collection hardhost.host, run by real ansible-playbook and ansible-doc."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hardhost.image.manifest import MANIFEST_NAME, read_verified
from hardhost.image.signing import load_trusted_keys
from tests.support.ansible import BIN, COLLECTIONS, ansible
from tests.support.fake_image_host import ImageHost, image_host, recorded_manifest
from tests.support.images import fake_image, sign_into
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.sshd import RunningSshd, start_sshd


@pytest.mark.parametrize("module", ["attest", "reset"])
def test_ansible_doc_shows_the_modules(module: str, tmp_path: Path) -> None:
    result = ansible("ansible-doc", f"hardhost.host.{module}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"hardhost.host.{module}" in result.stdout
    for option in ("manifest", "trust_key", "known_hosts", "timeout", "fail_on_drift"):
        assert option in result.stdout
    assert "RETURN VALUES" in result.stdout


def test_ansible_doc_shows_the_update_module(tmp_path: Path) -> None:
    result = ansible("ansible-doc", "hardhost.host.update", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("image", "manifests", "trust_key", "known_hosts", "reboot_timeout",
                   "allow_downgrade", "fail_on_rollback", "RETURN VALUES"):
        assert option in result.stdout


@pytest.mark.e2e
def test_update_tasks_refuse_a_tampered_image_and_report_a_dead_host_unreachable(
        tmp_path: Path, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    good = updatable_image(tmp_path / "good", signing_keys)
    bad = updatable_image(tmp_path / "bad", signing_keys)
    (bad / "uki.efi").write_bytes(b"a UKI nobody signed")
    store = tmp_path / "store"
    store.mkdir()
    (store / "good.dsse.json").write_bytes((good / MANIFEST_NAME).read_bytes())
    known = tmp_path / "known_hosts"
    known.write_text("")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("".join(
        f"{name} ansible_host=127.0.0.1 ansible_port={free_port()} ansible_user=root "
        f"ansible_ssh_private_key_file={client_key.private} image={image}\n"
        for name, image in (("h0", good), ("h1", bad))))  # h0 has no sshd, h1 a changed UKI
    play = tmp_path / "update.yml"
    play.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": [
        {"hardhost.host.update": {"image": "{{ image }}", "manifests": str(store),
                                  "trust_key": str(signing_keys.public),
                                  "known_hosts": str(known), "timeout": 5}}]}]))
    result = ansible("ansible-playbook", "-i", str(inventory), str(play), cwd=tmp_path)
    output = result.stdout + result.stderr
    summary = recap(result.stdout)
    assert summary["h0"]["unreachable"] == 1, output
    assert summary["h1"]["failed"] == 1 and summary["h1"]["unreachable"] == 0, output
    assert "uki.efi" in result.stdout and "Traceback" not in output


@pytest.mark.parametrize("readme", [COLLECTIONS / "ansible_collections/hardhost/host/README.md",
                                    REPO / "README.md"])
def test_readme_playbook_is_valid_yaml(readme: Path) -> None:
    import yaml

    modules = []
    for block in re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.S):
        (play,) = yaml.safe_load(block)
        modules += [next(k for k in t if k.startswith("hardhost.")) for t in play["tasks"]]
    assert modules[:2] == ["hardhost.host.attest", "hardhost.host.reset"]
    assert modules[2:] in ([], ["hardhost.host.update"])


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


def updatable_image(directory: Path, keys: SigningKeys) -> Path:
    """A fake image folder whose manifest has a version and a disk layout, as an update
    needs."""
    image = fake_image(directory, keys.key)
    manifest, _ = read_verified(image / MANIFEST_NAME, load_trusted_keys(keys.public))
    sign_into(image, dataclasses.replace(manifest, version="2", disk={
        "slot_size_mib": "1024", "boot_tries": "3", "bless_timeout": "900"}), keys.key)
    return image


def dead_end_playbook(tmp_path: Path, keys: SigningKeys, identity: Path) -> Path:
    """Four hosts on ports where nothing listens: two that must be UNREACHABLE (attest,
    reset), two whose durations are refused before any connection. One play, so that no
    host's end stops the others."""
    hosts = [("attest", "5", None), ("reset", "5", None), ("attest", "inf", None),
             ("reset", "5", "0")]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[dead]\n" + "".join(
        f"dead{i} ansible_host=127.0.0.1 ansible_port={free_port()} ansible_user=root "
        f"ansible_ssh_private_key_file={identity} kind={kind} t={timeout}"
        + (f" rt={reset}" if reset else "") + "\n"
        for i, (kind, timeout, reset) in enumerate(hosts)))
    known = tmp_path / "known_hosts"
    known.write_text("")
    manifest = write_signed(tmp_path, sample_manifest(), keys.key)
    common = {"manifest": str(manifest), "trust_key": str(keys.public),
              "known_hosts": str(known), "timeout": "{{ t }}"}
    play = tmp_path / "dead.yml"
    play.write_text(json.dumps([{"hosts": "dead", "gather_facts": False, "tasks": [
        {"name": "Attest", "when": "kind == 'attest'", "hardhost.host.attest": common},
        {"name": "Reset", "when": "kind == 'reset'", "hardhost.host.reset": {
            **common, "reset_timeout": "{{ rt | default(300) }}"}}]}]))
    return play


@pytest.mark.e2e
def test_unreachable_hosts_are_unreachable_and_bad_durations_fail(
        tmp_path: Path, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    play = dead_end_playbook(tmp_path, signing_keys, client_key.private)
    result = ansible("ansible-playbook", "-i", str(tmp_path / "inventory.ini"), str(play),
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 4, output  # ansible-playbook's code for unreachable hosts
    summary = recap(result.stdout.replace("dead", "h"))
    assert summary["h0"]["unreachable"] == 1 and summary["h0"]["failed"] == 0, summary
    assert summary["h1"]["unreachable"] == 1 and summary["h1"]["failed"] == 0, summary
    assert re.search(r"^fatal: \[dead0\]: UNREACHABLE!", result.stdout, re.M)
    assert re.search(r"^fatal: \[dead1\]: UNREACHABLE!", result.stdout, re.M)
    # Refused before any connection: failed, not unreachable.
    assert summary["h2"]["failed"] == 1 and summary["h2"]["unreachable"] == 0, summary
    assert summary["h3"]["failed"] == 1 and summary["h3"]["unreachable"] == 0, summary
    assert "timeout: 'inf' is not a duration" in result.stdout
    assert "reset_timeout: '0' is not a duration" in result.stdout
    assert "Traceback" not in output


@pytest.mark.e2e
def test_a_controller_without_hardhost_is_told_in_one_line(
        tmp_path: Path, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    # A real controller Python with ansible-core and no hardhost: a venv that sees this
    # one's site-packages as a plain path, so hardhost's editable-install hook never runs.
    venv = tmp_path / "controller"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "shared.pth").write_text("".join(f"{p}\n" for p in sysconfig_paths()))
    play = dead_end_playbook(tmp_path, signing_keys, client_key.private)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / ".ansible-tmp"))
    result = subprocess.run([str(venv / "bin/python"), str(BIN / "ansible-playbook"), "-i",
                             str(tmp_path / "inventory.ini"), str(play)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert len(re.findall(r'^fatal: \[dead\d\]: FAILED! => .*"msg": "hardhost is not '
                          r"installed in the controller's Python", result.stdout, re.M)) == 4
    assert all(s["failed"] == 1 for s in recap(result.stdout.replace("dead", "h")).values())
    assert "No module named 'hardhost'" in output
    assert "Traceback" not in output and "UNREACHABLE" not in output


def sysconfig_paths() -> list[str]:
    import sysconfig

    return [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]


def reset_play(tmp_path: Path, hosts: list[ImageHost], keys: SigningKeys, identity: Path,
               *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """hardhost.host.reset on each host; the registered results, by inventory name."""
    tmp_path.mkdir()
    known = tmp_path / "known_hosts"
    known.write_text("".join(h.host.known_hosts.read_text() for h in hosts))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[image]\n" + "".join(
        f"h{i} ansible_host=127.0.0.1 ansible_port={h.host.port} ansible_user=root "
        f"ansible_ssh_private_key_file={identity}\n" for i, h in enumerate(hosts)))
    manifest = write_signed(tmp_path, recorded_manifest(), keys.key)
    out = tmp_path / "results"
    out.mkdir()
    play = tmp_path / "reset.yml"
    play.write_text(json.dumps([{
        "hosts": "image", "gather_facts": False,
        "tasks": [{"register": "r", "hardhost.host.reset": {
            "manifest": str(manifest), "trust_key": str(keys.public),
            "known_hosts": str(known), "timeout": 30, "reset_timeout": 5}},
            {"copy": {"content": "{{ r | to_json }}",
                      "dest": f"{out}/{{{{ inventory_hostname }}}}.json"},
             "delegate_to": "localhost", "check_mode": False}]}]))
    result = ansible("ansible-playbook", "-i", str(inventory), str(play), *extra, cwd=tmp_path)
    return result, {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


@pytest.mark.e2e
def test_reset_leaves_a_clean_host_alone_and_only_says_what_check_mode_would_do(
        tmp_path: Path, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    """On FAKE image hosts (forced to answer only the evidence script, so no reboot could
    run here): a clean host is not reset, and check mode reboots no drifted one."""
    kptr = (b"/proc/sys/kernel/kptr_restrict:2", b"/proc/sys/kernel/kptr_restrict:0")
    with image_host(tmp_path / "clean", client_key) as clean, \
            image_host(tmp_path / "drifted", client_key, drift=kptr) as drifted:
        checked, would = reset_play(tmp_path / "check", [clean, drifted], signing_keys,
                                    client_key.private, "--check")
        done, results = reset_play(tmp_path / "run", [clean], signing_keys, client_key.private)
        asked = clean.commands() + drifted.commands()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert would["h0"]["changed"] is False and would["h0"]["status"] == "pass"
    assert would["h1"]["changed"] is True and would["h1"]["status"] == "drift"
    assert "would reboot" in would["h1"]["msg"]
    assert [f["id"] for f in would["h1"]["findings"]] == ["sysctl.kernel.kptr_restrict"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert results["h0"]["changed"] is False and results["h0"]["status"] == "pass"
    assert "before" not in results["h0"]
    # Three evidence runs, nothing else: no boot_id read, no reboot asked for.
    assert len(asked) == 3 and all(c.startswith("/bin/sh -s") for c in asked), asked
