"""PCR predictions on a built image: its real, Debian-signed kernel, and a real OVMF + swtpm
boot at 2048 MiB (vm start uses 1024 MiB: both recorded firmware values are exercised), with
the event log compared event by event when a value differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardhost.builder import disk, eventlog, pcr, pe
from tests.support.keys import KeyPair
from tests.support.pcr import (
    MACHINE,
    OVMF_CODE,
    PHASE_CASES,
    boot_and_read,
    image_inputs,
    mismatch,
    pesign_digest,
    signed_digest,
    systemd_measure,
)
from tests.support.uki import build_uki, disk_with_uki
from tests.support.vms import BuiltImage

pytestmark = pytest.mark.e2e


def test_pcr11_with_a_real_kernel(container_host: BuiltImage, tmp_path: Path) -> None:
    inputs = image_inputs(container_host.directory, tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    for phases in PHASE_CASES:
        predicted = pcr.predict_pcrs(image, phases=phases)[11].value
        assert predicted == systemd_measure(inputs, tmp_path, phases)


def test_authenticode_of_a_signed_kernel(container_host: BuiltImage) -> None:
    """Debian signs its kernels: the digest in that signature is the one to match."""
    kernel = container_host.directory / "vmlinuz"
    digest = pe.authenticode_digest(pe.read(kernel)).hex()
    assert digest == signed_digest(kernel) == pesign_digest(kernel)


def test_predictions_match_a_real_boot(container_host: BuiltImage, client_key: KeyPair,
                                       tmp_path: Path) -> None:
    image = container_host.directory
    inputs = image_inputs(image, tmp_path / "in")
    built = build_uki(tmp_path, inputs)
    booted = disk_with_uki(image / "disk.img", built, tmp_path / "disk.img")
    evidence = boot_and_read(booted, client_key.private)
    predicted = pcr.predict_pcrs(built, loader=disk.SYSTEMD_BOOT, phases=evidence.phases,
                                 firmware=pcr.firmware_golden(OVMF_CODE, MACHINE))
    # Read before the comparison, so a new firmware's values can be recorded from the output.
    print(f"read PCR 0 {evidence.pcrs[0]}, PCR 7 {evidence.pcrs[7]} on {MACHINE}")
    for index, value in predicted.items():
        logged = eventlog.events_for(evidence.log, index)
        assert evidence.pcrs[index] == value.value, mismatch(index, value, logged)
