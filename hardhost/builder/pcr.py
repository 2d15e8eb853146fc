"""PCR values (sha256 bank) a host booted from a UKI must show, predicted at build time.

Each prediction keeps the events that produced it, so a verifier can say which measurement
differs, not only that a PCR does. What each PCR holds, for a UKI that systemd-boot 252
starts as a Type #2 entry, itself started by EDK II (OVMF) from the disk's removable-media
path, with systemd-stub 252 and Linux 6.1:

- PCR 4: EDK II's EV_EFI_ACTION "Calling EFI Application from Boot Option" and EV_SEPARATOR
  (Tcg2Dxe, OnReadyToBoot(); TCG PC Client Platform Firmware Profile), then the
  Authenticode digests of systemd-boot, of the UKI it starts with LoadImage, and of the
  kernel, which systemd-stub starts with LoadImage from its .linux section (each an
  EV_EFI_BOOT_SERVICES_APPLICATION, DxeTpm2MeasureBootLib). The UKI's file name (which
  carries its boot counter during an update) is in the event log's device path only, never
  in a digest: renaming the entry changes no PCR.
- PCR 9: the Linux EFI stub's EV_EVENT_TAG events, the LoadOptions (the command line as
  UTF-16 with its NUL, which systemd-stub sets) then the initrd it receives over LoadFile2
  (drivers/firmware/efi/libstub, efi_measure_tagged_event()). Debian's 6.1 kernels log
  both; a kernel whose stub lacks an event's tag string does not log that event.
- PCR 11: systemd-stub 252 measures each UKI section it knows, in its fixed order: the name
  with its NUL, then the section's VirtualSize bytes as loaded (src/boot/efi/stub.c,
  src/fundamental/tpm-pcr.c). systemd-pcrphase then extends each boot phase word it reaches.
- PCR 12: systemd-boot measures the load options it starts the UKI with (for a Type #2
  entry, the UKI's own .cmdline, as UTF-16 with its NUL), and systemd-stub measures the same
  load options again before it uses them (systemd 252 src/boot/efi/measure.c,
  tpm_log_load_options()). Credentials would add to 12; there are none.
- PCR 13: system extensions, of which there are none: all-zero. A UKI that the firmware
  starts directly (no systemd-boot) gets no load options, and PCR 12 stays all-zero too.
- PCR 0, 7: the firmware code and its Secure Boot variables. They are not predicted; they
  are golden values recorded from a real boot of each firmware build and machine
  configuration (`KNOWN_FIRMWARE`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from hardhost.builder import pe
from hardhost.core.errors import HardhostError

BANK = "sha256"
ZERO = "00" * 32
PREDICTED_PCRS = (4, 9, 11, 12, 13)
FIRMWARE_PCRS = (0, 7)

# systemd 252, src/fundamental/tpm-pcr.c: unified_sections[], the order sd-stub measures in;
# .pcrsig is the one section it does not measure (unified_section_measure()).
STUB_MEASURED_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb",
                          ".pcrpkey")

# systemd-pcrphase words, in boot order (systemd-pcrphase(8), systemd 252). Which of them a
# host has reached depends on its initrd and on whether the units could run; see PHASES_*.
PHASE_ORDER = ("enter-initrd", "leave-initrd", "sysinit", "ready")
# An initramfs-tools initrd runs no systemd, so only the booted system's units remain:
# systemd-pcrphase-sysinit.service (sysinit) and systemd-pcrphase.service (ready, ordered
# only before systemd-user-sessions.service, so possibly after sshd already answers).
PHASES_INITRAMFS_TOOLS = ("sysinit", "ready")
# systemd-pcrphase 252 dlopen()s libtss2-esys, -rc and -mu; without them its units fail
# ("Failed to load TPM2 libraries") and nothing is extended.
PHASES_WITHOUT_TSS2: tuple[str, ...] = ()

# EDK II MdePkg/Include/Guid/EventGroup.h, EFI_CALLING_EFI_APPLICATION.
CALLING_EFI_APPLICATION = "Calling EFI Application from Boot Option"
# The EV_SEPARATOR event data EDK II measures (TCG PC Client PFP: 0x00000000, no error).
SEPARATOR = b"\0\0\0\0"
# Linux include/linux/efi.h: the EV_EVENT_TAG descriptions of the EFI stub's events.
TAG_LOAD_OPTIONS = "LOADED_IMAGE::LoadOptions"
TAG_INITRD = "Linux initrd"


class PCRError(HardhostError):
    """A PCR prediction that cannot be made from the given inputs."""


class EventType(StrEnum):
    """The TCG event types involved, plus systemd-pcrphase, which extends without a log."""

    EV_SEPARATOR = "EV_SEPARATOR"
    EV_EFI_ACTION = "EV_EFI_ACTION"
    EV_EFI_BOOT_SERVICES_APPLICATION = "EV_EFI_BOOT_SERVICES_APPLICATION"
    EV_IPL = "EV_IPL"
    EV_EVENT_TAG = "EV_EVENT_TAG"
    PCRPHASE = "systemd-pcrphase"


class Source(StrEnum):
    PREDICTED = "predicted"  # replayed from the events below
    FIRMWARE_GOLDEN = "firmware-golden"  # recorded from a real boot of that firmware


@dataclass(frozen=True)
class Event:
    """One extend: the PCR, what measured it, what was measured, and the sha256 extended."""

    pcr: int
    type: EventType | str  # a str for a logged event type that predictions do not use
    description: str
    digest: str


@dataclass(frozen=True)
class PCRValue:
    index: int
    value: str
    source: Source
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class FirmwareGolden:
    """PCR 0 and 7 as measured from one firmware build on one machine configuration.

    OVMF's PCR 0 depends on more than its code: the PEI firmware volume it measures runs in
    RAM and holds state that varies with the guest's memory size, so a golden value is
    keyed by the code's sha256 and `machine`, the qemu settings it was recorded with.
    PCR 7 depends on the variable template (Secure Boot state, PK, KEK, db, dbx).
    """

    code_sha256: str
    vars_sha256: str
    machine: str
    description: str
    pcrs: Mapping[int, str]


def machine_key(*, memory_mib: int, cpus: int, accel: str = "tcg") -> str:
    """How a qemu configuration is named in `KNOWN_FIRMWARE`."""
    return f"q35,accel={accel},smp={cpus},m={memory_mib}"


_OVMF_4M = ("b157d97b1f69729514feb7f201d2cbe4957f23ab77920e361fe9f822ba49ca4c",
            "5d2ac383371b408398accee7ec27c8c09ea5b74a0de0ceea6513388b15be5d1e",
            "Debian 12 ovmf 2022.11-6+deb12u2, OVMF_CODE_4M.fd with a copy of OVMF_VARS_4M.fd "
            "(Secure Boot off, no keys enrolled)")
_OVMF_4M_PCR7 = "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068"

# Recorded from real boots (tests/test_pcr.py, the e2e test, prints what it read).
KNOWN_FIRMWARE: Mapping[tuple[str, str], FirmwareGolden] = {
    (golden.code_sha256, golden.machine): golden for golden in (
        FirmwareGolden(*_OVMF_4M[:2], machine_key(memory_mib=2048, cpus=2), _OVMF_4M[2],
                       {0: "1119fe2cc2550e9294b01a6355bfeb7ac1507139f07c0afec49f6644002acca9",
                        7: _OVMF_4M_PCR7}),
        FirmwareGolden(*_OVMF_4M[:2], machine_key(memory_mib=1024, cpus=2), _OVMF_4M[2],
                       {0: "3e695b1035f9b7fa5ade7430fc93730efab93bcb6c0a843cdab260323f7734c4",
                        7: _OVMF_4M_PCR7}),
    )
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extend(value: str, digest: str) -> str:
    """TPM2_PCR_Extend: the new value is H(old value || digest)."""
    return sha256(bytes.fromhex(value) + bytes.fromhex(digest))


def replay(events: Iterable[Event], start: str = ZERO) -> str:
    value = start
    for event in events:
        value = extend(value, event.digest)
    return value


def firmware_golden(code: Path, machine: str,
                    known: Mapping[tuple[str, str], FirmwareGolden] = KNOWN_FIRMWARE
                    ) -> FirmwareGolden:
    """The recorded PCR 0 and 7 for the firmware code file `code` on `machine`."""
    try:
        digest = sha256(code.read_bytes())
    except OSError as exc:
        raise PCRError(f"{code}: cannot read the firmware: {exc.strerror}") from None
    golden = known.get((digest, machine))
    if golden is None:
        raise PCRError(f"{code} (sha256 {digest[:16]}…) on {machine}: no recorded PCR 0/7 "
                       "values; boot it once with a TPM and record them in KNOWN_FIRMWARE")
    return golden


def _stub_section(uki: pe.PEImage, name: str) -> pe.Section | None:
    """The section systemd-stub 252 takes for `name`: it compares only strlen(name) bytes of
    each header name, and a later match replaces an earlier one (pe.c, locate_sections())."""
    found = None
    for section in uki.sections:
        if section.name.startswith(name) and section.virtual_size:
            found = section
    return found


def _required(uki: pe.PEImage, name: str) -> bytes:
    section = _stub_section(uki, name)
    if section is None:
        raise PCRError(f"the UKI has no {name} section")
    return uki.memory_contents(section)


def pcr11_events(uki: pe.PEImage, phases: Sequence[str] = PHASES_WITHOUT_TSS2) -> list[Event]:
    """systemd-stub's section measurements, then one extend per systemd-pcrphase word."""
    events = []
    for name in STUB_MEASURED_SECTIONS:
        section = _stub_section(uki, name)
        if section is None:
            continue
        events.append(Event(11, EventType.EV_IPL, f"{name} section name",
                            sha256(name.encode() + b"\0")))
        events.append(Event(11, EventType.EV_IPL, f"{name} section contents",
                            sha256(uki.memory_contents(section))))
    unknown = [p for p in phases if p not in PHASE_ORDER]
    if unknown:
        raise PCRError(f"unknown boot phase {unknown[0]!r}; known: {', '.join(PHASE_ORDER)}")
    events += [Event(11, EventType.PCRPHASE, f"phase {word}", sha256(word.encode()))
               for word in phases]
    return events


