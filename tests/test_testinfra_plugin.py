"""The `hardhost` pytest plugin, run as its users run it: a real pytest with testinfra's
options, against a real sshd on loopback (this machine, which is not the image) and against
the FAKE image host that answers with evidence recorded from a booted image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hardhost.verifier.attestation import Connection, examine_host
from hardhost.verifier.comparison import examine
from hardhost.verifier.evidence import parse
from hardhost.verifier.transport import Target
from tests.support.fake_image_host import DATA, ImageHost, image_host, recorded_manifest
from tests.support.keys import KeyPair, SigningKeys, make_keypair
from tests.support.manifests import sample_manifest, write_signed
from tests.support.plugin import run_plugin
from tests.support.sshd import LoopbackHost

pytestmark = pytest.mark.e2e


def outcomes(stdout: str) -> dict[str, str]:
    """Each test's id and outcome, from the short summary of `-rA`."""
    return {test: outcome for outcome, test in
            re.findall(r"^(PASSED|FAILED|ERROR) (\S+?)(?: - .*)?$", stdout, re.M)}


def test_every_check_attest_makes_is_a_test(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                            signing_keys: SigningKeys, tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    result = run_plugin(tmp_path, loopback_sshd.port, client_key.private, manifest,
                        signing_keys.public, loopback_sshd.known_hosts)
    # This machine is not the image the manifest describes: facts fail, by name.
    assert result.returncode == 1, result.stdout + result.stderr
    target = Target("root", "127.0.0.1", loopback_sshd.port)
    expected = examine_host(target, sample_manifest(),
                            Connection(loopback_sshd.known_hosts, client_key.private))
    # The same checks as attest's, with the same outcomes.
    assert outcomes(result.stdout) == {
        f"{target}::{check.name}": "PASSED" if check.holds else "FAILED"
        for check in expected.checks}


def hosts_file(*hosts: ImageHost) -> Path:
    known = hosts[0].log.parent.parent / "known_hosts"
    known.write_text("".join(h.host.known_hosts.read_text() for h in hosts))
    return known


def test_a_host_that_is_its_image_passes_every_fact(client_key: KeyPair,
                                                    signing_keys: SigningKeys,
                                                    tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, recorded_manifest(), signing_keys.key)
    with image_host(tmp_path / "image", client_key) as host:
        result = run_plugin(tmp_path, host.host.port, client_key.private, manifest,
                            signing_keys.public, hosts_file(host))
        asked = host.commands()
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = examine(recorded_manifest(),
                       parse((DATA / "evidence-container-host.raw").read_bytes(), "h"))
    seen = outcomes(result.stdout)
    assert set(seen.values()) == {"PASSED"} and len(seen) == len(recorded.checks)
    name = f"root@127.0.0.1:{host.host.port}"
    # Facts the plugin used to leave out are tests now.
    for fact in ("evidence[exit_status]", "systemd[failed]", "namespace[mnt]",
                 "mount.type[/sys/fs/cgroup]", "seccomp[/usr/lib/hardhost/seccomp/default.json]",
                 "userns[subuid]", "overlay[etc]", "sysctl[kernel.kptr_restrict]",
                 "apparmor[unexpected]"):
        assert seen.get(f"{name}::{fact}") == "PASSED", fact
    # The evidence is collected once per host, not once per fact.
    assert len(asked) == 1 and asked[0].startswith("/bin/sh -s"), asked


@pytest.mark.parametrize(("drift", "fact", "message"), [
    ((b"/proc/sys/kernel/kptr_restrict:2", b"/proc/sys/kernel/kptr_restrict:0"),
     "sysctl[kernel.kptr_restrict]",
     "sysctl.kernel.kptr_restrict (high): expected '2', observed '0'"),
    ((b"\nmnt init\n", b"\nmnt other\n"), "namespace[mnt]",
     "namespace.mnt (critical): expected 'init', observed 'other'"),
    ((b"@@hardhost:mountinfo@@\n",
      b"@@hardhost:mountinfo@@\n60 22 0:50 /x /usr/bin/cat ro - ext4 /dev/vdc ro\n"),
     "mount.unexpected[/usr/bin/cat]",
     "mount.unexpected./usr/bin/cat (critical): expected 'no mount here', observed "
     "'ext4 /dev/vdc'"),
])
def test_a_drifted_fact_fails_by_name_with_both_values(
        client_key: KeyPair, signing_keys: SigningKeys, tmp_path: Path,
        drift: tuple[bytes, bytes], fact: str, message: str) -> None:
    manifest = write_signed(tmp_path, recorded_manifest(), signing_keys.key)
    with image_host(tmp_path / "clean", client_key) as clean, \
            image_host(tmp_path / "drifted", client_key, drift=drift) as drifted:
        result = run_plugin(tmp_path, [clean.host.port, drifted.host.port],
                            client_key.private, manifest, signing_keys.public,
                            hosts_file(clean, drifted))
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [test for test, outcome in outcomes(result.stdout).items() if outcome != "PASSED"]
    # Each host's facts come from its own evidence: only the drifted host fails, only there.
    assert failed == [f"root@127.0.0.1:{drifted.host.port}::{fact}"]
    assert message in result.stdout
    assert "Traceback" not in result.stdout


def test_an_unknown_host_key_fails_that_host_before_any_fact(
        loopback_sshd: LoopbackHost, client_key: KeyPair, signing_keys: SigningKeys,
        tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    other = make_keypair(tmp_path / "other", "key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{loopback_sshd.port} {other.public_line}\n")
    result = run_plugin(tmp_path, loopback_sshd.port, client_key.private, manifest,
                        signing_keys.public, known)
    assert result.returncode == 1, result.stdout + result.stderr
    assert outcomes(result.stdout) == {f"root@127.0.0.1:{loopback_sshd.port}::connect":
                                       "FAILED"}
    assert "host key changed" in result.stdout and "(exit code 4)" in result.stdout


def test_an_untrusted_manifest_is_a_usage_error_without_a_traceback(
        loopback_sshd: LoopbackHost, client_key: KeyPair, signing_keys: SigningKeys,
        tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    manifest.write_bytes(manifest.read_bytes()[:-40])
    result = run_plugin(tmp_path, loopback_sshd.port, client_key.private, manifest,
                        signing_keys.public, loopback_sshd.known_hosts)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert f"ERROR: {manifest}:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
