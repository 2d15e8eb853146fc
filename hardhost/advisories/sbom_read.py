"""The Debian packages of an image, read from its SPDX SBOM (hardhost's or another tool's):
each binary package with its source package and source version, as advisories name them.

The source comes from the purl's `upstream=SRC[@VERSION]` qualifier (purl-spec's deb type),
then from hardhost's older `sourceInfo` ("built from the Debian source package SRC"), then
the binary's own name. The release comes from the purls' `distro` qualifier.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.debian_support import Version
from packageurl import PackageURL

from hardhost.advisories.releases import suite_of
from hardhost.core.errors import SpecError, UsageError
from hardhost.core.inputs import LARGE_FILE, load_json
from hardhost.image import layout

log = logging.getLogger(__name__)

_SOURCE_INFO = "built from the Debian source package "
MAX_PACKAGES = 100_000


@dataclass(frozen=True)
class ImagePackage:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    purl: str


@dataclass(frozen=True)
class Inventory:
    origin: str
    name: str  # the SBOM's document name
    release: str  # Debian code name: bookworm
    packages: tuple[ImagePackage, ...]
    skipped: int = 0  # packages that are not Debian packages (no deb purl)

    def sources(self) -> set[str]:
        return {p.source for p in self.packages}


def sbom_path(target: Path) -> Path:
    """The SBOM of an image folder, or `target` itself when it is a file."""
    return target / layout.SBOM if target.is_dir() else target


def read_sbom(target: Path, *, release: str | None = None) -> Inventory:
    """The packages of the SBOM at `target` (an image folder or the file). `release`
    overrides the purls' distro, and is needed when they carry none."""
    path = sbom_path(target)
    doc = load_json(path, what="SBOM", limit=LARGE_FILE)
    origin = str(path)
    if not isinstance(doc, dict) or not str(doc.get("spdxVersion", "")).startswith("SPDX-2."):
        raise SpecError(origin, "spdxVersion", "not an SPDX 2 JSON document")
    raw = doc.get("packages", [])
    if not isinstance(raw, list) or len(raw) > MAX_PACKAGES:
        raise SpecError(origin, "packages", f"not a list of at most {MAX_PACKAGES} packages")
    packages: list[ImagePackage] = []
    distros: Counter[str] = Counter()
    skipped = 0
    for index, entry in enumerate(raw):
        read = _package(entry, origin, f"packages[{index}]")
        if read is None:
            skipped += 1
            continue
        package, distro = read
        packages.append(package)
        if distro:
            distros[distro] += 1
    if release is None:
        if len(distros) > 1:
            raise SpecError(origin, "packages", f"purls name several releases "
                            f"({', '.join(sorted(distros))}); pass --release SUITE")
        if not distros:
            raise UsageError(f"{origin}: no purl names its Debian release (distro=); pass "
                             "--release SUITE (an SBOM made before hardhost recorded it)")
        release = suite_of(next(iter(distros)), origin=origin)
    name = doc.get("name")
    return Inventory(origin, name if isinstance(name, str) else "", release,
                     tuple(sorted(packages, key=lambda p: (p.name, p.architecture))), skipped)


def _package(entry: Any, origin: str, where: str) -> tuple[ImagePackage, str] | None:
    if not isinstance(entry, dict):
        raise SpecError(origin, where, "not an object")
    refs = entry.get("externalRefs", [])
    if not isinstance(refs, list):
        raise SpecError(origin, f"{where}.externalRefs", "not a list")
    locators = [r.get("referenceLocator") for r in refs
                if isinstance(r, dict) and r.get("referenceType") == "purl"]
    purls = [loc for loc in locators if isinstance(loc, str) and loc.startswith("pkg:deb/")]
    if not purls:
        return None
    try:
        purl = PackageURL.from_string(purls[0])
    except ValueError as exc:
        raise SpecError(origin, f"{where}.externalRefs", f"not a package URL: {exc}") from None
    if not purl.version:
        raise SpecError(origin, f"{where}.externalRefs", "the purl has no version")
    qualifiers = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
    source, source_version = purl.name, purl.version
    upstream = qualifiers.get("upstream", "")
    info = entry.get("sourceInfo")
    if upstream:
        source, _, given = upstream.partition("@")
        source_version = given or purl.version
    elif isinstance(info, str) and info.startswith(_SOURCE_INFO):
        words = info.removeprefix(_SOURCE_INFO).split()
        source = words[0] if words else source
    for value, key in ((purl.version, "version"), (source_version, "source version")):
        try:
            Version(value)
        except ValueError:
            raise SpecError(origin, f"{where}.externalRefs",
                            f"the {key} {value[:60]!r} is not a Debian version") from None
    package = ImagePackage(purl.name, purl.version, qualifiers.get("arch", ""), source,
                           source_version, purls[0])
    return package, qualifiers.get("distro", "")
