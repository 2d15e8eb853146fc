"""PE/COFF images: the header fields and section table a UKI and its measurements depend on,
and the Authenticode digest UEFI firmware measures when it loads an image.

Offsets follow the Microsoft PE Format specification ("Optional Header Data Directories",
"Section Table"); the digest follows "Windows Authenticode Portable Executable Signature
Format", section "Calculating the PE Image Hash", as EDK II's DxeTpm2MeasureBootLib
implements it for the TCG PC Client measurements of EV_EFI_BOOT_SERVICES_APPLICATION.
"""

from __future__ import annotations

import array
import hashlib
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.errors import HardhostError

_PE32 = 0x10B
_PE32_PLUS = 0x20B
_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
_SECURITY_DIRECTORY = 4  # the Certificate Table's index among the data directories


class PEError(HardhostError):
    """A file that is not the PE/COFF image it should be."""


@dataclass(frozen=True)
class Section:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int

    @property
    def virtual_end(self) -> int:
        return self.virtual_address + self.virtual_size


@dataclass(frozen=True)
class PEImage:
    """The parsed headers of one PE image, with its bytes."""

    data: bytes
    checksum_offset: int
    certificate_entry_offset: int | None  # None when the image has no Certificate Table entry
    certificate_table: tuple[int, int]  # (file offset, size); (0, 0) when unsigned
    size_of_headers: int
    section_alignment: int
    major_image_version: int
    sections: tuple[Section, ...]

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def memory_contents(self, section: Section) -> bytes:
        """The section as loaded: VirtualSize bytes, zero-filled past its raw data."""
        raw = self.data[section.raw_offset:section.raw_offset + min(section.raw_size,
                                                                    section.virtual_size)]
        return raw + b"\0" * (section.virtual_size - len(raw))


def parse(data: bytes, origin: str = "image") -> PEImage:
    """Parse the headers of a PE32 or PE32+ image; raise `PEError` naming `origin` if malformed."""
    def field(fmt: str, offset: int) -> int:
        try:
            return int(struct.unpack_from(fmt, data, offset)[0])
        except struct.error:
            raise PEError(f"{origin}: truncated PE header at offset {offset}") from None

    if data[:2] != b"MZ":
        raise PEError(f"{origin}: not a PE image (no MZ header)")
    pe = field("<I", 0x3C)
    if data[pe:pe + 4] != b"PE\0\0":
        raise PEError(f"{origin}: not a PE image (no PE signature at {pe:#x})")
    coff = pe + 4
    n_sections = field("<H", coff + 2)
    optional_size = field("<H", coff + 16)
    opt = coff + 20
    magic = field("<H", opt)
    if magic not in (_PE32, _PE32_PLUS):
        raise PEError(f"{origin}: unknown optional header magic {magic:#x}")
    directories = opt + (96 if magic == _PE32 else 112)
    n_directories = field("<I", directories - 4)
    cert_entry: int | None = None
    cert_table = (0, 0)
    if n_directories > _SECURITY_DIRECTORY:
        cert_entry = directories + 8 * _SECURITY_DIRECTORY
        cert_table = (field("<I", cert_entry), field("<I", cert_entry + 4))
    table = opt + optional_size
    sections = []
    for index in range(n_sections):
        try:
            raw_name, vsize, vaddr, rsize, roffset, *_ = _SECTION_HEADER.unpack_from(
                data, table + index * _SECTION_HEADER.size)
        except struct.error:
            raise PEError(f"{origin}: truncated section table") from None
        sections.append(Section(raw_name.rstrip(b"\0").decode("ascii", "replace"), vaddr, vsize,
                                roffset, rsize))
    return PEImage(data=data, checksum_offset=opt + 64, certificate_entry_offset=cert_entry,
                   certificate_table=cert_table, size_of_headers=field("<I", opt + 60),
                   section_alignment=field("<I", opt + 32),
                   major_image_version=field("<H", opt + 44), sections=tuple(sections))


def read(path: Path) -> PEImage:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PEError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(data, str(path))


def authenticode_digest(image: PEImage, algorithm: str = "sha256") -> bytes:
    """The Authenticode digest of `image`, as UEFI firmware measures it into PCR 4.

    Hashed: the headers up to SizeOfHeaders less the CheckSum field and the Certificate Table
    entry; each section's raw data in file order; then any data after the last section, less
    the certificate table (EDK II hashes that trailing data; so does the Authenticode spec).
    """
    data = image.data
    h = hashlib.new(algorithm)
    checksum_end = image.checksum_offset + 4
    h.update(data[:image.checksum_offset])
    if image.certificate_entry_offset is None:
        h.update(data[checksum_end:image.size_of_headers])
    else:
        h.update(data[checksum_end:image.certificate_entry_offset])
        h.update(data[image.certificate_entry_offset + 8:image.size_of_headers])
    hashed = image.size_of_headers
    for section in sorted(image.sections, key=lambda s: s.raw_offset):
        if section.raw_size == 0:
            continue
        chunk = data[section.raw_offset:section.raw_offset + section.raw_size]
        if len(chunk) != section.raw_size:
            raise PEError(f"section {section.name} runs past the end of the file")
        h.update(chunk)
        hashed += section.raw_size
    cert_size = image.certificate_table[1]
    if len(data) > hashed + cert_size:
        h.update(data[hashed:len(data) - cert_size])
    elif len(data) < hashed + cert_size:
        raise PEError("the certificate table runs past the end of the file")
    return h.digest()


def checksum(data: bytes, checksum_offset: int) -> int:
    """The PE CheckSum of `data`, as imagehlp's CheckSumMappedFile computes it: the sum of its
    little-endian 16-bit words with carries folded back in, the CheckSum field read as zero,
    plus the file length. (Folding once at the end equals folding after every word.)"""
    blob = bytearray(data)
    blob[checksum_offset:checksum_offset + 4] = b"\0\0\0\0"
    if len(blob) % 2:
        blob.append(0)
    words = array.array("H", bytes(blob))
    if sys.byteorder == "big":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def with_timestamp(data: bytes, timestamp: int) -> bytes:
    """`data` with its COFF TimeDateStamp set to `timestamp` and its CheckSum recomputed."""
    image = parse(data)
    blob = bytearray(data)
    pe_offset = struct.unpack_from("<I", blob, 0x3C)[0]
    struct.pack_into("<I", blob, pe_offset + 8, timestamp)
    struct.pack_into("<I", blob, image.checksum_offset, checksum(bytes(blob),
                                                                 image.checksum_offset))
    return bytes(blob)


def timestamp(data: bytes) -> int:
    """The COFF TimeDateStamp of `data`."""
    parse(data)
    pe_offset = struct.unpack_from("<I", data, 0x3C)[0]
    return int(struct.unpack_from("<I", data, pe_offset + 8)[0])
