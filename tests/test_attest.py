"""Comparison and verdicts, on evidence in the exact form a host sends it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from builder.manifest import MANIFEST_NAME, HostManifest, from_statement
from tests.conftest import REPO, SigningKeys, free_port
from tests.test_evidence import fake_output
from tests.test_signing import sample_manifest, write_signed
from verifier.compare import compare
from verifier.evidence import parse
from verifier.verdict import Finding, Severity, Verdict, render


def manifest_for_fake() -> HostManifest:
    return dataclasses.replace(
        sample_manifest(), root_hash="abc", cmdline="root=/dev/mapper/root ro",
        kernel_release="6.1.0-50-amd64",
        seccomp_profiles={"/usr/lib/hardhost/seccomp/default.json": "a" * 64},
        runtime_config={"/etc/docker/daemon.json": "b" * 64},
        userns={"subuid": "dockremap:100000:65536", "subgid": "dockremap:100000:65536"},
        apparmor_profiles={"lsb_release": "enforce"},
        apparmor_runtime_profiles={"docker-default": "enforce", "podman": "enforce"},
        sshd={"passwordauthentication": "no"},
        mutable_paths={"etc": ("machine-id",), "var": ("*",)})


def ids(findings: tuple[Finding, ...]) -> set[str]:
    return {f.id for f in findings if f.counts()}


def test_matching_evidence_has_only_the_expected_findings() -> None:
    evidence = parse(fake_output(overlay_etc="machine-id\0", overlay_var=""), "h")
    findings = compare(manifest_for_fake(), evidence)
    # The fake's root is erofs but its lsb_release is in complain mode and /var is tmpfs-less.
    assert ids(findings) == {"apparmor.profile.lsb_release", "mount.var"}
    info = [f for f in findings if f.severity is Severity.INFO]
    assert {f.id for f in info} == {"host.listening", "host.services"}


def test_each_kind_of_drift_has_its_id() -> None:
    evidence = parse(fake_output(
        verity="  type: VERITY\n  status: corrupted\n  root hash: 999\n",
        sysctl="/proc/sys/kernel/kptr_restrict:0\n",
        apparmor_profiles="docker-default (enforce)\nlsb_release (enforce)\nevil (complain)\n",
        sshd="passwordauthentication yes\n",
        seccomp="", runtime_config=f"{'c' * 64}  /etc/docker/daemon.json\n",
        subuid="dockremap:0:65536\n",
        overlay_etc="machine-id\0shadow\0", overlay_var="absent"), "h")
    found = ids(compare(manifest_for_fake(), evidence))
    assert {"verity.roothash", "verity.status", "sysctl.kernel.kptr_restrict",
            "apparmor.unexpected.evil", "sshd.passwordauthentication",
            "seccomp./usr/lib/hardhost/seccomp/default.json",
            "runtime./etc/docker/daemon.json", "userns.subuid", "overlay.etc.modified",
            "overlay.var.absent"} <= found
    assert "apparmor.profile.lsb_release" not in found


def test_verdict_status_and_rendering() -> None:
    evidence = parse(fake_output(sysctl="/proc/sys/kernel/kptr_restrict:0\n"), "h")
    findings = compare(manifest_for_fake(), evidence)
    verdict = Verdict("root@h:22", evidence.boot_id, "2026-01-01T00:00:00Z", "d" * 64, findings)
    assert verdict.status == "drift"
    text = render(verdict)
    assert text.startswith("root@h:22: DRIFT") and "sysctl.kernel.kptr_restrict" in text
    clean = Verdict("root@h:22", evidence.boot_id, "t", "d", ())
    assert clean.status == "pass" and "every expected fact holds" in render(clean)
    assert '"status": "drift"' in verdict.to_json()


def test_a_bad_manifest_fails_before_the_host_is_contacted(tmp_path: Path,
                                                           signing_keys: SigningKeys) -> None:
    path = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    path.write_bytes(path.read_bytes()[:-40])
    known = tmp_path / "known_hosts"
    known.write_text("")
    # Nothing listens on the port: contacting it would be exit 3, not 4.
    result = subprocess.run(
        [sys.executable, "-m", "builder.cli", "attest", f"root@127.0.0.1:{free_port()}",
         "--manifest", str(path), "--trust-key", str(signing_keys.public), "--known-hosts",
         str(known), "--identity", str(signing_keys.private)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    assert result.stderr.startswith(f"hardhost: {tmp_path / MANIFEST_NAME}:")


# Evidence and manifest recorded from a booted container-host image (tests/data/).
DATA = REPO / "tests" / "data"


def recorded() -> tuple[HostManifest, bytes]:
    statement = json.loads((DATA / "manifest-container-host.json").read_text())
    raw = (DATA / "evidence-container-host.raw").read_bytes()
    return from_statement(statement, "recorded"), raw


def test_recorded_clean_host_passes() -> None:
    manifest, raw = recorded()
    findings = compare(manifest, parse(raw, "recorded"))
    assert ids(findings) == set()
    assert "docker.service" in next(f for f in findings if f.id == "host.services").observed


def test_recorded_host_with_drift() -> None:
    manifest, raw = recorded()
    raw = raw.replace(b"/proc/sys/kernel/kptr_restrict:2", b"/proc/sys/kernel/kptr_restrict:0")
    raw = raw.replace(b"\n@@hardhost:overlay_var@@", b"shadow\0\n@@hardhost:overlay_var@@")
    raw = raw.replace(b"lsb_release (enforce)", b"lsb_release (complain)")
    assert ids(compare(manifest, parse(raw, "recorded"))) == {
        "sysctl.kernel.kptr_restrict", "overlay.etc.modified", "apparmor.profile.lsb_release"}
