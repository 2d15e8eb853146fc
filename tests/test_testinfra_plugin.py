"""The `hardhost` pytest plugin, run as its users run it: pytest with testinfra's paramiko
backend against a real sshd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.keys import KeyPair, SigningKeys, make_keypair
from tests.support.manifests import sample_manifest, write_signed
from tests.support.sshd import LoopbackHost

pytestmark = pytest.mark.e2e


def run_plugin(tmp_path: Path, port: int, identity: Path, manifest: Path, trust_key: Path,
               known_hosts: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
         f"--hosts=paramiko://root@127.0.0.1:{port}", f"--ssh-identity-file={identity}",
         f"--hardhost-manifest={manifest}", f"--hardhost-trust-key={trust_key}",
         f"--hardhost-known-hosts={known_hosts}", "--rootdir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_each_fact_is_a_named_test(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                   signing_keys: SigningKeys, tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    result = run_plugin(tmp_path, loopback_sshd.port, client_key.private, manifest,
                        signing_keys.public, loopback_sshd.known_hosts)
    # This machine is not the image the manifest describes: its facts fail, by name.
    assert result.returncode == 1, result.stdout + result.stderr
    host = f"root@127.0.0.1:{loopback_sshd.port}"
    assert f"FAILED ::{host}::verity[root]" in result.stdout
    assert f"FAILED ::{host}::mount[/etc]" in result.stdout
    assert f"{host}::sysctl[kernel.kptr_restrict]" in result.stdout
    assert f"{host}::sshd[passwordauthentication]" in result.stdout


def test_an_unknown_host_key_stops_the_run(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                           signing_keys: SigningKeys, tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    other = make_keypair(tmp_path / "other", "key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{loopback_sshd.port} {other.public_line}\n")
    result = run_plugin(tmp_path, loopback_sshd.port, client_key.private, manifest,
                        signing_keys.public, known)
    assert result.returncode != 0
    assert "host key changed" in result.stdout + result.stderr
    assert "passed" not in result.stdout
