"""Waivers: OpenVEX 0.2 documents (https://github.com/openvex/spec), read strictly.

A statement names one vulnerability and the packages it covers, by package URL: a Debian
binary package (`pkg:deb/debian/libssl3`) or its source package (`pkg:deb/debian/openssl`),
with a version and `arch`/`distro` qualifiers only when they must match. Nothing else
covers a package: `*`, a purl of another type or a bare name is refused, so a waiver can
never cover everything by accident.

`not_affected` (with one of OpenVEX's justifications) and `fixed` waive a finding;
`affected` and `under_investigation` annotate it and leave it counting.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from packageurl import PackageURL

from hardhost.advisories.sbom_read import ImagePackage
from hardhost.core.errors import SpecError
from hardhost.core.inputs import load_json

CONTEXT = "https://openvex.dev/ns/v0.2.0"
MAX_STATEMENTS = 10_000
_ID = re.compile(r"[A-Z][A-Z0-9]{1,15}-[0-9A-Za-z-]{1,48}")
# The keys OpenVEX 0.2's JSON schema allows (it forbids any other).
_DOCUMENT_KEYS = {"@context", "@id", "author", "role", "timestamp", "last_updated", "version",
                  "tooling", "statements"}
_STATEMENT_KEYS = {"@id", "version", "vulnerability", "timestamp", "last_updated", "products",
                   "status", "supplier", "status_notes", "justification", "impact_statement",
                   "action_statement", "action_statement_timestamp"}
_VULNERABILITY_KEYS = {"@id", "name", "description", "aliases"}
_PRODUCT_KEYS = {"@id", "identifiers", "hashes", "subcomponents"}
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


class VexStatus(StrEnum):
    NOT_AFFECTED = "not_affected"
    AFFECTED = "affected"
    FIXED = "fixed"
    UNDER_INVESTIGATION = "under_investigation"


class Justification(StrEnum):
    """OpenVEX 0.2's status justifications for `not_affected`."""

    COMPONENT_NOT_PRESENT = "component_not_present"
    VULNERABLE_CODE_NOT_PRESENT = "vulnerable_code_not_present"
    VULNERABLE_CODE_NOT_IN_EXECUTE_PATH = "vulnerable_code_not_in_execute_path"
    VULNERABLE_CODE_CANNOT_BE_CONTROLLED_BY_ADVERSARY = (
        "vulnerable_code_cannot_be_controlled_by_adversary")
    INLINE_MITIGATIONS_ALREADY_EXIST = "inline_mitigations_already_exist"


@dataclass(frozen=True)
class Product:
    name: str
    version: str  # "" matches any version
    arch: str  # "" matches any
    distro: str  # "" matches any

    def covers(self, package: ImagePackage, distro: str) -> bool:
        if self.name == package.name:
            version = package.version
        elif self.name == package.source:
            version = package.source_version
        else:
            return False
        return ((not self.version or self.version == version)
                and (not self.arch or self.arch in (package.architecture, "source"))
                and (not self.distro or self.distro == distro))


@dataclass(frozen=True)
class Waiver:
    origin: str  # FILE: statements[N]
    ids: tuple[str, ...]  # the vulnerability's name and aliases
    products: tuple[Product, ...]
    status: VexStatus
    justification: str
    impact_statement: str
    action_statement: str

    @property
    def waives(self) -> bool:
        return self.status in (VexStatus.NOT_AFFECTED, VexStatus.FIXED)

    def covers(self, issue: str, package: ImagePackage, distro: str) -> bool:
        return issue in self.ids and any(p.covers(package, distro) for p in self.products)

    def reason(self) -> str:
        detail = (self.justification or self.impact_statement or self.action_statement)
        return f"{self.status}: {detail}" if detail else str(self.status)


def read_vex(paths: Sequence[Path]) -> tuple[Waiver, ...]:
    """The statements of every document in `paths`, in order: a later statement about the
    same vulnerability and package overrides an earlier one."""
    waivers: list[Waiver] = []
    for path in paths:
        waivers.extend(_document(load_json(path, what="OpenVEX document"), str(path)))
    return tuple(waivers)


def _document(doc: Any, origin: str) -> list[Waiver]:
    if not isinstance(doc, dict):
        raise SpecError(origin, "(top level)", "not an OpenVEX document (a JSON object)")
    _known_keys(doc, _DOCUMENT_KEYS, origin, "")
    if doc.get("@context") != CONTEXT:
        raise SpecError(origin, "@context", f"must be {CONTEXT} (OpenVEX 0.2)")
    for key in ("@id", "author"):
        _text(doc, key, origin, key, required=True)
    _timestamp(doc, "timestamp", origin, "timestamp", required=True)
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SpecError(origin, "version", "missing or not a positive integer")
    statements = doc.get("statements")
    if not isinstance(statements, list) or not statements:
        raise SpecError(origin, "statements", "missing or empty")
    if len(statements) > MAX_STATEMENTS:
        raise SpecError(origin, "statements", f"more than {MAX_STATEMENTS}")
    return [_statement(s, origin, f"statements[{i}]") for i, s in enumerate(statements)]


