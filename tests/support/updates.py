"""The A/B update tests' guests (tests/e2e/test_update.py with a vTPM, and
tests/e2e/test_update_rollback.py without one), and the image variants they update to.
Each module boots its own guest, so that one module's guest is stopped before the next's
starts: an idle TCG guest still takes a fifth of a core from the busy one."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hardhost.builder import pe, uki
from hardhost.core.errors import Unreachable
from hardhost.image.manifest import MANIFEST_NAME, HostManifest, read_verified
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.attestation import Connection
from hardhost.verifier.reset import boot_id
from hardhost.verifier.tpm_attest import TpmPolicy
from hardhost.verifier.transport import Target, connect
from hardhost.vm import harness as vm
from tests.support.images import sign_into
from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.vms import BOOT_TIMEOUT, BuiltImage, ensure_answering, start_vm

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


def store_of(tmp: Path, *images: Path) -> Path:
    store = tmp / "store"
    store.mkdir()
    for index, image in enumerate(images):
        os.link(image / MANIFEST_NAME, store / f"image-{index}.dsse.json")
    return store


def guest(name: str, image: BuiltImage, client_key: KeyPair, keys: SigningKeys,
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


def answering(started: Guest, image: BuiltImage) -> Guest:
    """A module's guest, on a fresh disk of `image` if it stopped answering (its host key
    and vTPM stay), so that one stall does not fail every later test of the module."""
    ensure_answering(started.instance, image.directory, trust_key=image.trust_key,
                     tpm=started.registry is not None, firmware=True)
    return started
