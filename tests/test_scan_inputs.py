"""hardhost scan's inputs read as hostile: a malformed feed, SBOM or VEX document is one
line and exit 2, a feed other than the pinned one is exit 4, and nothing from them reaches
the terminal unescaped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hardhost.advisories import feed as feed_module
from hardhost.advisories.feed import read_feed
from hardhost.cli.main import main
from hardhost.core.errors import UsageError
from tests.support.advisories import FEED, write_sbom


@pytest.fixture
def sbom_file(tmp_path: Path) -> Path:
    return write_sbom(tmp_path / "sbom.spdx.json")


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hardhost: "), err
    assert "Traceback" not in err
    return err.strip()


def scan(sbom_file: Path, feed: Path, *extra: str) -> int:
    return main(["scan", str(sbom_file), "--feed", str(feed), *extra])


MALFORMED = {
    "duplicate issue key": ('{"openssl": {"CVE-2024-1": {"releases": {}}, '
                            '"CVE-2024-1": {"releases": {}}}}',
                            "openssl: JSON key \"CVE-2024-1\" appears twice"),
    "duplicate source": ('{"zlib": {}, "zlib": {}}', "zlib: source package named twice"),
    "duplicate deep key": ('{"openssl": {"CVE-2024-1": {"releases": {"bookworm": '
                           '{"status": "open", "status": "resolved"}}}}}',
                           'JSON key "status" appears twice'),
    "bad status": ('{"openssl": {"CVE-2024-1": {"releases": {"bookworm": '
                   '{"status": "fine"}}}}}',
                   "openssl.CVE-2024-1.releases.bookworm.status: \"fine\" is not one of"),
    "bad urgency": ('{"glibc": {"CVE-2024-1": {"releases": {"bookworm": '
                    '{"status": "open", "urgency": "\\u001b[2J"}}}}}',
                    "glibc.CVE-2024-1.releases.bookworm.urgency: \"\\u001b[2J\""),
    "bad version": ('{"glibc": {"CVE-2024-1": {"releases": {"bookworm": '
                    '{"status": "resolved", "fixed_version": "not a version!"}}}}}',
                    "fixed_version: \"not a version!\" is not a Debian version"),
    "resolved without fix": ('{"glibc": {"CVE-2024-1": {"releases": {"bookworm": '
                             '{"status": "resolved"}}}}}', "resolved without a fixed version"),
    "not an id": ('{"glibc": {"*": {"releases": {}}}}', "glibc.*: not an issue id"),
    "bad source name": ('{"Glibc\\u001b": {}}', "not a Debian source package name"),
    "nan": ('{"glibc": {"CVE-2024-1": {"debianbug": NaN, "releases": {}}}}',
            "NaN is not a JSON number"),
    "bad bug": ('{"glibc": {"CVE-2024-1": {"debianbug": "x", "releases": {}}}}',
                "glibc.CVE-2024-1.debianbug: not a bug number"),
    "not json": ('{"glibc": {', "glibc: not valid JSON"),
    "trailing data": ('{} {}', "data after the end"),
    "a list": ('[]', "(top level): not a JSON object"),
    "deep": ('{"zlib": ' + "[" * 100_000 + "]" * 100_000 + "}", "zlib: JSON nested too deeply"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_feed_is_one_line_and_exit_2(case: str, sbom_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = MALFORMED[case]
    feed = tmp_path / "feed.json"
    feed.write_text(text)
    assert scan(sbom_file, feed) == 2
    error = one_line_error(capsys)
    assert error.startswith(f"hardhost: {feed}: ")
    assert expected in error
    assert "\x1b" not in error


def test_a_malformed_entry_of_a_package_the_image_lacks_is_still_json(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    # Duplicates and wrong types in a package no scan asks for cannot change a verdict;
    # broken JSON anywhere is refused.
    feed.write_text('{"other": {"CVE-2024-1": {"releases": 5}, "CVE-2024-1": 1}}')
    assert read_feed(feed, release="bookworm", wanted={"glibc"}).advisories == {}
    with pytest.raises(UsageError, match="other: JSON key"):
        read_feed(feed, release="bookworm")
    feed.write_text('{"other": {"x": [}, "glibc": {}}')
    with pytest.raises(UsageError, match="other: not valid JSON"):
        read_feed(feed, release="bookworm", wanted={"glibc"})


def test_a_huge_feed_is_refused_before_it_is_parsed(sbom_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(feed_module, "FEED_LIMIT", 1000)
    feed = tmp_path / "feed.json"
    feed.write_text('{"zlib": {}' + " " * 2000 + "}")
    assert scan(sbom_file, feed) == 2
    assert "larger than 1000 bytes" in one_line_error(capsys)


def test_feed_digest_is_reported_and_can_be_pinned(sbom_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    digest = hashlib.sha256(FEED.read_bytes()).hexdigest()
    assert scan(sbom_file, FEED, "--feed-sha256", digest.upper(), "--fail-on", "never",
                "--json", "--feed-date", "2026-11-30") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["feed"]["sha256"] == digest
    assert report["feed"]["date"] == "2026-11-30T00:00:00Z"
    assert scan(sbom_file, FEED, "--feed-sha256", "0" * 64) == 4
    assert f"sha256 {digest} is not the pinned" in one_line_error(capsys)
    assert scan(sbom_file, FEED, "--feed-sha256", "abc") == 2
    one_line_error(capsys)


def vex(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "vex.json"
    path.write_text(json.dumps(document))
    return path


def good_vex(**change: object) -> dict[str, object]:
    statement: dict[str, object] = {
        "vulnerability": {"name": "CVE-2025-9230"},
        "products": [{"@id": "pkg:deb/debian/openssl"}], "status": "not_affected",
        "justification": "vulnerable_code_not_present"}
    statement.update(change)
    return {"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/v",
            "author": "me", "timestamp": "2026-01-01T00:00:00Z", "version": 1,
            "statements": [statement]}


BAD_VEX = {
    "wildcard product": (good_vex(products=[{"@id": "*"}]),
                         "statements[0].products[0].@id: '*' is not a package URL"),
    "wildcard vulnerability": (good_vex(vulnerability={"name": "*"}),
                               "statements[0].vulnerability.name: '*' is not a "
                               "vulnerability id"),
    "no products": (good_vex(products=[]), "statements[0].products: missing or empty"),
    "other ecosystem": (good_vex(products=[{"@id": "pkg:npm/openssl"}]),
                        "is not a Debian package"),
    "no justification": (good_vex(justification=None), "not_affected needs one of"),
    "unknown justification": (good_vex(justification="trust me"), "'trust me' is not one"),
    "bad status": (good_vex(status="ok"), "statements[0].status: 'ok' is not one of"),
    "affected without action": (good_vex(status="affected", justification=None),
                                "statements[0].action_statement: affected needs one"),
    "old context": ({**good_vex(), "@context": "https://openvex.dev/ns/v0.1.0"},
                    "@context: must be https://openvex.dev/ns/v0.2.0"),
    "bad time": ({**good_vex(), "timestamp": "yesterday"}, "timestamp: 'yesterday' is not"),
    "no version": ({**good_vex(), "version": "1"}, "version: missing or not a positive"),
}


@pytest.mark.parametrize("case", list(BAD_VEX))
def test_malformed_vex_is_one_line_and_exit_2(case: str, sbom_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    document, expected = BAD_VEX[case]
    path = vex(tmp_path, document)
    assert scan(sbom_file, FEED, "--vex", str(path)) == 2
    error = one_line_error(capsys)
    assert error.startswith(f"hardhost: {path}: ")
    assert expected in error


def test_control_characters_never_reach_the_terminal(sbom_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = vex(tmp_path, good_vex(status="affected", justification=None,
                                  action_statement="\x1b]0;owned\x07\x1b[2Jrebuild"))
    assert scan(sbom_file, FEED, "--vex", str(path), "--fail-on", "high") == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "affected: \\x1b]0;owned\\x07\\x1b[2Jrebuild" in out


def test_escape_in_an_sbom_package_name_is_escaped(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from hardhost.builder import sbom

    evil = sbom.Package("x\x1b[31m", "1.0-1", "amd64", "glibc", "NOASSERTION", "2.36-9")
    path = write_sbom(tmp_path / "sbom.json", (evil,))
    assert scan(path, FEED, "--fail-on", "never") == 0
    out = capsys.readouterr().out
    assert "CVE-2010-4756" in out and "\x1b" not in out


def test_outputs_are_checked_before_the_scan(sbom_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert scan(sbom_file, FEED, "--sarif", str(tmp_path)) == 2
    assert "cannot write the SARIF report" in one_line_error(capsys)


def test_help_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in ("--feed", "--feed-sha256", "--feed-date", "--fail-on", "--fail-on-unfixed",
                 "--vex", "--json", "--sarif", "--openvex", "--junit", "--release",
                 "exit codes:"):
        assert word in text
