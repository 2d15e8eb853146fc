"""The SBOM, from a real dpkg database (this Debian machine's), validated by spdx-tools."""

from __future__ import annotations

import json
from pathlib import Path

from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from hardhost.builder import sbom


def validate(path: Path) -> list[str]:
    document = parse_file(str(path))
    return [m.validation_message for m in validate_full_spdx_document(document)]


def test_licence_translation() -> None:
    assert sbom.spdx_license("GPL-2+") == "GPL-2.0-or-later"
    assert sbom.spdx_license("LGPL-3+ or GPL-2+") == "LGPL-3.0-or-later OR GPL-2.0-or-later"
    assert sbom.spdx_license("BSD-3-clause and Expat") == "BSD-3-Clause AND MIT"
    for vague in ("GPL", "BSD-variant", "GPL-2+ with OpenSSL exception", "or", "GPL-2 or"):
        assert sbom.spdx_license(vague) == "NOASSERTION"


def test_sbom_of_this_machine_is_valid_spdx(tmp_path: Path) -> None:
    packages = sbom.installed_packages(Path("/"))
    names = {p.name for p in packages}
    assert {"dpkg", "coreutils", "bash"} <= names
    path = tmp_path / "sbom.spdx.json"
    sbom.write(path, sbom.document("host", packages, "2026-01-01T00:00:00Z", suite="bookworm"))
    assert validate(path) == []
    doc = json.loads(path.read_text())
    dpkg = next(p for p in doc["packages"] if p["name"] == "dpkg")
    assert dpkg["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/debian/dpkg@")
    assert "distro=debian-12" in dpkg["externalRefs"][0]["referenceLocator"]
    assert any(p["licenseDeclared"] != "NOASSERTION" for p in doc["packages"])


def test_same_packages_give_the_same_sbom() -> None:
    packages = sbom.installed_packages(Path("/"))
    first = sbom.document("host", packages, "2026-01-01T00:00:00Z", suite="bookworm")
    assert first == sbom.document("host", list(reversed(packages))[::-1],
                                  "2026-01-01T00:00:00Z", suite="bookworm")
    assert sbom.package_list_digest(packages) == sbom.package_list_digest(sorted(
        packages, key=lambda p: (p.name, p.architecture)))


def test_source_field_forms() -> None:
    assert sbom.source_field("", "bash", "5.2.15-2+b7") == ("bash", "5.2.15-2+b7")
    assert sbom.source_field("bash (5.2.15-2)", "bash", "5.2.15-2+b7") == ("bash", "5.2.15-2")
    assert sbom.source_field("glibc", "libc6", "2.36-9+deb12u4") == ("glibc", "2.36-9+deb12u4")
    assert sbom.source_field("gcc-12 (12.2.0-14)", "libgcc-s1", "12.2.0-14") == (
        "gcc-12", "12.2.0-14")


def test_purl_names_the_release_and_the_source() -> None:
    same = sbom.Package("dpkg", "1.21.22", "amd64", "dpkg", "GPL-2.0-or-later")
    assert same.purl("bookworm") == "pkg:deb/debian/dpkg@1.21.22?arch=amd64&distro=debian-12"
    other = sbom.Package("libc6", "2.36-9+deb12u4", "amd64", "glibc", "NOASSERTION")
    assert other.purl("trixie") == ("pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64"
                                    "&distro=debian-13&upstream=glibc")
    binnmu = sbom.Package("bash", "5.2.15-2+b7", "amd64", "bash", "NOASSERTION", "5.2.15-2")
    assert binnmu.purl("bookworm").endswith("&upstream=bash%405.2.15-2")
    epoch = sbom.Package("libgcc-s1", "12.2.0-14", "amd64", "gcc-12", "NOASSERTION")
    assert "upstream=gcc-12" in epoch.purl("bookworm")


def test_sbom_reads_back_with_sources_and_release(tmp_path: Path) -> None:
    from hardhost.advisories.sbom_read import read_sbom

    packages = sbom.installed_packages(Path("/"))
    path = tmp_path / "sbom.spdx.json"
    sbom.write(path, sbom.document("host", packages, "2026-01-01T00:00:00Z", suite="bookworm"))
    inventory = read_sbom(path)
    assert inventory.release == "bookworm"
    read = {(p.name, p.architecture): p for p in inventory.packages}
    assert len(read) == len(packages)
    for package in packages:
        back = read[package.name, package.architecture]
        assert (back.version, back.source, back.source_version) == (
            package.version, package.source, package.effective_source_version)
