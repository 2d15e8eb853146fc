"""hardhost build --feed: the gate's decision, its record in the signed manifest (optional,
so older manifests still parse), and that a failing image stops the manifest stage before
anything is written. The build itself is e2e (tests/e2e/test_scan_gate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.advisories.gate import Gate, decide, load_gate, record
from hardhost.advisories.sbom_read import read_sbom
from hardhost.advisories.scan import Level, Policy
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import load_spec
from hardhost.builder.stages import manifest as manifest_stage
from hardhost.cli.main import main
from hardhost.core.errors import BuildError, TrustError
from hardhost.image.manifest import ADVISORY_KEYS, from_statement
from tests.support.advisories import FEED, write_sbom
from tests.support.images import manifest_for
from tests.support.paths import IMAGES


def gate(level: Level, vex: list[Path] | None = None) -> Gate:
    return load_gate(FEED, release="bookworm", policy=Policy(level), vex=vex or [])


def test_a_failing_image_is_a_one_line_build_error(tmp_path: Path) -> None:
    inventory = read_sbom(write_sbom(tmp_path / "sbom.json"))
    with pytest.raises(BuildError) as info:
        decide(gate(Level.MEDIUM), inventory)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("2 known vulnerabilities fail the policy (fail on fixable "
                              "issues of urgency medium or above; feed sha256:")
    assert "CVE-2025-32728 (openssh 1:9.2p1-2+deb12u5 < 1:9.2p1-2+deb12u6)" in message
    assert "CVE-2025-9230 (openssl 3.0.15-1~deb12u1 < 3.0.17-1~deb12u3)" in message
    assert "nothing was signed or written" in message


def test_a_passing_image_records_the_feed_and_the_counts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vex = tmp_path / "vex.json"
    vex.write_text(json.dumps({
        "@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/v",
        "author": "me", "timestamp": "2026-01-01T00:00:00Z", "version": 1,
        "statements": [{"vulnerability": {"name": "CVE-2025-9230"},
                        "products": [{"@id": "pkg:deb/debian/openssl"}],
                        "status": "not_affected",
                        "justification": "vulnerable_code_not_in_execute_path"}]}))
    inventory = read_sbom(write_sbom(tmp_path / "sbom.json"))
    with caplog.at_level("WARNING", logger="hardhost.advisories.gate"):
        result = decide(gate(Level.HIGH, [vex]), inventory)
    # The build says which waiver it relied on, and why.
    assert [r.getMessage() for r in caplog.records] == [
        f"CVE-2025-9230 (openssl 3.0.15-1~deb12u1): waived by {vex}: statements[0]: "
        "not_affected, vulnerable_code_not_in_execute_path"]
    written = record(result)
    assert tuple(written) == ADVISORY_KEYS
    assert written["feed_sha256"] == result.feed.sha256
    assert (written["release"], written["fail_on"], written["waived"], written["failing"]) == (
        "bookworm", "high", "1", "0")
    # The record travels in the signed predicate and parses back.
    (tmp_path / "a").write_text("a")
    signed = manifest_for(tmp_path, ("a",))
    statement = json.loads(signed.payload())
    assert "advisories" not in statement["predicate"]  # older manifests are unchanged
    assert from_statement(statement, "m").advisories == {}
    statement["predicate"]["advisories"] = written
    assert from_statement(statement, "m").advisories == written
    statement["predicate"]["advisories"] = {**written, "extra": "1"}
    with pytest.raises(TrustError, match="advisories"):
        from_statement(statement, "m")
    statement["predicate"]["advisories"] = {**written, "release": "\x1b[2J"}
    with pytest.raises(TrustError, match="advisories"):
        from_statement(statement, "m")


def test_the_manifest_stage_stops_before_writing(tmp_path: Path) -> None:
    tree = tmp_path / "work/tree"
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text(
        "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n"
        "Source: openssl\nVersion: 3.0.15-1~deb12u1\n\n"
        "Package: openssl\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 3.0.15-1~deb12u1\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = BuildContext(spec=load_spec(IMAGES / "minimal.toml"), workdir=tree.parent,
                       staging=staging, cache_dir=tmp_path / "cache",
                       signing_key=Ed25519PrivateKey.generate(), source_date_epoch=1,
                       gate=gate(Level.HIGH))
    with pytest.raises(BuildError, match="CVE-2025-9230"):
        manifest_stage.run_stage(ctx, None)  # type: ignore[arg-type]
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("flags", [["--vex", "x.json"], ["--fail-on", "high"],
                                   ["--feed-sha256", "0" * 64]])
def test_build_gate_flags_need_a_feed(flags: list[str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", str(IMAGES / "minimal.toml"), "-o", str(tmp_path / "out"), *flags])
    assert code == 2
    assert "needs --feed FILE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_malformed_feed_stops_the_build_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text('{"zlib": {}, "zlib": {}}')
    code = main(["build", str(IMAGES / "minimal.toml"), "-o", str(tmp_path / "out"),
                 "--feed", str(feed)])
    assert code == 2
    assert capsys.readouterr().err == f"hardhost: {feed}: zlib: source package named twice\n"
    assert not (tmp_path / "out").exists()
