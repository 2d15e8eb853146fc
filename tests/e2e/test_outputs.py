"""What a build writes: a verifiable signed manifest, a valid SBOM, reproducible artifacts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from hardhost.advisories.sbom_read import read_sbom
from hardhost.builder.build import build
from hardhost.builder.stages.manifest import SBOM_NAME, subjects
from hardhost.image.manifest import MANIFEST_NAME, read_verified
from hardhost.image.signing import load_trusted_keys
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES, REPO
from tests.support.vms import BuiltImage

pytestmark = pytest.mark.e2e


def hardhost(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_manifest_verifies_and_covers_every_artifact(container_host: BuiltImage,
                                                     signing_keys: SigningKeys) -> None:
    path = container_host.directory / MANIFEST_NAME
    result = hardhost("manifest", "verify", str(path), "--trust-key", str(signing_keys.public))
    assert result.returncode == 0, result.stderr
    signed = subjects()
    assert f"all {len(signed)} artifacts match" in result.stdout
    manifest, _ = read_verified(path, load_trusted_keys(signing_keys.public))
    record = container_host.record
    assert manifest.root_hash == record["root_hash"]
    assert manifest.cmdline == record["cmdline"]
    assert manifest.spec_digest == container_host.spec.digest()
    assert {s.name for s in manifest.subjects} == set(signed) >= {"uki.efi", "disk.img"}
    assert manifest.version == container_host.spec.version
    assert manifest.disk == {"slot_size_mib": "1024", "boot_tries": "3",
                             "bless_timeout": "900"}
    assert manifest.apparmor_runtime_profiles["docker-default"] == "enforce"
    assert manifest.apparmor_profiles["hardhost-container-default"] == "enforce"
    assert manifest.sysctls["kernel.kptr_restrict"] == "2"


def released_versions(names: list[str], suite: str) -> dict[str, str]:
    """Each package's version in `suite` itself (not its -updates or -security), as this
    machine's apt lists give it."""
    shown = subprocess.run(["apt-cache", "madison", *names], capture_output=True, text=True,
                           timeout=120, check=True).stdout
    versions: dict[str, str] = {}
    for line in shown.splitlines():
        name, version, origin = (field.strip() for field in line.split("|"))
        if origin.split()[1] == f"{suite}/main" and origin.endswith(" Packages"):
            versions[name] = version
    if not versions:
        pytest.fail(f"this machine's apt lists have no {suite}/main: run apt-get update")
    return versions


def test_the_image_carries_the_release_updates_and_security_fixes(
        container_host: BuiltImage) -> None:
    """Built from bookworm, bookworm-updates and bookworm-security: some of its packages are
    newer than the release's own. An image from the release alone has none."""
    installed = {p.name: p.version for p in read_sbom(container_host.directory).packages}
    released = released_versions(sorted(installed), container_host.spec.distribution.suite)
    newer = sorted(name for name, version in installed.items()
                   if name in released and version != released[name]
                   and subprocess.run(["dpkg", "--compare-versions", version, "gt",
                                       released[name]], timeout=30).returncode == 0)
    assert newer, "every package is the release's own version: no updates were installed"


def test_a_replaced_artifact_fails_verification(container_host: BuiltImage,
                                                signing_keys: SigningKeys,
                                                tmp_path: Path) -> None:
    # Every artifact must be there (a missing one fails too); one of them is changed.
    for name in (MANIFEST_NAME, *subjects()):
        (tmp_path / name).write_bytes((container_host.directory / name).read_bytes())
    with (tmp_path / "root.verity").open("r+b") as f:
        f.seek(8192)
        byte = f.read(1)
        f.seek(8192)
        f.write(bytes([byte[0] ^ 1]))
    result = hardhost("manifest", "verify", str(tmp_path / MANIFEST_NAME), "--trust-key",
                      str(signing_keys.public))
    assert result.returncode == 4
    assert "root.verity: sha256" in result.stderr


def test_sbom_is_valid_spdx_with_every_package(container_host: BuiltImage) -> None:
    path = container_host.directory / SBOM_NAME
    messages = validate_full_spdx_document(parse_file(str(path)))
    assert [m.validation_message for m in messages] == []
    doc = json.loads(path.read_text())
    names = {p["name"] for p in doc["packages"]}
    assert set(container_host.spec.packages.include) <= names
    purls = [p["externalRefs"][0]["referenceLocator"] for p in doc["packages"]]
    assert all(purl.startswith("pkg:deb/debian/") for purl in purls)


