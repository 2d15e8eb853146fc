"""A/B updates of a booted disk under OVMF, on a guest with a vTPM: a good update blessed
after `attest --tpm`-grade checks and kept across a reboot; a downgrade refused; a payload
changed in flight caught before the switch; a full ESP refusing the update before anything
is written; and a VM killed mid-write still booting its old image. The paths that fall back
are in tests/e2e/test_update_rollback.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pytest

from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.reset import reboot
from hardhost.verifier.update import UpdateError, load_image, load_store, update
from hardhost.vm import harness as vm
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import REPO
from tests.support.updates import Guest, answering, guest, store_of
from tests.support.vms import BOOT_TIMEOUT, BuiltImage, rerun_if_the_guest_stalls

pytestmark = pytest.mark.e2e


# --- with a vTPM: the good update, a downgrade, a changed payload, a kill mid-write ---------


@pytest.fixture(scope="module")
def tpm_guest_started(container_host: BuiltImage, version_2: BuiltImage, client_key: KeyPair,
                      signing_keys: SigningKeys,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    store = store_of(tmp_path_factory.mktemp("tpm-update"), container_host.directory,
                   version_2.directory)
    yield from guest("e2e-update-tpm", container_host, client_key, signing_keys, store,
                      tpm=True)


@pytest.fixture
def tpm_guest(tpm_guest_started: Guest, container_host: BuiltImage) -> Guest:
    return answering(tpm_guest_started, container_host)


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
