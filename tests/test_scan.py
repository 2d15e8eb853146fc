"""hardhost scan against the tracker fixture: every verdict, the policy's exit codes, VEX
waivers, and the outputs checked by their formats' own definitions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from hardhost.advisories.feed import Urgency, read_feed
from hardhost.advisories.sbom_read import read_sbom
from hardhost.advisories.scan import Level, Policy, State, scan
from hardhost.advisories.vex import read_vex
from hardhost.cli.main import main
from hardhost.core.errors import UsageError
from tests.support.advisories import FEED, OPENVEX_SCHEMA, PACKAGES, SARIF_SCHEMA, write_sbom
from tests.support.keys import SigningKeys
from tests.support.manifests import sample_manifest, write_signed

FAILING_AT = {
    "low": {"CVE-2025-4802", "CVE-2025-32728", "CVE-2025-9230", "CVE-2024-13176"},
    "medium": {"CVE-2025-32728", "CVE-2025-9230"},
    "high": {"CVE-2025-9230"},
    "never": set(),
}


def vex_doc(*statements: dict[str, object]) -> dict[str, object]:
    return {"@context": "https://openvex.dev/ns/v0.2.0",
            "@id": "https://example.com/vex/1", "author": "Platform team",
            "timestamp": "2026-01-02T03:04:05Z", "version": 1, "statements": list(statements)}


def statement(name: str, products: list[str], status: str, **extra: str) -> dict[str, object]:
    return {"vulnerability": {"name": name}, "products": [{"@id": p} for p in products],
            "status": status, **extra}


@pytest.fixture
def sbom_file(tmp_path: Path) -> Path:
    return write_sbom(tmp_path / "sbom.spdx.json")


def test_the_test_sbom_is_valid_spdx(sbom_file: Path) -> None:
    document = parse_file(str(sbom_file))
    assert [m.validation_message for m in validate_full_spdx_document(document)] == []


def test_every_verdict(sbom_file: Path) -> None:
    inventory = read_sbom(sbom_file)
    feed = read_feed(FEED, release=inventory.release, wanted=inventory.sources())
    result = scan(inventory, feed, Policy())
    found = {f.id: f for f in result.findings}
    # Fixed at or before the installed version, or never affected ("0"): no finding.
    for absent in ("CVE-2025-0395", "CVE-2025-26465", "CVE-2024-5535", "CVE-2023-7008",
                   "CVE-2024-3094"):
        assert absent not in found
    # Fixed in a later point release: affected, no-DSA or not.
    assert found["CVE-2025-4802"].state is State.AFFECTED
    assert found["CVE-2025-4802"].fixed_version == "2.36-9+deb12u11"
    assert not found["CVE-2025-4802"].minor
    assert found["CVE-2024-13176"].state is State.AFFECTED
    assert {p.name for p in found["CVE-2025-9230"].packages} == {"openssl", "libssl3"}
    assert found["CVE-2025-9230"].urgency is Urgency.HIGH
    # Open without a fix, and undetermined.
    assert found["CVE-2026-4105"].state is State.UNFIXED
    assert found["CVE-2026-4105"].fixed_version == ""
    assert found["CVE-2026-40225"].state is State.UNDETERMINED
    # Shown apart: unimportant, and no DSA with its reason.
    assert found["CVE-2010-4756"].minor == "unimportant"
    assert found["CVE-2023-51767"].minor == "unimportant"
    assert found["CVE-2026-29111"].minor == "no DSA: postponed"
    assert found["CVE-2023-45853"].minor == "no DSA: ignored"
    assert {p.name for p in found["CVE-2023-45853"].packages} == {"zlib1g"}
    assert len(found) == 10
    assert result.counts() == {"affected": 4, "unfixed": 1, "undetermined": 1, "minor": 4,
                               "waived": 0, "failing": 4}


@pytest.mark.parametrize("level", list(FAILING_AT))
def test_fail_on_levels(sbom_file: Path, level: str, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    code = main(["scan", str(sbom_file), "--feed", str(FEED), "--fail-on", level, "--json"])
    report = json.loads(capsys.readouterr().out)
    failing = {f["id"] for f in report["findings"] if f["fails"]}
    assert failing == FAILING_AT[level]
    assert code == (1 if failing else 0)
    assert report["passed"] is (not failing)


def test_fail_on_unfixed_adds_open_and_undetermined(sbom_file: Path) -> None:
    inventory = read_sbom(sbom_file)
    feed = read_feed(FEED, release="bookworm", wanted=inventory.sources())
    high = scan(inventory, feed, Policy(Level.HIGH, fail_unfixed=True))
    # Not assigned counts as high; the open medium issue does not reach high.
    assert {f.id for f in high.failing()} == {"CVE-2025-9230", "CVE-2026-40225"}
    medium = scan(inventory, feed, Policy(Level.MEDIUM, fail_unfixed=True))
    assert {f.id for f in medium.failing()} == FAILING_AT["medium"] | {
        "CVE-2026-40225", "CVE-2026-4105"}
    # Minor ones never fail.
    assert not {"CVE-2026-29111", "CVE-2023-45853"} & {f.id for f in medium.failing()}


def test_versions_are_debian_ordered_not_strings(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"

    def entry(fixed: str) -> dict[str, object]:
        return {"releases": {"bookworm": {"status": "resolved", "fixed_version": fixed,
                                          "urgency": "high"}}}
    feed.write_text(json.dumps({
        # u10 is newer than u9, though "u10" < "u9" as text.
        "glibc": {"CVE-2024-0001": entry("2.36-9+deb12u9")},
        # ~ sorts before anything: 3.0.15-1~deb12u1 is older than 3.0.15-1.
        "openssl": {"CVE-2024-0002": entry("3.0.15-1")},
        # An epoch outranks everything after it.
        "openssh": {"CVE-2024-0003": entry("9.9p9-9")},
        "zlib": {"CVE-2024-0004": entry("1:1.2.13.dfsg-1.1")},
        # Matched by the source version 5.2.15-2, not the binNMU's 5.2.15-2+b7.
        "bash": {"CVE-2024-0005": entry("5.2.15-2+b1")},
        # Advisories are per source package: a binary's name matches nothing.
        "libssl3": {"CVE-2024-0006": entry("9.9-9")},
    }))
    inventory = read_sbom(write_sbom(tmp_path / "sbom.json"))
    result = scan(inventory, read_feed(feed, release="bookworm"), Policy())
    assert {f.id for f in result.findings} == {"CVE-2024-0002", "CVE-2024-0004",
                                                "CVE-2024-0005"}


def test_waived_cve_is_shown_with_its_justification(sbom_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    vex = tmp_path / "waivers.json"
    vex.write_text(json.dumps(vex_doc(statement(
        "CVE-2025-9230", ["pkg:deb/debian/openssl"], "not_affected",
        justification="vulnerable_code_not_in_execute_path"))))
    code = main(["scan", str(sbom_file), "--feed", str(FEED), "--fail-on", "high",
                 "--vex", str(vex)])
    out = capsys.readouterr().out
    assert code == 0
    waived = out.split("Waived by VEX:")[1]
    assert "CVE-2025-9230" in waived
    assert "not_affected: vulnerable_code_not_in_execute_path" in waived
    assert "1 waived" in out


def test_a_waiver_must_cover_every_package_of_the_source(sbom_file: Path, tmp_path: Path
                                                         ) -> None:
    vex = tmp_path / "waivers.json"
    vex.write_text(json.dumps(vex_doc(
        statement("CVE-2025-9230", ["pkg:deb/debian/libssl3"], "fixed"),
        statement("CVE-2025-9230", ["pkg:deb/debian/openssl@9.9?distro=debian-12"], "fixed"),
        statement("CVE-2025-9230", ["pkg:deb/debian/openssl?distro=debian-11"], "fixed"))))
    inventory = read_sbom(sbom_file)
    result = scan(inventory, read_feed(FEED, release="bookworm"), Policy(Level.HIGH),
                  read_vex([vex]))
    assert [f.id for f in result.failing()] == ["CVE-2025-9230"]
    assert len(result.unused_waivers) == 3


def test_outputs_follow_their_formats(sbom_file: Path, tmp_path: Path) -> None:
    vex = tmp_path / "waivers.json"
    vex.write_text(json.dumps(vex_doc(statement(
        "CVE-2025-4802", ["pkg:deb/debian/glibc"], "not_affected",
        justification="vulnerable_code_not_present"))))
    paths = {name: tmp_path / f"out.{name}" for name in ("sarif", "openvex", "junit")}
    code = main(["scan", str(sbom_file), "--feed", str(FEED), "--vex", str(vex),
                 *(arg for name, path in paths.items() for arg in (f"--{name}", str(path)))])
    assert code == 1
    sarif = json.loads(paths["sarif"].read_text())
    jsonschema.Draft7Validator(json.loads(SARIF_SCHEMA.read_text())).validate(sarif)
    results = sarif["runs"][0]["results"]
    assert len(results) == 10
    assert {r["ruleId"] for r in results if r["level"] == "error"} == FAILING_AT["low"] - {
        "CVE-2025-4802"}
    suppressed = [r for r in results if "suppressions" in r]
    assert [r["ruleId"] for r in suppressed] == ["CVE-2025-4802"]
    assert "vulnerable_code_not_present" in suppressed[0]["suppressions"][0]["justification"]
    # The OpenVEX output is OpenVEX 0.2: its schema, and the strict reader --vex takes.
    openvex = json.loads(paths["openvex"].read_text())
    jsonschema.Draft202012Validator(json.loads(OPENVEX_SCHEMA.read_text())).validate(openvex)
    assert openvex["@context"] == "https://openvex.dev/ns/v0.2.0"
    assert {"@id", "author", "timestamp", "version", "statements"} <= set(openvex)
    statements = read_vex([paths["openvex"]])
    assert len(statements) == 10
    glibc = next(s for s in statements if s.ids[0] == "CVE-2025-4802")
    assert (glibc.status, glibc.justification) == ("not_affected",
                                                   "vulnerable_code_not_present")
    suite = ET.parse(paths["junit"]).getroot()
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures")) == ("10", "3")
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == FAILING_AT["low"] - {"CVE-2025-4802"}


def test_an_older_sbom_needs_the_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    # As hardhost wrote SBOMs before purls named the release and the source.
    doc = json.loads(write_sbom(tmp_path / "new.json").read_text())
    for package in doc["packages"]:
        ref = package["externalRefs"][0]
        ref["referenceLocator"] = ref["referenceLocator"].split("?")[0] + "?arch=amd64"
        package["sourceInfo"] = " ".join(package["sourceInfo"].split()[:-1])
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    assert main(["scan", str(old), "--feed", str(FEED)]) == 2
    assert "pass --release SUITE" in capsys.readouterr().err
    assert main(["scan", str(old), "--feed", str(FEED), "--release", "bookworm",
                 "--fail-on", "high", "--json"]) == 1
    failing = [f["id"] for f in json.loads(capsys.readouterr().out)["findings"] if f["fails"]]
    assert failing == ["CVE-2025-9230"]


def test_an_image_folder_is_scanned_through_its_sbom(tmp_path: Path) -> None:
    write_sbom(tmp_path / "sbom.spdx.json")
    assert main(["scan", str(tmp_path), "--feed", str(FEED), "--fail-on", "never"]) == 0


def test_trust_key_scans_only_the_sbom_the_manifest_signs(
        tmp_path: Path, signing_keys: SigningKeys, capsys: pytest.CaptureFixture[str]) -> None:
    sbom = write_sbom(tmp_path / "sbom.spdx.json")
    write_signed(tmp_path, dataclasses.replace(
        sample_manifest(), sbom_digest=hashlib.sha256(sbom.read_bytes()).hexdigest()),
        signing_keys.key)
    args = ["scan", str(tmp_path), "--feed", str(FEED), "--fail-on", "never", "--trust-key",
            str(signing_keys.public)]
    assert main(args) == 0
    # An SBOM swapped for one that lists nothing vulnerable is refused, not scanned.
    write_sbom(sbom, PACKAGES[-1:])
    assert main(args) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the SBOM digest the manifest signs" in err[0], err
    # Without --trust-key the folder's SBOM is scanned as it is, and the user is told.
    assert main(args[:-2]) == 0
    assert "not checked against the signed manifest" in capsys.readouterr().err


def test_no_findings_no_openvex(tmp_path: Path) -> None:
    from hardhost.builder import sbom

    clean = sbom.Package("zlib1g", "1:1.3-1", "amd64", "zlib-ng", "Zlib")
    path = write_sbom(tmp_path / "sbom.json", (clean,))
    stale = tmp_path / "out.openvex"
    stale.write_text("from an earlier scan")
    assert main(["scan", str(path), "--feed", str(FEED), "--openvex", str(stale)]) == 0
    assert not stale.exists()


def test_the_openvex_schema_agrees_with_the_reader(tmp_path: Path) -> None:
    # Documents the reader refuses are refused by OpenVEX's own schema too.
    validator = jsonschema.Draft202012Validator(json.loads(OPENVEX_SCHEMA.read_text()))
    base = vex_doc(statement("CVE-2025-9230", ["pkg:deb/debian/openssl"], "not_affected",
                             justification="vulnerable_code_not_present"))
    validator.validate(base)
    extra = json.loads(json.dumps(base))
    extra["statements"][0]["waive_everything"] = True
    empty = {**base, "statements": []}
    for document in (extra, empty):
        assert not validator.is_valid(document)
        path = tmp_path / "vex.json"
        path.write_text(json.dumps(document))
        with pytest.raises(UsageError):
            read_vex([path])