def pcr4_events(uki: pe.PEImage, loader: pe.PEImage | None = None) -> list[Event]:
    """EDK II's boot-attempt events, then the Authenticode digests of the boot loader (when
    one starts the UKI), the UKI and its kernel.

    Assumes the disk is the first boot option the firmware tries: each failed attempt before
    it adds "Returning from EFI Application from Boot Option" and another "Calling" event.
    """
    kernel = pe.parse(_required(uki, ".linux"), ".linux section")
    started_by = [] if loader is None else [
        Event(4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "systemd-boot",
              pe.authenticode_digest(loader).hex())]
    return [
        Event(4, EventType.EV_EFI_ACTION, CALLING_EFI_APPLICATION,
              sha256(CALLING_EFI_APPLICATION.encode())),
        Event(4, EventType.EV_SEPARATOR, "separator", sha256(SEPARATOR)),
        *started_by,
        Event(4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "UKI",
              pe.authenticode_digest(uki).hex()),
        Event(4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "kernel (.linux section)",
              pe.authenticode_digest(kernel).hex()),
    ]


def load_options(cmdline_section: bytes) -> bytes:
    """The LoadOptions systemd-stub gives the kernel: the .cmdline text up to any NUL, as
    UTF-16LE with a NUL terminator (systemd 252 src/boot/efi/linux.c, linux_exec())."""
    text = cmdline_section.split(b"\0", 1)[0]
    if not text.isascii():
        raise PCRError("the .cmdline section is not ASCII; its UTF-16 form is not predicted")
    return (text.decode("ascii") + "\0").encode("utf-16-le")


