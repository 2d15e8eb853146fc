"""Level-2 attestation of a real boot: container-host's UKI under OVMF with a swtpm, its PCRs
measured by the firmware, systemd-stub and the kernel, quoted over SSH, and checked against
the PCRs the build predicted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import pe, uki
from hardhost.builder.stages.uki import UKI_NAME
from hardhost.image.manifest import MANIFEST_NAME, HostManifest, read_verified
from hardhost.image.signing import keygen, load_private_key, load_trusted_keys
from hardhost.verifier.tpm_ak_quote import quote, verify
from hardhost.verifier.tpm_quote import new_nonce
from hardhost.verifier.tpm_registry import AkRegistry, HostId
from hardhost.verifier.transport import Target, connect
from hardhost.vm import harness as vm
from tests.support.images import resign
from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.uki import disk_with_uki
from tests.support.vms import (
    BOOT_TIMEOUT,
    BuiltImage,
    ensure_answering,
    rerun_if_the_guest_stalls,
    start_vm,
)

pytestmark = pytest.mark.e2e

NAME = "e2e-tpm"
IMAGE_PCRS = (4, 9, 11, 12, 13)


@dataclass(frozen=True)
class TpmHost:
    image: BuiltImage
    instance: vm.Instance
    target: Target
    identity: Path
    registry: Path

    @property
    def manifest_path(self) -> Path:
        return self.image.directory / MANIFEST_NAME

    def manifest(self, keys: SigningKeys) -> HostManifest:
        return read_verified(self.manifest_path, load_trusted_keys(keys.public))[0]

    def run(self, *argv: str) -> str:
        with connect(self.target, known_hosts=self.instance.known_hosts,
                     identity=self.identity, timeout=30) as session:
            result = session.run(list(argv), timeout=120)
        assert result.exit_status == 0, result.stderr.decode()
        return result.stdout.decode()

    def measured(self) -> dict[str, str]:
        """The PCRs as the guest's kernel reads them from its TPM."""
        return {str(i): self.run("cat", f"/sys/class/tpm/tpm0/pcr-sha256/{i}").strip().lower()
                for i in IMAGE_PCRS}

    def attest(self, keys: SigningKeys, *extra: str,
               manifest: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hardhost", "attest", str(self.target), "--manifest",
             str(manifest or self.manifest_path), "--trust-key", str(keys.public),
             "--known-hosts", str(self.instance.known_hosts), "--identity", str(self.identity),
             "--tpm", "--tpm-ca", str(self.instance.tpm_ca), "--ak-registry",
             str(self.registry), "--json", *extra],
            cwd=REPO, capture_output=True, text=True, timeout=900)


def start(image: Path, port: int, trust_key: Path) -> vm.Instance:
    return start_vm(image, trust_key=trust_key, name=NAME, port=port, tpm=True)


