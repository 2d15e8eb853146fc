"""Comparison and verdicts, on evidence in the exact form a host sends it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hardhost.image.manifest import MANIFEST_NAME, HostManifest, from_statement
from hardhost.verifier.comparison import compare, examine
from hardhost.verifier.evidence import parse
from hardhost.verifier.verdict import Finding, Severity, Verdict, render
from tests.support.evidence import fake_output, listing
from tests.support.keys import SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.net import free_port
from tests.support.paths import REPO


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
        mutable_paths={"etc": ("machine-id",), "var": ("*",)},
        mounts={"/": "erofs", "/etc": "overlay", "/var": "overlay"},
        optional_mounts={"/sys/fs/bpf": "bpf"}, runtime_mount_areas=("/mnt/*",))


def ids(findings: tuple[Finding, ...]) -> set[str]:
    return {f.id for f in findings if f.counts()}


def test_matching_evidence_has_only_the_expected_findings() -> None:
    evidence = parse(fake_output(overlay_etc=listing(b"machine-id"), overlay_var=listing()), "h")
    findings = compare(manifest_for_fake(), evidence)
    # The fake's root is erofs but its lsb_release is in complain mode, /var is not mounted,
    # and its /etc overlay names no upper layer.
    assert ids(findings) == {"apparmor.profile.lsb_release", "mount.var", "mount.etc",
                             "mount.missing./var"}
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
        overlay_etc=listing(b"machine-id", b"shadow"), overlay_var="absent"), "h")
    found = ids(compare(manifest_for_fake(), evidence))
    assert {"verity.roothash", "verity.status", "sysctl.kernel.kptr_restrict",
            "apparmor.unexpected.evil", "sshd.passwordauthentication",
            "seccomp./usr/lib/hardhost/seccomp/default.json",
            "runtime./etc/docker/daemon.json", "userns.subuid", "overlay.etc.modified",
            "overlay.var.absent"} <= found
    assert "apparmor.profile.lsb_release" not in found


ETC = ("31 22 0:25 / /etc rw - overlay overlay rw,lowerdir=/root/etc,"
       "upperdir=/run/hardhost/overlay/etc/upper,workdir=/run/hardhost/overlay/etc/work\n")
VAR = ("35 22 0:29 / /var rw - overlay overlay rw,lowerdir=/root/var,"
       "upperdir=/run/hardhost/overlay/var/upper,workdir=/run/hardhost/overlay/var/work\n")
ROOT = "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro,user_xattr\n"


def mount_findings(mountinfo: str) -> set[str]:
    evidence = parse(fake_output(mountinfo=mountinfo, overlay_etc=listing(),
                                 overlay_var=listing()), "h")
    return {i for i in ids(compare(manifest_for_fake(), evidence))
            if i.startswith("mount.")}


def test_the_images_own_mount_table_passes() -> None:
    assert mount_findings(ROOT + ETC + VAR + "50 22 0:40 / /sys/fs/bpf rw - bpf bpf rw\n"
                          "51 22 0:41 / /mnt/docker/netns/x rw - nsfs nsfs rw\n") == set()


@pytest.mark.parametrize(("extra", "finding"), [
    # A bind mount over a binary the evidence runs, over a /proc/sys value it reads, and
    # over an overlay's upper layer that it lists: each is named, whatever it holds.
    ("60 22 0:50 /x /usr/bin/cat ro - ext4 /dev/vdc ro\n", "mount.unexpected./usr/bin/cat"),
    ("61 22 0:51 /k /proc/sys/kernel/kptr_restrict rw - tmpfs tmpfs rw\n",
     "mount.unexpected./proc/sys/kernel/kptr_restrict"),
    ("62 22 0:52 / /run/hardhost/overlay/etc/upper rw - tmpfs tmpfs rw\n",
     "mount.unexpected./run/hardhost/overlay/etc/upper"),
    # A second mount stacked on an expected one, even of the right type.
    ("63 31 0:53 / /etc rw - overlay overlay rw,upperdir=/run/hardhost/overlay/etc/upper\n",
     "mount.unexpected./etc"),
    # An optional mount point holding something else.
    ("64 22 0:54 / /sys/fs/bpf rw - tmpfs tmpfs rw\n", "mount.type./sys/fs/bpf"),
    (r"65 22 0:55 / /usr/lib/evil\012name rw - tmpfs tmpfs rw" "\n",
     "mount.unexpected./usr/lib/evil\nname"),
])
def test_any_other_mount_is_drift(extra: str, finding: str) -> None:
    assert finding in mount_findings(ROOT + ETC + VAR + extra)


def test_an_overlay_writing_elsewhere_is_drift() -> None:
    moved = ETC.replace("upperdir=/run/hardhost/overlay/etc/upper", "upperdir=/root/up")
    assert mount_findings(ROOT + moved + VAR) == {"mount.etc"}


def test_a_manifest_without_a_mount_table_cannot_pass() -> None:
    manifest = dataclasses.replace(manifest_for_fake(), mounts={})
    evidence = parse(fake_output(mountinfo=ROOT + ETC + VAR), "h")
    assert "mount.table" in ids(compare(manifest, evidence))


@pytest.mark.parametrize(("namespaces", "finding"), [
    ("mnt other\npid init\nnet init\nproc live\n", "namespace.mnt"),
    ("mnt init\npid other\nnet init\nproc live\n", "namespace.pid"),
    ("mnt init\npid init\nnet init\nproc stale\n", "namespace.proc"),
])
def test_a_session_that_does_not_see_the_host_is_drift(namespaces: str, finding: str) -> None:
    evidence = parse(fake_output(namespaces=namespaces), "h")
    assert finding in ids(compare(manifest_for_fake(), evidence))


def test_a_failing_script_and_failed_units_are_drift() -> None:
    evidence = parse(fake_output(failed_units="binfmt.mount loaded failed failed x\n"), "h",
                     exit_status=2, stderr=b"veritysetup: cannot open\n")
    found = ids(compare(manifest_for_fake(), evidence))
    assert {"evidence.exit_status", "evidence.stderr", "systemd.failed.binfmt.mount"} <= found
    clean = parse(fake_output(), "h", exit_status=0, stderr=b"")
    assert not {"evidence.exit_status", "evidence.stderr"} & ids(
        compare(manifest_for_fake(), clean))


def test_a_summarised_listing_still_names_its_drift() -> None:
    evidence = parse(fake_output(overlay_etc=listing(b"shadow", count=5000)), "h")
    finding = next(f for f in compare(manifest_for_fake(), evidence)
                   if f.id == "overlay.etc.modified")
    assert "shadow" in finding.observed and "4999 more" in finding.observed


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
        [sys.executable, "-m", "hardhost", "attest", f"root@127.0.0.1:{free_port()}",
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
    etc = b"\n@@hardhost:overlay_etc@@\n"
    raw = raw.replace(etc + b"0\n\n", etc + listing(b"shadow").encode())
    raw = raw.replace(b"lsb_release (enforce)", b"lsb_release (complain)")
    assert ids(compare(manifest, parse(raw, "recorded"))) == {
        "sysctl.kernel.kptr_restrict", "overlay.etc.modified", "apparmor.profile.lsb_release"}


def test_examine_lists_every_check_and_compare_keeps_the_failed_ones() -> None:
    evidence = parse(fake_output(
        sysctl="/proc/sys/kernel/kptr_restrict:0\n",
        apparmor_profiles="docker-default (enforce)\nlsb_release (enforce)\nevil (complain)\n"
                          "worse (enforce)\n",
        failed_units="a.service loaded failed failed x\n", overlay_etc=listing(b"machine-id"),
        overlay_var=listing()), "h")
    examination = examine(manifest_for_fake(), evidence)
    by_name = {check.name: check for check in examination.checks}
    assert len(by_name) == len(examination.checks)  # one test id per check
    assert by_name["sysctl[kernel.kptr_restrict]"].findings == (
        Finding("sysctl.kernel.kptr_restrict", Severity.HIGH, "2", "0"),)
    # A check of absence names each thing it found, and holds when there is none.
    assert [f.id for f in by_name["apparmor[unexpected]"].findings] == [
        "apparmor.unexpected.evil", "apparmor.unexpected.worse"]
    assert [f.id for f in by_name["systemd[failed]"].findings] == ["systemd.failed.a.service"]
    assert by_name["overlay[etc]"].holds and by_name["apparmor[enabled]"].holds
    assert by_name["userns[subuid]"].holds and by_name["namespace[mnt]"].holds
    # compare() is the failed checks' findings, in order, then the records for people.
    failed = tuple(f for check in examination.checks for f in check.findings)
    assert compare(manifest_for_fake(), evidence) == (*failed, *examination.records)
    assert [f.id for f in examination.records] == ["host.listening", "host.services"]
    assert examination.boot_id == evidence.boot_id


def test_a_missing_mount_fails_the_check_of_its_type() -> None:
    evidence = parse(fake_output(mountinfo=ROOT + ETC, overlay_etc=listing(),
                                 overlay_var=listing()), "h")
    check = next(c for c in examine(manifest_for_fake(), evidence).checks
                 if c.name == "mount.type[/var]")
    assert check.findings == (Finding("mount.missing./var", Severity.CRITICAL, "overlay",
                                      "absent"),)


def test_recorded_clean_host_holds_every_check_of_every_kind() -> None:
    manifest, raw = recorded()
    examination = examine(manifest, parse(raw, "recorded"))
    assert all(check.holds for check in examination.checks)
    assert {check.component for check in examination.checks} == {
        "evidence", "systemd", "namespace", "verity", "kernel", "mount", "mount.type",
        "sysctl", "apparmor", "apparmor.profile", "sshd", "seccomp", "runtime", "userns",
        "overlay"}
    assert len({check.name for check in examination.checks}) == len(examination.checks)
