"""Image folders for tests that stop before a boot: small artifacts and a manifest that
signs them, made the way the manifest stage makes one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.image import signing
from hardhost.image.manifest import MANIFEST_NAME, HostManifest, Subject, format_time

ROOT_HASH = "ab" * 32
CMDLINE = (f"root=/dev/mapper/root rootfstype=erofs ro fsck.mode=skip console=ttyS0 "
           f"apparmor=1 security=apparmor hardhost.roothash={ROOT_HASH} "
           "hardhost.data=/dev/vda hardhost.hash=/dev/vdb hardhost.state=/dev/vdc")
DIRECT = ("vmlinuz", "initrd.img", "root.img", "root.verity")
UKI = ("uki.efi", "esp.img")


def manifest_for(directory: Path, names: tuple[str, ...], *, cmdline: str = CMDLINE,
                 boot: str = "direct") -> HostManifest:
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


def fake_image(directory: Path, key: Ed25519PrivateKey, *, esp: bool = False,
               cmdline: str = CMDLINE) -> Path:
    """A folder that passes for a built image, signed by `key`, up to where a boot starts:
    each artifact holds a few distinct bytes, and build.json carries the command line."""
    directory.mkdir()
    names = DIRECT + (UKI if esp else ())
    for name in names:
        (directory / name).write_bytes(f"{name} of a fake image\n".encode())
    (directory / "build.json").write_text(f'{{"cmdline": "{cmdline}"}}\n')
    sign_into(directory, manifest_for(directory, names, cmdline=cmdline,
                                      boot="uki" if esp else "direct"), key)
    return directory


def resign(directory: Path, manifest: HostManifest, key: Ed25519PrivateKey,
           names: tuple[str, ...]) -> None:
    """Sign `manifest` again into `directory`, with the digests of `names` as they are now
    (a manifest for artifacts changed on purpose)."""
    fresh = {s.name: s for s in manifest_for(directory, names).subjects}
    subjects = tuple(fresh.get(s.name, s) for s in manifest.subjects)
    sign_into(directory, dataclasses.replace(manifest, subjects=subjects), key)
