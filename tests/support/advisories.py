"""A small image SBOM and the tracker fixture for the scan tests: the versions are real
bookworm versions of the source packages the fixture names (tests/data/feed/README.md)."""

from __future__ import annotations

from pathlib import Path

from hardhost.builder import sbom
from tests.support.paths import REPO

FEED = REPO / "tests/data/feed/debian-security-fixture.json"
SARIF_SCHEMA = REPO / "tests/data/sarif/sarif-schema-2.1.0.json"
OPENVEX_SCHEMA = REPO / "tests/data/openvex/openvex_json_schema.json"

PACKAGES = (
    sbom.Package("openssl", "3.0.15-1~deb12u1", "amd64", "openssl", "Apache-2.0"),
    sbom.Package("libssl3", "3.0.15-1~deb12u1", "amd64", "openssl", "Apache-2.0"),
    sbom.Package("openssh-server", "1:9.2p1-2+deb12u5", "amd64", "openssh", "NOASSERTION"),
    sbom.Package("openssh-client", "1:9.2p1-2+deb12u5", "amd64", "openssh", "NOASSERTION"),
    sbom.Package("libc6", "2.36-9+deb12u10", "amd64", "glibc", "NOASSERTION"),
    sbom.Package("systemd", "252.38-1~deb12u1", "amd64", "systemd", "NOASSERTION"),
    sbom.Package("udev", "252.38-1~deb12u1", "amd64", "systemd", "NOASSERTION"),
    sbom.Package("liblzma5", "5.4.1-1", "amd64", "xz-utils", "NOASSERTION"),
    sbom.Package("zlib1g", "1:1.2.13.dfsg-1", "amd64", "zlib", "Zlib"),
    # A binNMU: the binary's version is not its source's.
    sbom.Package("bash", "5.2.15-2+b7", "amd64", "bash", "GPL-3.0-or-later", "5.2.15-2"),
)


def write_sbom(path: Path, packages: tuple[sbom.Package, ...] = PACKAGES,
               suite: str = "bookworm") -> Path:
    sbom.write(path, sbom.document("scan-test", list(packages), "2026-01-01T00:00:00Z",
                                   suite=suite))
    return path