def pcr9_events(uki: pe.PEImage) -> list[Event]:
    """The Linux EFI stub's tagged events: the command line it was given, then the initrd.

    An event is predicted only when the kernel carries its tag string: the EFI stub is the
    uncompressed part of a bzImage, and a stub without the string cannot log the event.
    """
    kernel = _required(uki, ".linux")
    events = [
        Event(9, EventType.EV_EVENT_TAG, TAG_LOAD_OPTIONS,
              sha256(load_options(_required(uki, ".cmdline")))),
        Event(9, EventType.EV_EVENT_TAG, TAG_INITRD, sha256(_required(uki, ".initrd"))),
    ]
    return [e for e in events if e.description.encode() + b"\0" in kernel]


def pcr12_events(uki: pe.PEImage) -> list[Event]:
    """systemd-boot's and then systemd-stub's measurement of the load options: the UKI's
    .cmdline, which systemd-boot passes for a Type #2 entry."""
    digest = sha256(load_options(_required(uki, ".cmdline")))
    return [Event(12, EventType.EV_IPL, "load options (systemd-boot)", digest),
            Event(12, EventType.EV_IPL, "load options (systemd-stub)", digest)]


def _predicted(index: int, events: Sequence[Event]) -> PCRValue:
    return PCRValue(index, replay(events), Source.PREDICTED, tuple(events))


def predict_pcrs(uki_path: Path, *, loader: Path | None = None,
                 phases: Sequence[str] = PHASES_WITHOUT_TSS2,
                 firmware: FirmwareGolden | None = None) -> dict[int, PCRValue]:
    """Predict PCRs 4, 9, 11, 12 and 13 for a boot of the UKI at `uki_path`, started by the
    systemd-boot at `loader` (or by the firmware itself, without one), and add 0 and 7 from
    `firmware` when it is given.

    Predict from the files the firmware boots. Signing keeps the Authenticode digest only
    when the unsigned file was 8-byte aligned, as `builder.uki.assemble_uki` makes it.
    """
    uki = pe.read(uki_path)
    loader_image = None if loader is None else pe.read(loader)
    predictions = {
        4: _predicted(4, pcr4_events(uki, loader_image)),
        9: _predicted(9, pcr9_events(uki)),
        11: _predicted(11, pcr11_events(uki, phases)),
        12: _predicted(12, [] if loader is None else pcr12_events(uki)),
        13: _predicted(13, []),
    }
    if firmware is not None:
        for index in FIRMWARE_PCRS:
            predictions[index] = PCRValue(index, firmware.pcrs[index], Source.FIRMWARE_GOLDEN)
    return dict(sorted(predictions.items()))
