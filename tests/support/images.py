"""Image folders for tests that stop before a boot: small artifacts and a manifest that
signs them, made the way the manifest stage makes one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.image import signing
from hardhost.image.manifest import MANIFEST_NAME, HostManifest, Subject, format_time

ROOT_HASH = "ab" * 32
CMDLINE = (f"root=/dev/mapper/root rootfstype=erofs ro fsck.mode=skip console=ttyS0 "
           f"apparmor=1 security=apparmor hardhost.roothash={ROOT_HASH} "
           "hardhost.data=/dev/disk/by-partuuid/abababab-abab-abab-abab-abababababab "
           "hardhost.hash=/dev/disk/by-partuuid/abababab-abab-abab-abab-abababababab "
           "hardhost.state=/dev/disk/by-partlabel/hardhost-state")
ARTIFACTS = ("vmlinuz", "initrd.img", "root.img", "root.verity", "uki.efi")
DISK = "disk.img"
MIB = 2**20
# A disk with just a state partition, large enough for the VM harness's state file system.
FAKE_DISK_BYTES = 24 * MIB
STATE_PARTITION = "start=2048, size=36864, name=hardhost-state\n"


def fake_disk(path: Path) -> None:
    """A sparse GPT disk, made by sfdisk, whose one partition is the state partition."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, FAKE_DISK_BYTES)
    os.close(fd)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
                   input=f"label: gpt\n{STATE_PARTITION}", text=True, check=True)


def manifest_for(directory: Path, names: tuple[str, ...], *, cmdline: str = CMDLINE,
                 boot: str = "uki") -> HostManifest:
    """A manifest whose subjects are the files `names` in `directory` as they are now."""
    now = dt.datetime.now(dt.UTC)
    return HostManifest(
        name="fake", subjects=tuple(
            Subject(name, hashlib.sha256((directory / name).read_bytes()).hexdigest())
            for name in names),
        spec_digest="0" * 64, package_list_digest="0" * 64, sbom_digest="0" * 64,
        root_hash=ROOT_HASH, verity_salt="00" * 32, filesystem="erofs",
        kernel_release="6.1.0-test-amd64", cmdline=cmdline, sysctls={},
        apparmor_profiles={}, apparmor_runtime_profiles={}, seccomp_profiles={},
        runtime_config={}, userns={}, sshd={}, mutable_paths={"etc": (), "var": ("*",)},
        created=format_time(now - dt.timedelta(minutes=1)),
        expires=format_time(now + dt.timedelta(days=1)), boot=boot)


def sign_into(directory: Path, manifest: HostManifest, key: Ed25519PrivateKey) -> None:
    (directory / MANIFEST_NAME).write_bytes(signing.sign(manifest.payload(), key))


def fake_image(directory: Path, key: Ed25519PrivateKey, *, cmdline: str = CMDLINE) -> Path:
    """A folder that passes for a built image, signed by `key`, up to where a boot starts:
    each artifact holds a few distinct bytes, the disk is a real GPT disk with a state
    partition and nothing else, and build.json carries the command line."""
    directory.mkdir()
    for name in ARTIFACTS:
        (directory / name).write_bytes(f"{name} of a fake image\n".encode())
    fake_disk(directory / DISK)
    (directory / "build.json").write_text(f'{{"cmdline": "{cmdline}"}}\n')
    sign_into(directory, manifest_for(directory, (*ARTIFACTS, DISK), cmdline=cmdline), key)
    return directory


def resign(directory: Path, manifest: HostManifest, key: Ed25519PrivateKey,
           names: tuple[str, ...]) -> None:
    """Sign `manifest` again into `directory`, with the digests of `names` as they are now
    (a manifest for artifacts changed on purpose)."""
    fresh = {s.name: s for s in manifest_for(directory, names).subjects}
    subjects = tuple(fresh.get(s.name, s) for s in manifest.subjects)
    sign_into(directory, dataclasses.replace(manifest, subjects=subjects), key)