def _statement(entry: Any, origin: str, where: str) -> Waiver:
    if not isinstance(entry, dict):
        raise SpecError(origin, where, "not an object")
    _known_keys(entry, _STATEMENT_KEYS, origin, f"{where}.")
    vulnerability = entry.get("vulnerability")
    if not isinstance(vulnerability, dict):
        raise SpecError(origin, f"{where}.vulnerability", "missing or not an object")
    _known_keys(vulnerability, _VULNERABILITY_KEYS, origin, f"{where}.vulnerability.")
    name = _text(vulnerability, "name", origin, f"{where}.vulnerability.name", required=True)
    aliases = vulnerability.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise SpecError(origin, f"{where}.vulnerability.aliases", "not a list of strings")
    for index, issue in enumerate([name, *aliases]):
        if not _ID.fullmatch(issue):
            key = "name" if index == 0 else f"aliases[{index - 1}]"
            raise SpecError(origin, f"{where}.vulnerability.{key}",
                            f"{issue[:60]!r} is not a vulnerability id such as CVE-2024-1234")
    _timestamp(entry, "timestamp", origin, f"{where}.timestamp", required=False)
    products = entry.get("products")
    if not isinstance(products, list) or not products:
        raise SpecError(origin, f"{where}.products", "missing or empty: a statement names "
                        "the packages it covers")
    parsed = tuple(_product(p, origin, f"{where}.products[{i}]")
                   for i, p in enumerate(products))
    raw_status = _text(entry, "status", origin, f"{where}.status", required=True)
    try:
        status = VexStatus(raw_status)
    except ValueError:
        raise SpecError(origin, f"{where}.status", f"{raw_status[:40]!r} is not one of "
                        f"{', '.join(VexStatus)}") from None
    justification = _text(entry, "justification", origin, f"{where}.justification")
    if justification and justification not in set(Justification):
        raise SpecError(origin, f"{where}.justification", f"{justification[:60]!r} is not one "
                        f"of {', '.join(Justification)}")
    if status is VexStatus.NOT_AFFECTED and not justification:
        raise SpecError(origin, f"{where}.justification", "not_affected needs one of "
                        f"{', '.join(Justification)}")
    if justification and status is not VexStatus.NOT_AFFECTED:
        raise SpecError(origin, f"{where}.justification", "only not_affected takes one")
    impact = _text(entry, "impact_statement", origin, f"{where}.impact_statement")
    action = _text(entry, "action_statement", origin, f"{where}.action_statement")
    if status is VexStatus.AFFECTED and not action:
        raise SpecError(origin, f"{where}.action_statement", "affected needs one (OpenVEX "
                        "0.2: what to do about it)")
    return Waiver(f"{origin}: {where}", (name, *aliases), parsed, status, justification,
                  impact, action)


def _product(entry: Any, origin: str, where: str) -> Product:
    if not isinstance(entry, dict):
        raise SpecError(origin, where, "not an object")
    _known_keys(entry, _PRODUCT_KEYS, origin, f"{where}.")
    if "subcomponents" in entry:
        # A waiver of part of a package is not something a Debian package scan can check.
        raise SpecError(origin, f"{where}.subcomponents", "not supported: name the Debian "
                        "package itself")
    identifiers = entry.get("identifiers", {})
    locator = entry.get("@id") or (identifiers.get("purl")
                                   if isinstance(identifiers, dict) else None)
    if not isinstance(locator, str) or not locator:
        raise SpecError(origin, f"{where}.@id", "missing: a package URL such as "
                        "pkg:deb/debian/openssl")
    try:
        purl = PackageURL.from_string(locator)
    except ValueError:
        raise SpecError(origin, f"{where}.@id", f"{locator[:80]!r} is not a package URL "
                        "(pkg:deb/debian/NAME); wildcards are refused") from None
    if purl.type != "deb" or purl.namespace != "debian" or purl.subpath:
        raise SpecError(origin, f"{where}.@id", f"{locator[:80]!r} is not a Debian package "
                        "(pkg:deb/debian/NAME)")
    qualifiers = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
    return Product(purl.name, purl.version or "", qualifiers.get("arch", ""),
                   qualifiers.get("distro", ""))


def _known_keys(data: dict[str, Any], allowed: set[str], origin: str, prefix: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(origin, f"{prefix}{unknown[0][:40]}", "not a key of OpenVEX 0.2")


def _text(data: dict[str, Any], key: str, origin: str, where: str, *,
          required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise SpecError(origin, where, "missing or not a string" if required else
                        "not a string")
    return value


def _timestamp(data: dict[str, Any], key: str, origin: str, where: str, *,
               required: bool) -> None:
    value = _text(data, key, origin, where, required=required)
    if value:
        try:
            if not _RFC3339.fullmatch(value):
                raise ValueError(value)
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(origin, where, f"{value[:40]!r} is not an RFC 3339 time") from None
