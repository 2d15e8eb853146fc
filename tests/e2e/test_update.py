"""A/B updates of a booted disk under OVMF: a good update blessed after `attest --tpm`-grade
checks and kept across a reboot; a downgrade refused; a payload changed in flight caught
before the switch; a VM killed mid-write still booting its old image; an image that panics
falling back by boot counting alone; an image whose boot fails attestation rolled back by
the verifier; and a boot nobody blesses rebooted by its deadline into the old image.

Two guests: one with a vTPM for the paths that attest with the TPM, and one without for the
paths that reboot without an orderly shutdown (a panic, a kill), which a DA-protected TPM
would count against its lockout."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pytest

from hardhost.builder import pe, uki
from hardhost.builder.build import build
from hardhost.core.errors import Unreachable
from hardhost.image.layout import CMDLINE_ROOTHASH
from hardhost.image.manifest import MANIFEST_NAME, HostManifest, read_verified
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.attestation import Connection
from hardhost.verifier.reset import boot_id, reboot
from hardhost.verifier.tpm_attest import TpmPolicy
from hardhost.verifier.transport import Target, connect
from hardhost.verifier.update import UpdateError, load_image, load_store, update
from hardhost.vm import harness as vm
from tests.support.images import sign_into
from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.vms import (
    BOOT_TIMEOUT,
    BuiltImage,
    ensure_answering,
    rerun_if_the_guest_stalls,
    start_vm,
)

pytestmark = pytest.mark.e2e

# Seconds the verifier waits for a host to come back from the update's reboot: one boot
# under OVMF on a loaded machine, or three panicking tries and the fallback boot.
REBOOT_TIMEOUT = 300
FALLBACK_TIMEOUT = 900


@dataclass(frozen=True)
class Guest:
    instance: vm.Instance
    target: Target
    identity: Path
    store: Path
    keys: SigningKeys
    registry: Path | None  # the AK registry, for a guest with a vTPM

    def ssh(self, script: str) -> str:
        with connect(self.target, known_hosts=self.instance.known_hosts,
                     identity=self.identity, timeout=30) as session:
            result = session.run_script(script, timeout=120)
        assert result.exit_status == 0, result.stderr.decode()
        return result.stdout.decode()

    def entries(self) -> list[str]:
        """The boot entries on the ESP."""
        return self.ssh("mount /dev/disk/by-partlabel/hardhost-esp /efi && "
                        "ls /efi/EFI/Linux; umount /efi").split()

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id").strip()

    def next_boot(self, after: str) -> str:
        """Wait for the guest to answer with a boot_id other than `after`; return it."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(2)
            with contextlib.suppress(Unreachable):
                now = boot_id(self.target, known_hosts=self.instance.known_hosts,
                              identity=self.identity, timeout=15)
                if now != after:
                    return now
        raise AssertionError(f"the guest did not come back from boot {after}")

    def version(self) -> str:
        for line in self.ssh("cat /etc/os-release").splitlines():
            if line.startswith("IMAGE_VERSION="):
                return line.partition("=")[2]
        return ""

    def tpm_args(self) -> list[str]:
        if self.registry is None:
            return []
        return ["--tpm", "--tpm-ca", str(self.instance.tpm_ca), "--ak-registry",
                str(self.registry)]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hardhost", *args, str(self.target), "--trust-key",
             str(self.keys.public), "--known-hosts", str(self.instance.known_hosts),
             "--identity", str(self.identity), *self.tpm_args()],
            cwd=REPO, capture_output=True, text=True, timeout=2400)

    def update(self, image: Path, *extra: str,
               reboot_timeout: int = REBOOT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return self.cli("update", "--image", str(image), "--manifests", str(self.store),
                        "--reboot-timeout", str(reboot_timeout), "--json",
                        "--history", str(self.store.parent / "history.db"), *extra)

    def attest(self, image: Path) -> subprocess.CompletedProcess[str]:
        return self.cli("attest", "--manifest", str(image / MANIFEST_NAME), "--json")

    def connection(self) -> Connection:
        tpm = None if self.registry is None else TpmPolicy(self.registry,
                                                           self.instance.tpm_ca, False)
        return Connection(self.instance.known_hosts, self.identity, 30.0, tpm=tpm)


def manifest_of(image: Path, keys: SigningKeys) -> HostManifest:
    return read_verified(image / MANIFEST_NAME, load_trusted_keys(keys.public))[0]


def variant(base: Path, out: Path, keys: SigningKeys, *, version: str,
            cmdline_extra: str = "", sysctls: dict[str, str] | None = None,
            boot_tries: int | None = None) -> Path:
    """An image made from `base`'s root, signed by the same key: another version, a UKI whose
    command line has `cmdline_extra` added, a manifest expecting other sysctls than the
    root sets (an image that boots but cannot pass attestation), or other boot tries."""
    out.mkdir()
    for name in ("root.img", "root.verity", "vmlinuz", "initrd.img"):
        os.link(base / name, out / name)
    manifest = manifest_of(base, keys)
    if cmdline_extra:
        built = pe.read(base / "uki.efi")
        osrel = built.section(".osrel")
        assert osrel is not None
        (out / "os-release").write_bytes(built.memory_contents(osrel))
        uki.assemble_uki(uki.STUB, linux=base / "vmlinuz", initrd=base / "initrd.img",
                         cmdline=f"{manifest.cmdline} {cmdline_extra}",
                         osrel=out / "os-release", out=out / "uki.efi")
    else:
        os.link(base / "uki.efi", out / "uki.efi")
    digest = hashlib.sha256((out / "uki.efi").read_bytes()).hexdigest()
    subjects = tuple(dataclasses.replace(s, sha256=digest) if s.name == "uki.efi" else s
                     for s in manifest.subjects if s.name != "disk.img")
    disk = manifest.disk if boot_tries is None else {**manifest.disk,
                                                     "boot_tries": str(boot_tries)}
    sign_into(out, dataclasses.replace(
        manifest, version=version, subjects=subjects, disk=disk,
        sysctls={**manifest.sysctls, **(sysctls or {})}), keys.key)
    return out


@pytest.fixture(scope="module")
def version_2(container_host: BuiltImage, signing_keys: SigningKeys,
              tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """container-host at version 2: the same spec, so only os-release (and with it the root
    and the UKI) differs."""
    spec = dataclasses.replace(container_host.spec, version="2")
    out = tmp_path_factory.mktemp("version-2")
    return BuiltImage(spec, build(spec, out, key=signing_keys.key), signing_keys.public)


def _store(tmp: Path, *images: Path) -> Path:
    store = tmp / "store"
    store.mkdir()
    for index, image in enumerate(images):
        os.link(image / MANIFEST_NAME, store / f"image-{index}.dsse.json")
    return store


def _guest(name: str, image: BuiltImage, client_key: KeyPair, keys: SigningKeys,
           store: Path, *, tpm: bool) -> Iterator[Guest]:
    vm.stop(name, purge=True)
    port = free_port()
    instance = start_vm(image.directory, trust_key=image.trust_key, name=name, port=port,
                        tpm=tpm, firmware=True)
    try:
        yield Guest(instance, Target("root", "127.0.0.1", port), client_key.private, store,
                    keys, store.parent / "aks.json" if tpm else None)
    finally:
        vm.stop(name, purge=True)


def _answering(guest: Guest, image: BuiltImage) -> Guest:
    """The module's guest, on a fresh disk of `image` if it stopped answering (its host key
    and vTPM stay), so that one stall does not fail every later test of the module."""
    ensure_answering(guest.instance, image.directory, trust_key=image.trust_key,
                     tpm=guest.registry is not None, firmware=True)
    return guest


# --- with a vTPM: the good update, a downgrade, a changed payload, a kill mid-write ---------


@pytest.fixture(scope="module")
def tpm_guest_started(container_host: BuiltImage, version_2: BuiltImage, client_key: KeyPair,
                      signing_keys: SigningKeys,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    store = _store(tmp_path_factory.mktemp("tpm-update"), container_host.directory,
                   version_2.directory)
    yield from _guest("e2e-update-tpm", container_host, client_key, signing_keys, store,
                      tpm=True)


@pytest.fixture
def tpm_guest(tpm_guest_started: Guest, container_host: BuiltImage) -> Guest:
    return _answering(tpm_guest_started, container_host)


@rerun_if_the_guest_stalls
def test_a_good_update_is_blessed_and_kept_across_a_reboot(
        tpm_guest: Guest, container_host: BuiltImage, version_2: BuiltImage) -> None:
    assert tpm_guest.entries() == ["hardhost-1.efi"] and tpm_guest.version() == "1"
    result = tpm_guest.update(version_2.directory)
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert (outcome["outcome"], outcome["from_version"], outcome["version"]) == (
        "updated", "1", "2")
    assert outcome["new_boot"]["status"] == "pass"
    # Blessed: the counter is gone from the entry's name, and the old slot's entry remains
    # for the next update to replace.
    assert tpm_guest.entries() == ["hardhost-1.efi", "hardhost-2.efi"]
    # The boot under assessment armed its deadline (the boot counter's variable was there),
    # and the bless stopped it before it fired.
    deadline = tpm_guest.ssh("journalctl -b -o cat -u hardhost-boot-deadline.timer; "
                             "systemctl is-active hardhost-boot-deadline.timer || true")
    assert "Started hardhost-boot-deadline.timer" in deadline, deadline
    assert "Stopped hardhost-boot-deadline.timer" in deadline, deadline
    assert deadline.splitlines()[-1] == "inactive"
    reboot(tpm_guest.target, known_hosts=tpm_guest.instance.known_hosts,
           identity=tpm_guest.identity, timeout=BOOT_TIMEOUT)
    assert tpm_guest.version() == "2"
    # A blessed entry boots without a counter: nothing arms the deadline.
    assert tpm_guest.ssh("systemctl show -p ConditionResult --value "
                         "hardhost-boot-deadline.timer").strip() == "no"
    again = tpm_guest.attest(version_2.directory)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["status"] == "pass"


def test_a_downgrade_is_refused_and_the_host_untouched(
        tpm_guest: Guest, container_host: BuiltImage) -> None:
    before = tpm_guest.entries()
    result = tpm_guest.update(container_host.directory)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "older: pass --allow-downgrade" in result.stderr.splitlines()[-1]
    assert tpm_guest.entries() == before


def test_a_payload_changed_in_flight_is_caught_before_the_switch(
        tpm_guest: Guest, container_host: BuiltImage, signing_keys: SigningKeys) -> None:
    """FAKE: a byte of root.img changed between the verifier's check and the host. SSH's own
    integrity makes such a change impossible to cause for real on the wire; the opener
    stands for a file changed after it was checked, or a disk that corrupts a write."""
    running = tpm_guest.version()

    def flipped(path: Path) -> BinaryIO:
        data = bytearray(path.read_bytes())
        if path.name == "root.img":
            data[len(data) // 2] ^= 0x01
        return BytesIO(bytes(data))

    trusted = load_trusted_keys(signing_keys.public)
    with pytest.raises(UpdateError, match=r"root\.img arrived with sha256 .* nothing was "
                                          r"switched, the host still boots its running image"):
        update(tpm_guest.target, load_image(container_host.directory, trusted),
               load_store(tpm_guest.store, trusted), tpm_guest.connection(),
               allow_downgrade=True, open_payload=flipped)
    # No boot entry was added: the next boot is the running image's (the test after this one
    # boots a disk left in the middle of a write, and finds it so).
    assert all("+" not in entry for entry in tpm_guest.entries())
    assert tpm_guest.version() == running


def test_a_full_esp_stops_the_update_before_anything_is_written(
        tpm_guest: Guest, container_host: BuiltImage) -> None:
    running = tpm_guest.version()
    # Everything but 4 MiB of the ESP taken by a file that is no boot entry, once the old
    # slot's entry is gone (the update would remove it first).
    tpm_guest.ssh("mount /dev/disk/by-partlabel/hardhost-esp /efi && "
                  "rm -f /efi/EFI/Linux/hardhost-1.efi && "
                  "free=$(df -P -B1 /efi | awk 'NR == 2 { print $4 }') && "
                  "head -c $((free - 4194304)) /dev/zero > /efi/filler; umount /efi")
    try:
        result = tpm_guest.update(container_host.directory, "--allow-downgrade")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "the ESP has" in result.stderr.splitlines()[-1]
        assert "root.img ->" not in result.stderr  # refused before the slot was written
        assert tpm_guest.version() == running
        assert tpm_guest.entries() == ["hardhost-2.efi"]
    finally:
        tpm_guest.ssh("mount /dev/disk/by-partlabel/hardhost-esp /efi && rm -f /efi/filler; "
                      "umount /efi")


def test_a_vm_killed_while_the_slot_is_written_boots_its_old_image(
        tpm_guest: Guest, container_host: BuiltImage, version_2: BuiltImage) -> None:
    running = tpm_guest.version()
    update_run = subprocess.Popen(
        [sys.executable, "-m", "hardhost", "update", str(tpm_guest.target), "--image",
         str(container_host.directory), "--manifests", str(tpm_guest.store),
         "--allow-downgrade", "--trust-key", str(tpm_guest.keys.public), "--known-hosts",
         str(tpm_guest.instance.known_hosts), "--identity", str(tpm_guest.identity),
         "--history", str(tpm_guest.store.parent / "history.db"), *tpm_guest.tpm_args()],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert update_run.stderr is not None
    try:
        for line in update_run.stderr:
            sent = re.search(r"root\.img -> hardhost-root-[ab]\s+([0-9]+)%", line)
            if sent and int(sent.group(1)) >= 20:
                break  # a fifth of the root is on its way
        pid = tpm_guest.instance.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert update_run.wait(timeout=120) != 0
    finally:
        update_run.kill()
    time.sleep(1)
    instance = vm.start(version_2.directory, trust_key=version_2.trust_key,
                        name=tpm_guest.instance.name, ssh_port=tpm_guest.target.port,
                        timeout=BOOT_TIMEOUT, tpm=True, keep_disk=True)
    assert instance.pid() is not None
    assert tpm_guest.version() == running
    assert all("+" not in entry for entry in tpm_guest.entries())
    again = tpm_guest.attest(version_2.directory)
    assert again.returncode == 0, again.stdout + again.stderr


# --- without a TPM: boot counting alone, and the verifier's rollback -------------------------


@pytest.fixture(scope="module")
def plain_guest_started(container_host: BuiltImage, version_2: BuiltImage,
                        client_key: KeyPair, signing_keys: SigningKeys,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("plain-update")
    store = _store(tmp, container_host.directory, version_2.directory)
    yield from _guest("e2e-update", container_host, client_key, signing_keys, store, tpm=False)


@pytest.fixture
def plain_guest(plain_guest_started: Guest, container_host: BuiltImage) -> Guest:
    return _answering(plain_guest_started, container_host)


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
