"""An SPDX 2.3 SBOM of the Debian packages installed in the image tree.

Packages come from dpkg's status database, licences from machine-readable (DEP-5) copyright
files where a package has one; both are read with python-debian.

Each package's purl names what Debian's advisories name: the release (`distro=debian-12`)
and, where it differs from the binary package, the source package and its version
(`upstream=glibc`, `upstream=bash@5.2.15-2`), as purl-spec's deb type has them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian import copyright as debian_copyright
from debian import deb822
from packageurl import PackageURL

from hardhost.advisories.releases import distro
from hardhost.advisories.sbom_read import ImagePackage, Inventory

# DEP-5 short names with an exact SPDX identifier. Anything else is NOASSERTION: an SBOM
# must not claim a licence it cannot name precisely.
_SPDX_IDS = {
    "gpl-1+": "GPL-1.0-or-later", "gpl-2": "GPL-2.0-only", "gpl-2+": "GPL-2.0-or-later",
    "gpl-2.0": "GPL-2.0-only", "gpl-2.0+": "GPL-2.0-or-later", "gpl-3": "GPL-3.0-only",
    "gpl-3+": "GPL-3.0-or-later", "lgpl-2": "LGPL-2.0-only", "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only", "lgpl-2.1+": "LGPL-2.1-or-later", "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later", "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause", "apache-2.0": "Apache-2.0", "expat": "MIT", "mit": "MIT",
    "zlib": "Zlib", "cc0": "CC0-1.0", "cc0-1.0": "CC0-1.0", "isc": "ISC",
    "mpl-2.0": "MPL-2.0", "artistic": "Artistic-1.0-Perl", "openssl": "OpenSSL",
}
_OPERATORS = {"or": "OR", "and": "AND"}
_IDSTRING = re.compile(r"[^A-Za-z0-9.\-]+")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    source: str
    license: str  # an SPDX expression or NOASSERTION
    # dpkg's `Source: NAME (VERSION)` differs from the binary's version after a binNMU or
    # for packages versioned apart from their source (libgcc-s1 of gcc-12).
    source_version: str = ""

    @property
    def effective_source_version(self) -> str:
        return self.source_version or self.version

    def purl(self, suite: str) -> str:
        """`pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-N[&upstream=SRC[@VER]]`."""
        qualifiers = {"arch": self.architecture, "distro": distro(suite)}
        if self.effective_source_version != self.version:
            qualifiers["upstream"] = f"{self.source}@{self.effective_source_version}"
        elif self.source != self.name:
            qualifiers["upstream"] = self.source
        return str(PackageURL(type="deb", namespace="debian", name=self.name,
                              version=self.version, qualifiers=qualifiers).to_string())


def source_field(value: str, binary: str, version: str) -> tuple[str, str]:
    """The source package and its version from dpkg's `Source` field: absent means the
    binary's own name and version; `NAME (VERSION)` gives a version of its own."""
    words = value.split()
    if not words:
        return binary, version
    if len(words) == 2 and words[1].startswith("(") and words[1].endswith(")"):
        return words[0], words[1][1:-1]
    return words[0], version


def spdx_license(synopsis: str) -> str:
    """Translate a DEP-5 licence synopsis to an SPDX expression, or NOASSERTION."""
    words = synopsis.replace(",", " ").split()
    out: list[str] = []
    for word in words:
        lower = word.lower()
        if lower in _OPERATORS and out and out[-1] not in _OPERATORS.values():
            out.append(_OPERATORS[lower])
        elif lower in _SPDX_IDS and (not out or out[-1] in _OPERATORS.values()):
            out.append(_SPDX_IDS[lower])
        else:
            return "NOASSERTION"
    if not out or out[-1] in _OPERATORS.values():
        return "NOASSERTION"
    return " ".join(out)


_HEAD_BYTES = 64 * 1024


def _license_of(tree: Path, package: str) -> str:
    path = tree / "usr/share/doc" / package / "copyright"
    if not path.is_file() or path.is_symlink():
        return "NOASSERTION"
    with path.open("rb") as f:
        head = f.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    if not head.startswith("Format:"):
        return "NOASSERTION"  # not machine-readable (DEP-5)
    # The `Files: *` paragraph comes first; whole paragraphs from the head are enough, and
    # some copyright files run to megabytes.
    head = head if len(head) < _HEAD_BYTES else head[: head.rfind("\n\n") + 1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = debian_copyright.Copyright(head.splitlines(keepends=True), strict=False)
    except (debian_copyright.Error, ValueError):
        return "NOASSERTION"  # not machine-readable
    paragraph = parsed.find_files_paragraph("*")
    licence: debian_copyright.License | None = (
        # python-debian types the field as its descriptor; the value read is a License.
        paragraph.license if paragraph is not None else None)  # type: ignore[assignment]
    if licence is None:
        return "NOASSERTION"
    return spdx_license(licence.synopsis)


def installed_packages(tree: Path) -> list[Package]:
    logging.getLogger("debian").setLevel(logging.ERROR)  # python-debian narrates its fixes
    packages = []
    with (tree / "var/lib/dpkg/status").open(encoding="utf-8") as f:
        for para in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
            if not para.get("Status", "").endswith(" installed"):
                continue
            name, version = para["Package"], para["Version"]
            source, source_version = source_field(para.get("Source", ""), name, version)
            packages.append(Package(name, version, para["Architecture"], source,
                                    _license_of(tree, name),
                                    "" if source_version == version else source_version))
    return sorted(packages, key=lambda p: (p.name, p.architecture))


def package_list_digest(packages: list[Package]) -> str:
    lines = "".join(f"{p.name}\t{p.version}\t{p.architecture}\n" for p in packages)
    return hashlib.sha256(lines.encode()).hexdigest()


def _spdx_id(package: Package) -> str:
    return "SPDXRef-Package-" + _IDSTRING.sub("-", f"{package.name}-{package.architecture}")


def document(name: str, packages: list[Package], created: str, *, suite: str
             ) -> dict[str, Any]:
    """The SPDX 2.3 JSON document of an image of Debian `suite`. Its namespace derives from
    the package list, so the same package set always gives the same SBOM."""
    digest = package_list_digest(packages)
    namespace = f"https://spdx.org/spdxdocs/hardhost-{name}-{uuid.UUID(digest[:32])}"
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"hardhost-{name}",
        "documentNamespace": namespace,
        "creationInfo": {"created": created, "creators": ["Tool: hardhost"]},
        "documentDescribes": [_spdx_id(p) for p in packages],
        "packages": [
            {
                "SPDXID": _spdx_id(p),
                "name": p.name,
                "versionInfo": p.version,
                "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": p.license,
                "copyrightText": "NOASSERTION",
                # Older readers took the first word after "package" as the source.
                "sourceInfo": f"built from the Debian source package {p.source} "
                              f"{p.effective_source_version}",
                "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER",
                                  "referenceType": "purl",
                                  "referenceLocator": p.purl(suite)}],
            }
            for p in packages
        ],
    }


def inventory(name: str, packages: list[Package], *, suite: str) -> Inventory:
    """The packages as a scan reads them back from the SBOM `document` writes."""
    return Inventory(f"the packages of {name}", f"hardhost-{name}", suite, tuple(
        ImagePackage(p.name, p.version, p.architecture, p.source, p.effective_source_version,
                     p.purl(suite)) for p in packages))


def write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
