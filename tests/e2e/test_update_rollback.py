"""A/B updates that fall back, on a guest without a TPM (these paths reboot without an
orderly shutdown, a panic or a deadline, which a DA-protected TPM would count against its
lockout): an image that panics falls back by boot counting alone; an image whose boot fails
attestation is rolled back by the verifier, and the fleet's next wave never starts; and a
boot nobody blesses is rebooted by its deadline into the old image."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.image.layout import CMDLINE_ROOTHASH
from hardhost.verifier.transport import Target
from hardhost.vm import harness as vm
from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.updates import (
    FALLBACK_TIMEOUT,
    REBOOT_TIMEOUT,
    Guest,
    answering,
    guest,
    store_of,
    variant,
)
from tests.support.vms import BuiltImage, rerun_if_the_guest_stalls, start_vm

pytestmark = pytest.mark.e2e


# --- without a TPM: boot counting alone, and the verifier's rollback -------------------------


@pytest.fixture(scope="module")
def plain_guest_started(container_host: BuiltImage, version_2: BuiltImage,
                        client_key: KeyPair, signing_keys: SigningKeys,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("plain-update")
    store = store_of(tmp, container_host.directory, version_2.directory)
    yield from guest("e2e-update", container_host, client_key, signing_keys, store, tpm=False)


@pytest.fixture
def plain_guest(plain_guest_started: Guest, container_host: BuiltImage) -> Guest:
    return answering(plain_guest_started, container_host)


@rerun_if_the_guest_stalls
def test_an_image_that_panics_falls_back_by_boot_counting_alone(
        plain_guest: Guest, version_2: BuiltImage, signing_keys: SigningKeys,
        tmp_path: Path) -> None:
    """The new UKI names a root hash its slot does not have: dm-verity refuses the root in
    the initramfs, whose panic restarts the machine (the image's panic= argument) instead of
    opening a shell, so each boot uses up a try."""
    panics = variant(version_2.directory, tmp_path / "panics", signing_keys, version="3",
                     cmdline_extra=f"{CMDLINE_ROOTHASH}={'0' * 64}", boot_tries=2)
    result = plain_guest.update(panics, reboot_timeout=FALLBACK_TIMEOUT)
    assert result.returncode == 1, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["outcome"] == "rolled-back" and outcome["version"] == "1"
    assert outcome["new_boot"] is None  # the verifier never saw the new image boot
    assert "used up its tries" in outcome["reason"]
    assert plain_guest.version() == "1"
    # Both tries used, and the entry left as systemd-boot renamed it (+0-2); the next update
    # removes it.
    assert plain_guest.entries() == ["hardhost-1.efi", "hardhost-2+0-2.efi"]


@pytest.fixture
def bystander(container_host: BuiltImage) -> Iterator[tuple[vm.Instance, Target]]:
    """A second host of the fleet, on the old image (booted directly: it is only attested)."""
    name = "e2e-update-bystander"
    vm.stop(name, purge=True)
    port = free_port()
    instance = start_vm(container_host.directory, trust_key=container_host.trust_key,
                        name=name, port=port)
    try:
        yield instance, Target("root", "127.0.0.1", port)
    finally:
        vm.stop(name, purge=True)


@rerun_if_the_guest_stalls
def test_a_fleet_update_stops_after_a_wave_whose_boot_failed_attestation(
        plain_guest: Guest, bystander: tuple[vm.Instance, Target],
        container_host: BuiltImage, version_2: BuiltImage, signing_keys: SigningKeys,
        tmp_path: Path) -> None:
    """The new image boots on the first wave's host, but not as its signed manifest says (the
    manifest expects kernel.sysrq = 1, the root sets 0): the verifier marks the boot bad, the
    host returns to its old slot and passes there, and the second wave never starts."""
    drifted = variant(version_2.directory, tmp_path / "drifted", signing_keys, version="4",
                      sysctls={"kernel.sysrq": "1"})
    other, other_target = bystander
    known = tmp_path / "known_hosts"
    known.write_text(plain_guest.instance.known_hosts.read_text()
                     + other.known_hosts.read_text())
    inventory = tmp_path / "fleet.ini"
    inventory.write_text("".join(
        f"{name} ansible_host=127.0.0.1 ansible_port={target.port} ansible_user=root\n"
        for name, target in (("first", plain_guest.target), ("second", other_target))))
    report = tmp_path / "fleet.json"
    result = subprocess.run(
        [sys.executable, "-m", "hardhost", "fleet", "update", str(inventory), "--image",
         str(drifted), "--manifests", str(plain_guest.store), "--trust-key",
         str(signing_keys.public), "--known-hosts", str(known), "--identity",
         str(plain_guest.identity), "--waves", "1,100%", "--reboot-timeout",
         str(REBOOT_TIMEOUT), "--json", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 1, result.stdout + result.stderr
    first, second = json.loads(report.read_text())
    assert (first["host"], first["wave"], first["outcome"], first["version"]) == (
        "first", 1, "rolled-back", "1")
    assert "sysctl.kernel.sysrq" in first["reason"]
    assert (second["host"], second["wave"], second["outcome"], second["version"]) == (
        "second", 0, "skipped", "1")
    assert "Wave 1: 1 failed, more than the 0 allowed; stopping" in result.stderr
    assert plain_guest.version() == "1"
    # Marked bad by the verifier on its first try: no tries left, one done.
    assert plain_guest.entries() == ["hardhost-1.efi", "hardhost-2+0-1.efi"]
    attested = plain_guest.attest(container_host.directory)
    assert attested.returncode == 0, attested.stdout + attested.stderr


def test_a_boot_nobody_blesses_reboots_at_its_deadline_and_falls_back(
        plain_guest: Guest, container_host: BuiltImage, version_2: BuiltImage,
        signing_keys: SigningKeys, tmp_path: Path) -> None:
    """The verifier gives up on the new boot (as one that cannot reach the host would), so
    nobody blesses it. The image's deadline timer reboots it, which uses up its one try, and
    systemd-boot starts the old slot. The deadline is brought forward on the host (a runtime
    drop-in) so the test does not wait boot.bless_timeout; that the image's timer carries
    that value is checked in tests/test_templates.py."""
    once = variant(version_2.directory, tmp_path / "once", signing_keys, version="5",
                   boot_tries=1)
    before = plain_guest.boot_id()
    result = plain_guest.update(once, reboot_timeout=1)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "did not come back with a new boot_id" in result.stderr.splitlines()[-1]
    trial = plain_guest.next_boot(before)
    # The new image, under assessment: its one try used, its deadline armed.
    assert plain_guest.version() == "2"
    assert plain_guest.entries() == ["hardhost-1.efi", "hardhost-2+0-1.efi"]
    assert plain_guest.ssh("systemctl is-active hardhost-boot-deadline.timer").strip() == "active"
    plain_guest.ssh("d=/run/systemd/system/hardhost-boot-deadline.timer.d && mkdir -p $d && "
                    "printf '[Timer]\\nOnBootSec=\\nOnActiveSec=5s\\n' > $d/soon.conf && "
                    "systemctl daemon-reload && systemctl restart hardhost-boot-deadline.timer")
    plain_guest.next_boot(trial)  # nobody here asked for this reboot
    assert plain_guest.version() == "1"
    assert plain_guest.entries() == ["hardhost-1.efi", "hardhost-2+0-1.efi"]
    attested = plain_guest.attest(container_host.directory)
    assert attested.returncode == 0, attested.stdout + attested.stderr
