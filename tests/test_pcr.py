"""PCR predictions, checked against systemd-measure, pesign and osslsigncode and a recorded
OVMF event log. tests/e2e/test_pcr_image.py checks them on a built image's real kernel and
on a real OVMF + swtpm boot (tests/support/pcr.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hardhost.builder import disk, eventlog, pcr, pe
from hardhost.core.run import run
from tests.support.pcr import PHASE_CASES, pesign_digest, signed_digest, systemd_measure
from tests.support.tools import need
from tests.support.uki import build_uki, fake_kernel, make_inputs, need_stub, sign

DATA = Path(__file__).parent / "data" / "uki"


@pytest.mark.parametrize("phases", PHASE_CASES, ids=lambda p: ":".join(p) or "none")
@pytest.mark.parametrize("cmdline", ["ro quiet", "root=/dev/mapper/root ro console=ttyS0 x=" +
                                     "f" * 300])
def test_pcr11_equals_systemd_measure(tmp_path: Path, cmdline: str,
                                      phases: tuple[str, ...]) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in", cmdline=cmdline, initrd=cmdline.encode() * 999)
    image = build_uki(tmp_path, inputs)
    predicted = pcr.predict_pcrs(image, phases=phases)[11]
    assert predicted.value == systemd_measure(inputs, tmp_path, phases)


def test_pcr11_measures_optional_sections_in_stub_order(tmp_path: Path) -> None:
    """A .dtb and a .splash, added after the others, are still measured after .initrd."""
    objcopy = need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    extra = {"dtb": tmp_path / "board.dtb", "splash": tmp_path / "splash.bmp"}
    extra["dtb"].write_bytes(b"\xd0\x0d\xfe\xed" + bytes(1000))
    extra["splash"].write_bytes(b"BM" + bytes(3000))
    end = max(s.virtual_end for s in pe.read(image).sections)
    args: list[str | Path] = [objcopy]
    for offset, (name, path) in enumerate(extra.items(), 1):
        args += ["--add-section", f".{name}={path}",
                 "--change-section-vma", f".{name}={end + offset * 0x100000:#x}"]
    full = tmp_path / "full.efi"
    run([*args, image, full])
    events = pcr.predict_pcrs(full)[11].events
    assert [e.description.split()[0] for e in events[::2]] == [
        ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb"]
    assert pcr.replay(events) == systemd_measure(inputs, tmp_path, (), extra)


def test_section_is_measured_at_its_virtual_size() -> None:
    data = bytes(range(256)) * 4
    short = pe.Section(".osrel", 0x1000, 100, 0, 512)
    long = pe.Section(".osrel", 0x1000, 700, 0, 512)
    image = pe.PEImage(data=data, checksum_offset=0, certificate_entry_offset=None,
                       certificate_table=(0, 0), size_of_headers=0, section_alignment=512,
                       major_image_version=0, sections=(short, long))
    assert image.memory_contents(short) == data[:100]
    assert image.memory_contents(long) == data[:512] + bytes(188)


def test_unknown_phase_is_refused(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    image = build_uki(tmp_path, make_inputs(tmp_path / "in"))
    with pytest.raises(pcr.PCRError, match="unknown boot phase 'booted'"):
        pcr.predict_pcrs(image, phases=("booted",))


def test_authenticode_equals_pesign(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    for path in (need_stub(), inputs.linux, image):
        assert pe.authenticode_digest(pe.read(path)).hex() == pesign_digest(path), path


def test_authenticode_equals_the_signers_digest(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    image = build_uki(tmp_path, make_inputs(tmp_path / "in"))
    signed, _cert = sign(image, tmp_path)
    assert pe.authenticode_digest(pe.read(signed)).hex() == signed_digest(signed)


def test_pcr4_events(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    events = pcr.predict_pcrs(image)[4].events
    assert [(e.type, e.description) for e in events] == [
        (pcr.EventType.EV_EFI_ACTION, "Calling EFI Application from Boot Option"),
        (pcr.EventType.EV_SEPARATOR, "separator"),
        (pcr.EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "UKI"),
        (pcr.EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "kernel (.linux section)"),
    ]
    assert events[0].digest == hashlib.sha256(b"Calling EFI Application from Boot Option"
                                              ).hexdigest()
    assert events[1].digest == hashlib.sha256(bytes(4)).hexdigest()
    assert events[2].digest == pesign_digest(image)
    assert events[3].digest == pesign_digest(inputs.linux)


def test_systemd_boot_adds_its_own_image_to_pcr4_and_the_load_options_twice_to_pcr12(
        tmp_path: Path) -> None:
    need("objcopy", "binutils")
    if not disk.SYSTEMD_BOOT.is_file():
        pytest.fail(f"{disk.SYSTEMD_BOOT} not found: apt-get install systemd-boot-efi")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    alone = pcr.predict_pcrs(image)
    started = pcr.predict_pcrs(image, loader=disk.SYSTEMD_BOOT)
    events = started[4].events
    assert [e.description for e in events] == [
        "Calling EFI Application from Boot Option", "separator", "systemd-boot", "UKI",
        "kernel (.linux section)"]
    assert events[2].digest == pesign_digest(disk.SYSTEMD_BOOT)
    assert events[3:] == alone[4].events[2:]
    # The command line as UTF-16 with its NUL, measured by systemd-boot and by the stub.
    uki = pe.read(image)
    section = uki.section(".cmdline")
    assert section is not None
    options = (uki.memory_contents(section).split(b"\0")[0].decode() + "\0").encode(
        "utf-16-le")
    assert [e.digest for e in started[12].events] == [hashlib.sha256(options).hexdigest()] * 2
    assert alone[12].value == pcr.ZERO and started[12].value != pcr.ZERO
    for index in (9, 11, 13):
        assert started[index] == alone[index]


def test_pcr9_events(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in", cmdline="ro quiet")
    events = pcr.predict_pcrs(build_uki(tmp_path, inputs))[9].events
    assert [(e.type, e.description) for e in events] == [
        (pcr.EventType.EV_EVENT_TAG, "LOADED_IMAGE::LoadOptions"),
        (pcr.EventType.EV_EVENT_TAG, "Linux initrd"),
    ]
    # The command line as UTF-16LE with its NUL, as systemd-stub hands it to the kernel.
    assert events[0].digest == hashlib.sha256("ro quiet\0".encode("utf-16-le")).hexdigest()
    assert events[1].digest == hashlib.sha256(inputs.initrd.read_bytes()).hexdigest()


def test_kernel_without_tag_strings_logs_nothing_in_pcr9(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    fake_kernel(inputs.linux, tags=b"Linux initrd\0")
    events = pcr.predict_pcrs(build_uki(tmp_path, inputs))[9].events
    assert [e.description for e in events] == ["Linux initrd"]


def test_predictions_and_firmware_golden_values(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    image = build_uki(tmp_path, make_inputs(tmp_path / "in"))
    code = tmp_path / "CODE.fd"
    code.write_bytes(b"firmware")
    machine = pcr.machine_key(memory_mib=512, cpus=1)
    golden = pcr.FirmwareGolden(hashlib.sha256(b"firmware").hexdigest(), "", machine, "test",
                                {0: "0a" * 32, 7: "07" * 32})
    found = pcr.firmware_golden(code, machine, {(golden.code_sha256, machine): golden})
    predicted = pcr.predict_pcrs(image, firmware=found)
    assert list(predicted) == [0, 4, 7, 9, 11, 12, 13]
    assert predicted[0].source is pcr.Source.FIRMWARE_GOLDEN
    assert predicted[7].value == "07" * 32 and predicted[7].events == ()
    assert predicted[12].value == predicted[13].value == pcr.ZERO
    for index in (4, 9, 11):
        assert predicted[index].value == pcr.replay(predicted[index].events)


def test_unknown_firmware_says_how_to_record_it(tmp_path: Path) -> None:
    code = tmp_path / "CODE.fd"
    code.write_bytes(b"other firmware")
    with pytest.raises(pcr.PCRError) as caught:
        pcr.firmware_golden(code, pcr.machine_key(memory_mib=2048, cpus=2))
    assert "no recorded PCR 0/7 values" in str(caught.value)
    assert "\n" not in str(caught.value)


def recorded_pcrs() -> dict[int, str]:
    lines = (DATA / "ovmf-pcrs.txt").read_text().split("\n")
    return {int(index): value for index, value in (line.split() for line in lines if line)}


def test_recorded_event_log_replays_to_the_recorded_pcrs() -> None:
    """A log and PCRs read from one OVMF + swtpm boot: the parser and replay agree with the
    TPM, and the firmware's PCR 0 and 7 are the golden values kept for this OVMF build."""
    logged = eventlog.parse((DATA / "ovmf-eventlog.bin").read_bytes())
    recorded = recorded_pcrs()
    for index in (0, 1, 2, 3, 4, 5, 6, 7, 9, 11):
        assert pcr.replay(eventlog.events_for(logged, index)) == recorded[index], index
    machine = pcr.machine_key(memory_mib=2048, cpus=2)
    (golden,) = [g for g in pcr.KNOWN_FIRMWARE.values()
                 if "OVMF_CODE_4M" in g.description and g.machine == machine]
    assert golden.pcrs == {0: recorded[0], 7: recorded[7]}


def test_recorded_event_log_has_the_predicted_shape(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    logged = eventlog.parse((DATA / "ovmf-eventlog.bin").read_bytes())
    predicted = pcr.predict_pcrs(build_uki(tmp_path, make_inputs(tmp_path / "in")))
    for index in (4, 9, 11):
        seen = eventlog.events_for(logged, index)
        assert [e.type for e in seen] == [e.type for e in predicted[index].events], index
    assert [e.description for e in eventlog.events_for(logged, 9)] == [
        e.description for e in predicted[9].events]
    # The constant events, and the recorded boot's kernel digest, match exactly.
    assert [e.digest for e in eventlog.events_for(logged, 4)[:2]] == [
        e.digest for e in predicted[4].events[:2]]


def test_truncated_event_log_is_refused() -> None:
    data = (DATA / "ovmf-eventlog.bin").read_bytes()
    with pytest.raises(eventlog.EventLogError, match="truncated"):
        eventlog.parse(data[:-7])
