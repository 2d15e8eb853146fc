"""`hardhost attest --tpm` end to end against a real swtpm behind a real loopback sshd: the
AK is enrolled on first contact, the quote is judged against the manifest's predicted PCRs
(and one recorded firmware's PCR 0 and 7), and a changed AK is exit 4.

The loopback host is not a hardhost image, so its SSH evidence drifts; these tests read only
the tpm.* findings. A fresh swtpm holds all-zero PCRs: those are the "predictions" here.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.image.manifest import HostManifest
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.paths import REPO
from tests.support.sshd import LoopbackHost
from tests.support.tpm import Tpm

pytestmark = pytest.mark.e2e

ZERO = "00" * 32
IMAGE_PCRS = {str(index): ZERO for index in (4, 9, 11, 12, 13)}
OTHER = "11" * 32


def uki_manifest(**changes: object) -> HostManifest:
    fields: dict[str, object] = {"boot": "uki", "pcrs": IMAGE_PCRS,
                                 "firmware_pcrs": {"fw-a q35": {"0": OTHER, "7": OTHER},
                                                   "fw-b q35": {"0": ZERO, "7": ZERO}}}
    fields.update(changes)
    return dataclasses.replace(sample_manifest(), **fields)  # type: ignore[arg-type]


def attest(host: LoopbackHost, client_key: KeyPair, signing_keys: SigningKeys,
           manifest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardhost", "attest", f"root@127.0.0.1:{host.port}",
         "--manifest", str(manifest), "--trust-key", str(signing_keys.public),
         "--known-hosts", str(host.known_hosts), "--identity", str(client_key.private),
         "--json", "--tpm", *extra], cwd=REPO, capture_output=True, text=True, timeout=120)


def enrolling(vtpm: Tpm, registry: Path) -> tuple[str, ...]:
    """attest options that enroll into `registry` when the host is not in it yet."""
    return ("--tpm-ca", str(vtpm.ca.bundle), "--ak-registry", str(registry))


def tpm_findings(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    assert result.returncode in (0, 1), result.stderr
    verdict = json.loads(result.stdout)
    return {f["id"]: f for f in verdict["findings"] if f["id"].startswith("tpm.")}


@pytest.fixture
def signed(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    return write_signed(tmp_path, uki_manifest(), signing_key)


def test_first_attestation_enrolls_then_the_quote_holds(
        tpm: Tpm, tpm_host: LoopbackHost, client_key: KeyPair,
        signing_keys: SigningKeys, signed: Path, tmp_path: Path) -> None:
    registry = tmp_path / "aks.json"
    options = enrolling(tpm, registry)
    assert tpm_findings(attest(tpm_host, client_key, signing_keys, signed, *options)) == {}
    enrolled = json.loads(registry.read_text())["hosts"]
    assert [entry["address"] for entry in enrolled.values()] == [f"127.0.0.1:{tpm_host.port}"]
    # Later attestations need no CA: they use the enrolled AK.
    again = attest(tpm_host, client_key, signing_keys, signed, "--ak-registry", str(registry))
    assert tpm_findings(again) == {}


def test_a_pcr_other_than_predicted_is_named(
        tpm: Tpm, tpm_host: LoopbackHost, client_key: KeyPair,
        signing_keys: SigningKeys, signing_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, uki_manifest(pcrs=IMAGE_PCRS | {"11": OTHER}),
                            signing_key)
    found = tpm_findings(attest(tpm_host, client_key, signing_keys, manifest,
                                *enrolling(tpm, tmp_path / "r.json")))
    assert set(found) == {"tpm.pcr.11"}
    assert (found["tpm.pcr.11"]["expected"], found["tpm.pcr.11"]["observed"]) == (OTHER, ZERO)


def test_firmware_pcrs_must_match_one_recorded_firmware(
        tpm: Tpm, tpm_host: LoopbackHost, client_key: KeyPair,
        signing_keys: SigningKeys, signing_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, uki_manifest(
        firmware_pcrs={"fw-a q35": {"0": OTHER, "7": OTHER}}), signing_key)
    found = tpm_findings(attest(tpm_host, client_key, signing_keys, manifest,
                                *enrolling(tpm, tmp_path / "r.json")))
    assert set(found) == {"tpm.pcr.0", "tpm.pcr.7"}


def test_an_extended_pcr_fails_the_next_quote(
        tpm: Tpm, tpm_host: LoopbackHost, client_key: KeyPair,
        signing_keys: SigningKeys, signed: Path, tmp_path: Path) -> None:
    options = enrolling(tpm, tmp_path / "r.json")
    assert tpm_findings(attest(tpm_host, client_key, signing_keys, signed, *options)) == {}
    tpm.swtpm.tool("tpm2_pcrextend", f"13:sha256={'ab' * 32}")
    try:
        found = tpm_findings(attest(tpm_host, client_key, signing_keys, signed, *options))
        assert set(found) == {"tpm.pcr.13"}
    finally:
        tpm.swtpm.restart()  # startup-clear: every PCR back to zero for the other tests


def test_a_changed_ak_is_exit_4_until_reenrolled(
        tpm: Tpm, tpm_host: LoopbackHost, client_key: KeyPair,
        signing_keys: SigningKeys, signed: Path, tmp_path: Path) -> None:
    registry = tmp_path / "aks.json"
    options = enrolling(tpm, registry)
    assert tpm_findings(attest(tpm_host, client_key, signing_keys, signed, *options)) == {}
    # Someone with root on the host makes a new AK at the same handle: here, through an
    # enrollment that the verifier's registry never sees.
    elsewhere = enrolling(tpm, tmp_path / "other.json")
    assert tpm_findings(attest(tpm_host, client_key, signing_keys, signed, *elsewhere)) == {}
    result = attest(tpm_host, client_key, signing_keys, signed, *options)
    assert result.returncode == 4, result.stderr
    assert "--tpm-reenroll" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    renewed = attest(tpm_host, client_key, signing_keys, signed, *options, "--tpm-reenroll")
    assert tpm_findings(renewed) == {}


def test_tpm_needs_an_image_with_predicted_pcrs(
        tpm_host: LoopbackHost, client_key: KeyPair, signing_keys: SigningKeys,
        signing_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    direct = write_signed(tmp_path, sample_manifest(), signing_key)
    result = attest(tpm_host, client_key, signing_keys, direct)
    assert result.returncode == 2
    assert 'boots a UKI' in result.stderr
