"""The firmware's TPM 2.0 event log (crypto-agile format), as Linux exposes it in
/sys/kernel/security/tpm0/binary_bios_measurements, reduced to `pcr.Event`s of one bank.

Layout per the TCG PC Client Platform Firmware Profile ("Crypto Agile Log Entry Format"): a
first TCG_PCR_EVENT in SHA-1 format carrying the TCG_EfiSpecIdEvent "Spec ID Event03" (which
lists the digest sizes), then TCG_PCR_EVENT2 records, each with one digest per bank.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hardhost.builder.pcr import BANK, Event, EventType
from hardhost.core.errors import HardhostError

_ALGORITHMS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
_SPEC_ID = b"Spec ID Event03\0"
_EV_NO_ACTION = 0x03
# Event type codes from the TCG PC Client PFP's table of event types, named as
# `pcr.EventType` where the predictions use them; others keep their number.
_TYPES = {0x04: EventType.EV_SEPARATOR, 0x0D: EventType.EV_IPL, 0x06: EventType.EV_EVENT_TAG,
          0x80000003: EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
          0x80000007: EventType.EV_EFI_ACTION}


class EventLogError(HardhostError):
    """An event log that does not parse."""


@dataclass(frozen=True)
class LoggedEvent:
    pcr: int
    type_code: int
    digests: dict[str, str]
    data: bytes

    def as_event(self, bank: str = BANK) -> Event:
        """This record as a `pcr.Event`, for comparison with a prediction."""
        kind: EventType | str = _TYPES.get(self.type_code, f"{self.type_code:#x}")
        text = self.data
        if kind is EventType.EV_EVENT_TAG:  # TCG_PCClientTaggedEvent: id, size, data
            text = self.data[8:]
        # systemd-stub logs its section names as UTF-16 (src/boot/efi/measure.c); the
        # firmware and the Linux stub log ASCII.
        utf16 = len(text) > 1 and text[1] == 0
        description = text.decode("utf-16-le" if utf16 else "ascii", "replace").rstrip("\0")
        if not description or not description.isprintable():
            description = str(kind)
        return Event(self.pcr, kind, description, self.digests[bank])


def parse(data: bytes) -> list[LoggedEvent]:
    """Every TCG_PCR_EVENT2 record after the Spec ID header, in log order."""
    try:
        return _parse(data)
    except struct.error:
        raise EventLogError("the event log is truncated") from None


def _parse(data: bytes) -> list[LoggedEvent]:
    # TCG_PCR_EVENT: pcrIndex, eventType, SHA-1 digest[20], eventSize, event.
    _pcr, _type = struct.unpack_from("<II", data, 0)
    (size,) = struct.unpack_from("<I", data, 28)
    header = data[32:32 + size]
    if not header.startswith(_SPEC_ID):
        raise EventLogError("not a crypto-agile event log (no Spec ID Event03)")
    # TCG_EfiSpecIDEvent: signature[16], platformClass, versions[3], uintnSize, count, sizes.
    (count,) = struct.unpack_from("<I", header, 24)
    sizes = {}
    for index in range(count):
        alg, digest_size = struct.unpack_from("<HH", header, 28 + 4 * index)
        sizes[alg] = digest_size
    offset = 32 + size
    events = []
    while offset + 12 <= len(data):
        pcr, type_code, n_digests = struct.unpack_from("<III", data, offset)
        offset += 12
        digests = {}
        for _ in range(n_digests):
            (alg,) = struct.unpack_from("<H", data, offset)
            if alg not in sizes:
                raise EventLogError(f"digest algorithm {alg:#x} not in the Spec ID event")
            digest = data[offset + 2:offset + 2 + sizes[alg]]
            digests[_ALGORITHMS.get(alg, f"{alg:#x}")] = digest.hex()
            offset += 2 + sizes[alg]
        (event_size,) = struct.unpack_from("<I", data, offset)
        body = data[offset + 4:offset + 4 + event_size]
        if len(body) != event_size:
            raise EventLogError("the event log is truncated")
        offset += 4 + event_size
        events.append(LoggedEvent(pcr, type_code, digests, body))
    return events


def events_for(logged: list[LoggedEvent], pcr: int, bank: str = BANK) -> list[Event]:
    """The events that extended `pcr`, in order (EV_NO_ACTION extends nothing)."""
    return [e.as_event(bank) for e in logged if e.pcr == pcr and e.type_code != _EV_NO_ACTION]
