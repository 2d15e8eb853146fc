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
    sbom.write(path, sbom.document("host", packages, "2026-01-01T00:00:00Z"))
    assert validate(path) == []
    doc = json.loads(path.read_text())
    dpkg = next(p for p in doc["packages"] if p["name"] == "dpkg")
    assert dpkg["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/debian/dpkg@")
    assert any(p["licenseDeclared"] != "NOASSERTION" for p in doc["packages"])


def test_same_packages_give_the_same_sbom() -> None:
    packages = sbom.installed_packages(Path("/"))
    first = sbom.document("host", packages, "2026-01-01T00:00:00Z")
    assert first == sbom.document("host", list(reversed(packages))[::-1], "2026-01-01T00:00:00Z")
    assert sbom.package_list_digest(packages) == sbom.package_list_digest(sorted(
        packages, key=lambda p: (p.name, p.architecture)))
