"""hardhost attest against a booted container-host: pass, drift, reset, and trust failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hardhost.image.manifest import MANIFEST_NAME
from hardhost.verifier.transport import connect
from tests.support.keys import KeyPair, SigningKeys, make_keypair
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.serve import config_text, receiver, wait_for
from tests.support.vms import (
    BOOT_TIMEOUT,
    BootedHost,
    BuiltImage,
    boot,
    ensure_answering,
    rerun_if_the_guest_stalls,
)

pytestmark = pytest.mark.e2e

EXTRA_PROFILE = "profile hardhost-e2e-extra /usr/bin/true { }\n"


@pytest.fixture(scope="module")
def host(container_host: BuiltImage, client_key: KeyPair) -> Iterator[BootedHost]:
    yield from boot(container_host, "e2e-attest", client_key.private)


@pytest.fixture(autouse=True)
def _answering(host: BootedHost) -> None:
    """Also waits out the reboot that test_a_host_that_does_not_return_in_time leaves."""
    ensure_answering(host.instance, host.image.directory, trust_key=host.image.trust_key)


def attest(host: BootedHost, keys: SigningKeys, *extra: str,
           known_hosts: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardhost", "attest", str(host.target), "--manifest",
         str(host.image.directory / MANIFEST_NAME), "--trust-key", str(keys.public),
         "--known-hosts", str(known_hosts or host.known_hosts), "--identity",
         str(host.identity), "--timeout", "60", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=BOOT_TIMEOUT + 120)


def verdict(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def finding_ids(data: dict[str, Any]) -> set[str]:
    return {f["id"] for f in data["findings"] if f["severity"] != "info"}


def make_drift(host: BootedHost) -> None:
    with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                 timeout=30) as session:
        for argv, stdin in (
                (["sh", "-c", "echo drift > /etc/hardhost-drift"], b""),
                (["sh", "-c", "echo 1 > /proc/sys/kernel/kptr_restrict"], b""),
                (["tee", "/tmp/extra.apparmor"], EXTRA_PROFILE.encode()),
                (["apparmor_parser", "--replace", "/tmp/extra.apparmor"], b"")):
            result = session.run(argv, stdin=stdin)
            assert result.exit_status == 0, result.stderr


def test_clean_host_passes(host: BootedHost, signing_keys: SigningKeys) -> None:
    result = attest(host, signing_keys, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = verdict(result)
    assert data["status"] == "pass" and finding_ids(data) == set()
    assert len(data["boot_id"]) == 36 and len(data["manifest_digest"]) == 64


def test_testinfra_plugin_passes_then_names_the_drifted_fact(host: BootedHost,
                                                            signing_keys: SigningKeys,
                                                            tmp_path: Path) -> None:
    from tests.support.plugin import run_plugin

    args = (host.target.port, host.identity, host.image.directory / MANIFEST_NAME,
            signing_keys.public, host.known_hosts)
    clean = run_plugin(tmp_path, *args)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # (a fact's own name may say "failed", as systemd[failed] does)
    assert not [line for line in clean.stdout.splitlines() if line.startswith("FAILED")]
    assert " passed" in clean.stdout and " failed" not in clean.stdout.splitlines()[-1]
    with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                 timeout=30) as session:
        session.run(["sh", "-c", "echo 1 > /proc/sys/kernel/kptr_restrict"])
    drifted = run_plugin(tmp_path, *args)
    assert drifted.returncode == 1
    failed = [line for line in drifted.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "sysctl[kernel.kptr_restrict]" in failed[0], failed
    assert "sysctl.kernel.kptr_restrict (high): expected '2', observed '1'" in drifted.stdout


def test_drift_gives_findings_with_their_ids(host: BootedHost,
                                             signing_keys: SigningKeys) -> None:
    make_drift(host)
    result = attest(host, signing_keys, "--json")
    assert result.returncode == 1, result.stderr
    data = verdict(result)
    assert data["status"] == "drift"
    assert {"overlay.etc.modified", "sysctl.kernel.kptr_restrict",
            "apparmor.unexpected.hardhost-e2e-extra"} <= finding_ids(data)
    by_id = {f["id"]: f for f in data["findings"]}
    assert by_id["sysctl.kernel.kptr_restrict"]["expected"] == "2"
    assert by_id["sysctl.kernel.kptr_restrict"]["observed"] == "1"
    assert "hardhost-drift" in by_id["overlay.etc.modified"]["observed"]
    table = attest(host, signing_keys)
    assert table.returncode == 1 and "DRIFT" in table.stdout
    assert "sysctl.kernel.kptr_restrict" in table.stdout


def test_a_host_that_does_not_return_in_time_is_exit_3(host: BootedHost,
                                                       signing_keys: SigningKeys) -> None:
    make_drift(host)  # its own drift: a guest restarted after a stall has none
    result = attest(host, signing_keys, "--reset", "--reset-timeout", "5")
    assert result.returncode == 3
    assert "did not come back with a new boot_id within 5s" in result.stderr


def test_a_host_that_refuses_the_reboot_is_exit_3_at_once(host: BootedHost,
                                                           signing_keys: SigningKeys) -> None:
    """A masked reboot.target makes systemctl fail: said at once, not after the timeout."""
    make_drift(host)
    mask = ["systemctl", "mask", "--runtime", "reboot.target"]
    with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                 timeout=30) as session:
        assert session.run(mask).exit_status == 0
    try:
        started = time.monotonic()
        result = attest(host, signing_keys, "--reset", "--reset-timeout", str(BOOT_TIMEOUT))
        waited = time.monotonic() - started
    finally:
        with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                     timeout=30) as session:
            session.run(["systemctl", "unmask", "--runtime", "reboot.target"])
    assert result.returncode == 3, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    prefix = f"hardhost: {host.target}: systemctl reboot failed with exit status 1: "
    # systemd 252 says it through logind: "Call to Reboot failed: Access denied".
    assert last.startswith(prefix) and "Reboot failed" in last[len(prefix):], last
    assert waited < BOOT_TIMEOUT / 2


@rerun_if_the_guest_stalls
def test_serve_finds_a_write_to_etc_resets_the_host_and_shows_the_time(
        host: BootedHost, signing_keys: SigningKeys, tmp_path: Path) -> None:
    """The service on a real host: the test before leaves drift, which the service resets at
    once (so the next test finds the host clean); then a write to /etc is found within an
    interval and reset without anyone acting, and the remediation time shows in the API and
    the metrics."""
    interval = 10
    token = tmp_path / "api-token"
    token.write_text("an API token that is long enough\n")
    token.chmod(0o600)
    secret = tmp_path / "webhook.secret"
    secret.write_text("a webhook secret that is long\n")
    secret.chmod(0o600)
    (tmp_path / "hosts.ini").write_text(
        f"vm ansible_host=127.0.0.1 ansible_port={host.target.port} ansible_user=root\n")
    port = free_port()
    with receiver() as hook:
        config = tmp_path / "serve.toml"
        config.write_text(config_text(
            "serve.db", inventory="hosts.ini", manifest=host.image.directory / MANIFEST_NAME,
            trust_key=signing_keys.public, known_hosts=host.known_hosts,
            identity=host.identity, timeout=60, interval=interval, jitter=0.1, parallelism=4,
            tables=f"[remediation]\nenabled = true\nreset_timeout = {BOOT_TIMEOUT}\n"
                   f"[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"api-token\"\n"
                   f"[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook.port}/\"\n"
                   "secret_file = \"webhook.secret\"\n"))
        process = subprocess.Popen([sys.executable, "-m", "hardhost", "serve", str(config)],
                                   cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            def kinds() -> list[object]:
                return [e["event"] for e in hook.events()]

            wait_for("the drift left by the test before to be remediated",
                     lambda: kinds() == ["drift", "remediated"], timeout=BOOT_TIMEOUT + 120)
            with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                         timeout=30) as session:
                written = time.time()
                assert session.run(["sh", "-c", "echo x > /etc/hardhost-serve"]).exit_status == 0
            wait_for("the write to /etc to be found", lambda: len(kinds()) >= 3,
                     timeout=interval * 3 + 60)
            found = time.time()
            wait_for("the second remediation",
                     lambda: kinds() == ["drift", "remediated", "drift", "remediated"],
                     timeout=BOOT_TIMEOUT + 120)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/hosts/vm",
                headers={"Authorization": "Bearer an API token that is long enough"})
            with urllib.request.urlopen(request, timeout=30) as response:
                shown = json.loads(response.read())
            request.full_url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(request, timeout=30) as response:
                metrics = response.read().decode()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, stderr
    events = hook.events()
    assert "overlay.etc.modified" in events[2]["findings"]
    # Found within an interval (and its jitter), plus one attestation of a TCG guest.
    assert found - written < interval * 1.1 + 60
    assert 0 < events[3]["remediation_seconds"] < BOOT_TIMEOUT + 3 * interval
    assert shown["state"] == "pass"
    assert shown["last_remediation_seconds"] == events[3]["remediation_seconds"]
    assert 'hardhost_remediation_seconds_count{reset="true"} 2.0' in metrics


@rerun_if_the_guest_stalls
def test_reset_reboots_and_then_passes(host: BootedHost, signing_keys: SigningKeys) -> None:
    first = attest(host, signing_keys, "--json", "--reset", "--reset-timeout",
                   str(BOOT_TIMEOUT))
    # The service's test before resets the host, so this one passes at once (and resets,
    # should that test have left drift).
    assert first.returncode == 0, first.stderr
    make_drift(host)
    result = attest(host, signing_keys, "--json", "--reset", "--reset-timeout",
                    str(BOOT_TIMEOUT))
    assert result.returncode == 0, result.stderr
    data = verdict(result)
    assert data["before"]["status"] == "drift"
    assert data["after"]["status"] == "pass"
    assert data["after"]["boot_id"] != data["before"]["boot_id"]


def test_wrong_known_hosts_is_exit_4_before_authentication(host: BootedHost,
                                                           signing_keys: SigningKeys,
                                                           tmp_path: Path) -> None:
    other = make_keypair(tmp_path, "other")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{host.target.port} {other.public_line}\n")
    result = attest(host, signing_keys, known_hosts=known)
    assert result.returncode == 4
    # The host key check fails before the client key is offered: the message is about the
    # host key, never about a refused credential.
    assert "host key changed" in result.stderr and "refused" not in result.stderr


@rerun_if_the_guest_stalls
def test_fleet_resets_drifted_hosts(host: BootedHost, signing_keys: SigningKeys,
                                    tmp_path: Path) -> None:
    make_drift(host)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n    hardhost:\n      hosts:\n        vm:\n"
        f"          ansible_host: 127.0.0.1\n          ansible_port: {host.target.port}\n"
        "          ansible_user: root\n"
        f"          ansible_ssh_private_key_file: {host.identity}\n"
        f"          hardhost_manifest: {host.image.directory / MANIFEST_NAME}\n")
    result = subprocess.run(
        [sys.executable, "-m", "hardhost", "fleet", str(inventory), "--trust-key",
         str(signing_keys.public), "--known-hosts", str(host.known_hosts), "--reset",
         "--reset-batch", "1", "--reset-timeout", str(BOOT_TIMEOUT), "--timeout", "60",
         "--history", str(tmp_path / "history.db"), "--json", str(tmp_path / "fleet.json")],
        cwd=REPO, capture_output=True, text=True, timeout=BOOT_TIMEOUT + 300)
    assert result.returncode == 0, result.stdout + result.stderr
    (final,) = json.loads((tmp_path / "fleet.json").read_text())["hosts"]
    assert final["status"] == "pass"
    rows = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db",
                           str(tmp_path / "history.db")], cwd=REPO, capture_output=True,
                          text=True, timeout=60).stdout
    assert "pass" in rows and "never" not in rows


@rerun_if_the_guest_stalls
def test_ansible_collection_attests_and_resets(host: BootedHost, signing_keys: SigningKeys,
                                               tmp_path: Path) -> None:
    from tests.support.ansible import ansible

    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"vm ansible_host=127.0.0.1 ansible_port={host.target.port} "
                         f"ansible_user=root ansible_ssh_private_key_file={host.identity}\n")
    args = {"manifest": str(host.image.directory / MANIFEST_NAME),
            "trust_key": str(signing_keys.public), "known_hosts": str(host.known_hosts),
            "timeout": 120}  # a loaded TCG guest has stalled 45 s

    def play(module: str, *extra: str) -> dict[str, Any]:
        (tmp_path / "play.yml").write_text(json.dumps([{
            "hosts": "all", "gather_facts": False,
            "tasks": [{"register": "r", f"hardhost.host.{module}":
                       {**args, "reset_timeout": BOOT_TIMEOUT}},
                      {"copy": {"content": "{{ r | to_json }}",
                                "dest": str(tmp_path / "result.json")},
                       "delegate_to": "localhost", "check_mode": False}]}]))
        result = ansible("ansible-playbook", "-i", str(inventory), "play.yml", *extra,
                         cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        data: dict[str, Any] = json.loads((tmp_path / "result.json").read_text())
        return data

    clean = play("attest")
    assert clean["status"] == "pass" and clean["changed"] is False
    kept = play("reset")  # a clean host is not reset
    assert kept["changed"] is False and kept["boot_id"] == clean["boot_id"]
    make_drift(host)
    would = play("reset", "--check")
    assert would["changed"] is True and "would reboot" in would["msg"]
    assert would["boot_id"] == clean["boot_id"]  # check mode rebooted nothing
    done = play("reset")
    assert done["changed"] is True and done["status"] == "pass"
    assert done["before"]["status"] == "drift" and done["boot_id"] != clean["boot_id"]
