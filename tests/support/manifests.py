"""A sample host manifest, and its signed envelope written where an image keeps it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.image import signing
from hardhost.image.manifest import (
    MANIFEST_NAME,
    MAX_VALIDITY_DAYS,
    HostManifest,
    Subject,
    format_time,
)


def sample_manifest(expires: dt.datetime | None = None) -> HostManifest:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return HostManifest(
        name="t", subjects=(Subject("root.img", "a" * 64), Subject("root.verity", "b" * 64)),
        spec_digest="c" * 64, package_list_digest="d" * 64, sbom_digest="e" * 64,
        root_hash="f" * 64, verity_salt="0" * 64, filesystem="erofs",
        kernel_release="6.1.0-50-amd64", cmdline="root=/dev/mapper/root ro",
        sysctls={"kernel.kptr_restrict": "2"}, apparmor_profiles={"lsb_release": "enforce"},
        apparmor_runtime_profiles={},
        seccomp_profiles={}, runtime_config={}, userns={}, sshd={"passwordauthentication": "no"},
        mutable_paths={"etc": ("machine-id",), "var": ("*",)}, created=format_time(now),
        expires=format_time(expires or now + dt.timedelta(days=MAX_VALIDITY_DAYS)))


def write_signed(directory: Path, manifest: HostManifest, key: Ed25519PrivateKey) -> Path:
    path = directory / MANIFEST_NAME
    path.write_bytes(signing.sign(manifest.payload(), key))
    return path