def test_two_builds_are_bit_for_bit_identical(container_host: BuiltImage, client_key: KeyPair,
                                              signing_keys: SigningKeys,
                                              tmp_path: Path) -> None:
    key = tmp_path / "client.pub"
    key.write_text(client_key.public_line + "\n")
    result = hardhost("build", str(IMAGES / "container-host.toml"), "-o", str(tmp_path / "out"),
                      "--authorized-key", str(key), "--key", str(signing_keys.private),
                      "--check-reproducible", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Reproducible: two builds gave identical" in result.stderr
    # Against the session's own build too: a third build of the same inputs.
    ours = json.loads((tmp_path / "out/container-host/build.json").read_text())
    theirs = container_host.record["artifacts"]
    assert isinstance(theirs, dict)
    for name in ("root.img", "root.verity"):
        assert ours["artifacts"][name] == theirs[name]
    assert ours["root_hash"] == container_host.record["root_hash"]


def _stage_notes(directory: Path) -> dict[str, str]:
    record = json.loads((directory / "build.json").read_text())
    return {stage["name"]: stage["note"] for stage in record["stages"]}


def test_rebuilds_reuse_exactly_the_unchanged_stages(container_host: BuiltImage,
                                                     signing_key: Ed25519PrivateKey,
                                                     tmp_path: Path) -> None:
    """Each rebuild takes from the stage caches only what its change cannot reach."""
    spec = container_host.spec
    # The session's build filled the caches, but other tests' builds may have evicted its
    # root image since: this build makes sure the entries are there.
    base = build(spec, tmp_path / "base", key=signing_key)
    cmdline_only = dataclasses.replace(spec, kernel=dataclasses.replace(
        spec.kernel, cmdline=(*spec.kernel.cmdline, "loglevel=4")))
    first = build(cmdline_only, tmp_path / "a", key=signing_key)
    notes = _stage_notes(first)
    assert notes["initramfs"].endswith("cached") and notes["rootfs"].endswith("cached")
    assert (first / "root.img").read_bytes() == (base / "root.img").read_bytes()
    assert (first / "cmdline").read_text().rstrip().endswith("loglevel=4")
    # The UKI embeds the command line: it, and only it, is new.
    assert (first / "uki.efi").read_bytes() != (base / "uki.efi").read_bytes()

    # Not a baseline value: an unchanged sysctl file would rightly keep the cached image.
    sysctl = dataclasses.replace(spec, sysctl=(*spec.sysctl, ("vm.swappiness", "10")))
    second = build(sysctl, tmp_path / "b", key=signing_key)
    notes = _stage_notes(second)
    assert notes["initramfs"].endswith("cached")
    assert not notes["rootfs"].endswith("cached")
    assert json.loads((second / "build.json").read_text())["root_hash"] \
        != json.loads((base / "build.json").read_text())["root_hash"]


def test_the_disk_as_qcow2_is_a_sane_image_of_the_same_disk(
        container_host: BuiltImage, signing_keys: SigningKeys, tmp_path: Path) -> None:
    """--format qcow2: the manifest signs disk.qcow2 instead of disk.img, and qemu-img reads
    it as the same disk: same size, same bytes, no errors."""
    qcow2 = build(container_host.spec, tmp_path, key=signing_keys.key, qcow2=True)
    assert not (qcow2 / "disk.img").exists()
    manifest, _ = read_verified(qcow2 / MANIFEST_NAME, load_trusted_keys(signing_keys.public))
    assert {s.name for s in manifest.subjects} == set(subjects(qcow2=True))
    assert "disk.qcow2" in {s.name for s in manifest.subjects}
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      str(qcow2 / "disk.qcow2")], capture_output=True,
                                     text=True, check=True).stdout)
    raw = container_host.directory / "disk.img"
    assert info["format"] == "qcow2" and info["virtual-size"] == raw.stat().st_size
    assert "backing-filename" not in info
    subprocess.run(["qemu-img", "check", str(qcow2 / "disk.qcow2")], check=True,
                   capture_output=True)
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw",
                           str(qcow2 / "disk.qcow2"), str(raw)], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