@pytest.fixture(scope="module")
def tpm_host(container_host: BuiltImage, client_key: KeyPair,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[TpmHost]:
    vm.stop(NAME, purge=True)
    port = free_port()
    instance = start(container_host.directory, port, container_host.trust_key)
    registry = tmp_path_factory.mktemp("aks") / "aks.json"
    try:
        yield TpmHost(container_host, instance, Target("root", "127.0.0.1", port),
                      client_key.private, registry)
    finally:
        vm.stop(NAME, purge=True)


@pytest.fixture(autouse=True)
def _answering(tpm_host: TpmHost) -> None:
    ensure_answering(tpm_host.instance, tpm_host.image.directory,
                     trust_key=tpm_host.image.trust_key, tpm=True)


def ids(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The ids of the last verdict's findings, without the informational ones (the host's
    listening sockets and services are always reported)."""
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    verdicts = [document["before"], document["after"]] if "after" in document else [document]
    return {f["id"] for f in verdicts[-1]["findings"] if f["severity"] != "info"}


def test_predicted_pcrs_are_the_measured_ones(tpm_host: TpmHost,
                                              signing_keys: SigningKeys) -> None:
    manifest = tpm_host.manifest(signing_keys)
    assert manifest.boot == "uki" and set(manifest.pcrs) == {str(i) for i in IMAGE_PCRS}
    assert tpm_host.measured() == manifest.pcrs
    # systemd-boot and systemd-stub measure the load options into 12; no sysext into 13.
    assert manifest.pcrs["12"] != "00" * 32 and manifest.pcrs["13"] == "00" * 32


def test_a_clean_host_passes_attest_tpm(tpm_host: TpmHost, signing_keys: SigningKeys) -> None:
    first = tpm_host.attest(signing_keys)  # enrolls the AK
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["status"] == "pass"
    enrolled = json.loads(tpm_host.registry.read_text())["hosts"]
    assert len(enrolled) == 1
    second = tpm_host.attest(signing_keys)  # quotes with the enrolled AK
    assert second.returncode == 0, second.stdout + second.stderr


def test_a_replayed_quote_fails_on_the_nonce(tpm_host: TpmHost,
                                             signing_keys: SigningKeys) -> None:
    manifest = tpm_host.manifest(signing_keys)
    registry = AkRegistry(tpm_host.registry)
    ak = registry.get(HostId.from_known_hosts(tpm_host.target, tpm_host.instance.known_hosts))
    assert ak is not None, "test_a_clean_host_passes_attest_tpm enrolls the AK"
    predicted = {int(i): v for i, v in manifest.pcrs.items()} | {
        int(i): v for i, v in next(iter(manifest.firmware_pcrs.values())).items()}
    old_nonce = new_nonce()
    with connect(tpm_host.target, known_hosts=tpm_host.instance.known_hosts,
                 identity=tpm_host.identity, timeout=30) as session:
        old = quote(session, ak, old_nonce, timeout=120)
    assert verify(old, ak, old_nonce, predicted).findings == ()
    assert [f.id for f in verify(old, ak, new_nonce(), predicted).findings] == ["tpm.nonce"]


@rerun_if_the_guest_stalls
def test_reset_proves_the_reboot_through_the_tpm(tpm_host: TpmHost,
                                                 signing_keys: SigningKeys) -> None:
    """Drift, then --tpm --reset: the second quote shows a new resetCount, and the PCRs of the
    second boot are again the predicted ones."""
    tpm_host.run("touch", "/etc/hardhost-e2e-drift")
    result = tpm_host.attest(signing_keys, "--reset", "--reset-timeout", str(BOOT_TIMEOUT))
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["before"]["status"] == "drift"
    assert document["after"]["status"] == "pass"
    assert document["after"]["boot_id"] != document["before"]["boot_id"]
    assert tpm_host.measured() == tpm_host.manifest(signing_keys).pcrs


def test_a_quote_by_another_key_is_exit_4(tpm_host: TpmHost, signing_keys: SigningKeys,
                                          tmp_path: Path) -> None:
    # Root on the host makes a new AK at the enrolled handle (an enrollment that the
    # verifier's registry never sees).
    shadow = TpmHost(tpm_host.image, tpm_host.instance, tpm_host.target, tpm_host.identity,
                     tmp_path / "other.json")
    assert shadow.attest(signing_keys).returncode == 0
    refused = tpm_host.attest(signing_keys)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "--tpm-reenroll" in refused.stderr
    renewed = tpm_host.attest(signing_keys, "--tpm-reenroll")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr


def test_pcr11_extended_in_the_guest_fails_attestation(tpm_host: TpmHost,
                                                       signing_keys: SigningKeys) -> None:
    tpm_host.run("tpm2_pcrextend", f"11:sha256={'5a' * 32}")
    result = tpm_host.attest(signing_keys)
    assert result.returncode == 1
    assert ids(result) == {"tpm.pcr.11"}


def test_a_uki_with_one_changed_cmdline_byte_is_refused(
        tpm_host: TpmHost, signing_keys: SigningKeys, tmp_path: Path) -> None:
    """apparmor=1 becomes apparmor=0: one byte, AppArmor off. The old manifest's PCRs name
    the change, whatever the host's own evidence says."""
    original = tpm_host.image.directory
    forged = tmp_path / "forged"
    forged.mkdir()
    for name in ("vmlinuz", "initrd.img", "cmdline", "build.json"):
        (forged / name).symlink_to(original / name)
    cmdline = (original / "cmdline").read_text().strip()
    assert " apparmor=1 " in cmdline
    # Everything else exactly as built: the same kernel, initrd and os-release.
    built = pe.read(original / UKI_NAME)
    osrel_section = built.section(".osrel")
    assert osrel_section is not None
    osrel = tmp_path / "os-release"
    osrel.write_bytes(built.memory_contents(osrel_section))
    uki.assemble_uki(uki.STUB, linux=original / "vmlinuz", initrd=original / "initrd.img",
                     cmdline=cmdline.replace(" apparmor=1 ", " apparmor=0 "),
                     osrel=osrel, out=forged / UKI_NAME)
    disk_with_uki(original / "disk.img", forged / UKI_NAME, forged / "disk.img")
    # vm start boots only artifacts a trusted manifest signs: the forged disk gets a manifest
    # of its own, signed by a key only this start trusts, as a host booted by other means
    # would. The attestation below holds it to the genuine manifest.
    lab_private, lab_public = keygen(tmp_path / "lab")
    resign(forged, tpm_host.manifest(signing_keys), load_private_key(lab_private),
           (UKI_NAME, "disk.img"))
    vm.stop(NAME)
    start(forged, tpm_host.target.port, lab_public)
    result = tpm_host.attest(signing_keys, manifest=tpm_host.manifest_path)
    assert result.returncode == 1
    assert "tpm.pcr.11" in ids(result)
