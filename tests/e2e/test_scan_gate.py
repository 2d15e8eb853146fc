"""hardhost build --feed on a real container-host build: a failing policy writes nothing
and exits 1; with a VEX waiver the build passes and its signed manifest records the feed;
and hardhost scan reads the real image's SBOM and gives every verdict of the fixture on it."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hardhost.advisories.sbom_read import read_sbom
from hardhost.image.manifest import MANIFEST_NAME, read_verified
from hardhost.image.signing import load_trusted_keys
from tests.support.advisories import FEED
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES, REPO

pytestmark = pytest.mark.e2e

# A high-urgency issue of openssl fixed in a version no image has: every build fails it.
FAILING_FEED = {"openssl": {"CVE-2025-9230": {
    "description": "fixture: an issue fixed in a version far ahead of any image",
    "releases": {"bookworm": {"status": "resolved", "fixed_version": "99:0-1",
                              "urgency": "high"}}}}}
WAIVER = {"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex/e2e",
          "author": "hardhost tests", "timestamp": "2026-01-01T00:00:00Z", "version": 1,
          "statements": [{"vulnerability": {"name": "CVE-2025-9230"},
                          "products": [{"@id": "pkg:deb/debian/openssl?distro=debian-12"}],
                          "status": "not_affected",
                          "justification": "vulnerable_code_not_in_execute_path"}]}


def hardhost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


def test_build_gate_fails_then_passes_with_a_waiver(tmp_path: Path, client_key: KeyPair,
                                                    signing_keys: SigningKeys) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps(FAILING_FEED))
    vex = tmp_path / "waiver.json"
    vex.write_text(json.dumps(WAIVER))
    out = tmp_path / "out"
    common = [str(IMAGES / "container-host.toml"), "-o", str(out), "--authorized-key",
              f"{client_key.private}.pub", "--key", str(signing_keys.private),
              "--feed", str(feed), "--feed-date", "2026-11-30", "--fail-on", "high"]
    failed = hardhost("build", *common)
    assert failed.returncode == 1, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("hardhost: 1 known vulnerabilities fail the policy")
    assert "CVE-2025-9230 (openssl " in last and "nothing was signed or written" in last
    assert list(out.iterdir()) == []  # no image, no staging or scratch folder

    passed = hardhost("build", *common, "--vex", str(vex))
    assert passed.returncode == 0, passed.stderr
    # The build says which waiver it relied on, and why.
    assert re.search(r"CVE-2025-9230 \(openssl \S+\): waived by \S*waiver\.json: "
                     r"statements\[0\]: not_affected, vulnerable_code_not_in_execute_path",
                     passed.stderr), passed.stderr
    image = Path(passed.stdout.strip())
    manifest, _ = read_verified(image / MANIFEST_NAME, load_trusted_keys(signing_keys.public))
    assert manifest.advisories["feed_sha256"] == hashlib.sha256(feed.read_bytes()).hexdigest()
    assert manifest.advisories["feed_date"] == "2026-11-30T00:00:00Z"
    assert (manifest.advisories["release"], manifest.advisories["waived"],
            manifest.advisories["failing"]) == ("bookworm", "1", "0")

    # The real image's SBOM: its purls name the release and the sources the feed keys on.
    scanned = hardhost("scan", str(image), "--feed", str(FEED), "--fail-on", "never",
                       "--json")
    assert scanned.returncode == 0, scanned.stderr
    report = json.loads(scanned.stdout)
    assert report["release"] == "bookworm"
    assert report["packages"] > 100
    # Every verdict of the fixture on the real image, with dpkg's own order as the oracle:
    # the image's versions follow the archive, so the expected verdicts are worked out here.
    installed = {p.source: p.source_version for p in read_sbom(image).packages}
    found = {(f["id"], f["source"]): f["state"] for f in report["findings"]}
    checked = 0
    for source, issues in json.loads(FEED.read_text()).items():
        for issue, entry in issues.items():
            release = entry["releases"].get("bookworm")
            if source not in installed or release is None:
                continue
            fixed = release.get("fixed_version", "")
            expected = {"open": "unfixed", "undetermined": "undetermined"}.get(
                release["status"])
            if release["status"] == "resolved" and fixed != "0" and subprocess.run(
                    ["dpkg", "--compare-versions", installed[source], "lt", fixed]
                    ).returncode == 0:
                expected = "affected"
            assert found.get((issue, source)) == expected, (source, installed[source], issue)
            checked += 1
    assert checked == 15  # every issue of the fixture: its sources are all in the image
    sbom = json.loads((image / "sbom.spdx.json").read_text())
    libc6 = next(p for p in sbom["packages"] if p["name"] == "libc6")
    assert "upstream=glibc" in libc6["externalRefs"][0]["referenceLocator"]
