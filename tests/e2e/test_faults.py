"""Faults made real: a corrupted root, a package that does not exist, a VM that never answers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.builder import disk
from hardhost.image import layout
from hardhost.image.manifest import MANIFEST_NAME, read_verified
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.transport import connect
from hardhost.vm import harness as vm
from tests.support.images import resign
from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import IMAGES, REPO
from tests.support.vms import BootedHost, BuiltImage, boot

pytestmark = pytest.mark.e2e

# A file nothing reads during boot or an SSH session (sshd reads moduli only for DH group
# exchange, which paramiko does not choose when curve25519 is available).
VICTIM = "/etc/ssh/moduli"
_EXTENT = re.compile(r"^\s*0:\s+\d+\.\.\s*\d+\s*\|\s*\d+\s*:\s*(\d+)\.\.\s*(\d+)\s*\|", re.M)


def first_extent(image: Path, path: str) -> tuple[int, int]:
    """Physical byte range of the first extent of `path` inside an erofs image."""
    out = subprocess.run(["dump.erofs", f"--path={path}", "-e", str(image)], check=True,
                         capture_output=True, text=True).stdout
    match = _EXTENT.search(out)
    assert match, f"dump.erofs shows no extent for {path}:\n{out}"
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def corrupted(container_host: BuiltImage, client_key: KeyPair, signing_keys: SigningKeys,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedHost]:
    copy = tmp_path_factory.mktemp("corrupted") / "container-host"
    shutil.copytree(container_host.directory, copy)
    start, end = first_extent(copy / "root.img", VICTIM)
    manifest, _ = read_verified(copy / MANIFEST_NAME, load_trusted_keys(signing_keys.public))
    # The byte as the boot reads it: inside slot A's root partition of the disk.
    slot = next(p for p in disk.partition_table(container_host.spec.disk, manifest.root_hash)
                if p.label == layout.root_label("a"))
    offset = slot.start + start + (end - start) // 2
    with (copy / "disk.img").open("r+b") as image:
        image.seek(offset)
        original = image.read(1)
        image.seek(offset)
        image.write(bytes([original[0] ^ 0xFF]))
    # vm start refuses a disk.img whose digest the manifest does not sign. This is the disk
    # changing after that check, or a host booted by other means: the manifest is signed
    # again for the flipped byte, and dm-verity, holding the disk to the root hash on the
    # command line, must still never serve it.
    resign(copy, manifest, signing_keys.key, ("disk.img",))
    yield from boot(BuiltImage(container_host.spec, copy, container_host.trust_key),
                    "e2e-corrupt", client_key.private)


def test_flipped_byte_is_never_served(corrupted: BootedHost) -> None:
    with connect(corrupted.target, known_hosts=corrupted.known_hosts,
                 identity=corrupted.identity, timeout=30) as session:
        read = session.run(["cat", VICTIM], timeout=60)
        kernel_log = session.run(["dmesg"], timeout=30).stdout.decode(errors="replace")
        verity = session.run(["veritysetup", "status", "root"], timeout=30).stdout.decode()
    assert read.exit_status != 0
    assert b"Input/output error" in read.stderr
    assert re.search(r"device-mapper: verity: .*data block \d+ is corrupted", kernel_log)
    assert "status:      corrupted" in verity or "corrupted" in verity


def test_unknown_package_fails_with_mmdebstrap_reason(tmp_path: Path, client_key: KeyPair,
                                                      signing_keys: SigningKeys) -> None:
    text = (IMAGES / "minimal.toml").read_text().replace(
        '"apparmor",\n]', '"apparmor",\n    "hardhost-no-such-package",\n]')
    assert "hardhost-no-such-package" in text
    spec = tmp_path / "broken.toml"
    spec.write_text(text)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "hardhost", "build", str(spec), "-o", str(out),
         "--authorized-key", f"{client_key.private}.pub", "--key", str(signing_keys.private)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hardhost: package 'hardhost-no-such-package' does not exist in "
                           "bookworm")
    assert "Unable to locate package hardhost-no-such-package" in last
    # Nothing half-written is left behind: not the output, not the scratch folders.
    assert list(out.iterdir()) == []


def test_vm_that_never_answers_exits_3_naming_the_serial_log(container_host: BuiltImage) -> None:
    name = "e2e-timeout"
    vm.stop(name, purge=True)
    result = subprocess.run(
        [sys.executable, "-m", "hardhost", "vm", "start", str(container_host.directory),
         "--name", name, "--ssh-port", str(free_port()), "--timeout", "2",
         "--trust-key", str(container_host.trust_key)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    try:
        assert result.returncode == 3
        serial = vm.instance(name).serial_log
        assert result.stderr.strip().splitlines()[-1] == (
            f"hardhost: vm {name}: SSH did not answer within 2s; see the serial log {serial}")
        assert vm.instance(name).pid() is None, "the VM was left running"
    finally:
        vm.stop(name, purge=True)
