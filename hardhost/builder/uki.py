"""A Unified Kernel Image: systemd-stub with the kernel, initrd, command line and os-release
added as PE sections, and the FAT ESP image that boots it.

Debian 12 has no ukify, so the sections are added with objcopy, at addresses computed from
the stub's own layout. Both outputs are deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hardhost.builder import pe
from hardhost.core.errors import BuildError, ToolMissing
from hardhost.core.run import CLEAN_PATH, run

log = logging.getLogger(__name__)

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
STUB_PACKAGE = "systemd-boot-efi"
ESP_PATH = "EFI/BOOT/BOOTX64.EFI"  # the removable-media boot path for x64 (UEFI 2.10, 3.5.1.1)

# Added sections, in layout order: the small ones first, the kernel last, as ukify lays
# them out. systemd-stub finds each by name, so the order in the file is free.
SECTION_ORDER = (".osrel", ".cmdline", ".initrd", ".linux")
_PAGE = 4096  # added sections start on page boundaries (and on the stub's SectionAlignment)

# Tools this module runs, with their Debian package (hardhost.core.run names its own).
_TOOLS = {"objcopy": "binutils", "mkfs.vfat": "dosfstools", "mmd": "mtools",
          "mcopy": "mtools", "sbsign": "sbsigntool"}
_ESP_VOLUME_ID = "48484f53"  # "HHOS": fixed, so two ESP images of one UKI are identical
_ESP_SLACK = 2 * 2**20  # free space beyond the UKI: FAT tables, directories, rounding


class UKIError(BuildError):
    """A UKI or ESP that cannot be assembled from the given inputs."""


@dataclass(frozen=True)
class Placement:
    name: str
    source: Path
    vma: int
    size: int


def _tool(name: str) -> str:
    found = shutil.which(name, path=CLEAN_PATH)
    if found is None:
        raise ToolMissing(name, _TOOLS.get(name, name))
    return found


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UKIError(f"{path}: {what} not found")


def read_stub(stub: Path) -> pe.PEImage:
    """Parse the systemd-stub at `stub`; a missing one names the package that ships it."""
    if not stub.is_file():
        raise ToolMissing(str(stub), STUB_PACKAGE)
    image = pe.read(stub)
    if image.section(".sdmagic") is None:
        raise UKIError(f"{stub}: not a systemd-stub (no .sdmagic section)")
    taken = sorted({s.name for s in image.sections} & set(SECTION_ORDER))
    if taken:
        raise UKIError(f"{stub}: already has section {taken[0]}; pass the bare stub")
    return image


def layout(stub: pe.PEImage, sources: dict[str, Path]) -> list[Placement]:
    """Addresses for the added sections: after the stub's last section, page-aligned, each
    after the one before, so none overlaps the stub or another."""
    alignment = math.lcm(_PAGE, stub.section_alignment)
    address = _align(max(s.virtual_end for s in stub.sections), alignment)
    placements = []
    for name in SECTION_ORDER:
        size = sources[name].stat().st_size
        placements.append(Placement(name, sources[name], address, size))
        address = _align(address + max(size, 1), alignment)
    return placements


def check_kernel(linux: Path) -> None:
    """Refuse a kernel systemd-stub 252 would start through the legacy EFI handover protocol.

    A kernel whose PE MajorImageVersion is 1 or more takes the initrd through LoadFile2 and
    is started with LoadImage, which is what the PCR 4 and PCR 9 predictions assume
    (systemd 252 src/boot/efi/pe.c, pe_kernel_info()).
    """
    kernel = pe.read(linux)
    if kernel.major_image_version < 1:
        raise UKIError(f"{linux}: kernel EFI stub too old (PE image version "
                       f"{kernel.major_image_version}); the UKI needs one that loads the "
                       "initrd over LoadFile2 (version 1 or later)")


def assemble_uki(stub: Path, *, linux: Path, initrd: Path, cmdline: str, osrel: Path,
                 out: Path) -> list[Placement]:
    """Write the UKI to `out` and return where each added section was placed.

    `cmdline` is the exact kernel command line, ASCII without a trailing newline:
    systemd-stub measures the .cmdline section's bytes into PCR 11 as they are, and hands
    them to the kernel as UTF-16, which the kernel measures into PCR 9.
    """
    stub_image = read_stub(stub)
    for path, what in ((linux, "kernel"), (initrd, "initrd"), (osrel, "os-release")):
        _require_file(path, what)
    if not cmdline or not cmdline.isascii() or any(c in cmdline for c in "\0\n"):
        raise UKIError(f"kernel command line {cmdline[:60]!r}: empty, not ASCII, or has a "
                       "newline or NUL")
    check_kernel(linux)
    objcopy = _tool("objcopy")
    with tempfile.TemporaryDirectory(prefix="uki-", dir=out.parent) as scratch:
        cmdline_file = Path(scratch) / "cmdline"
        cmdline_file.write_text(cmdline, encoding="utf-8")
        placements = layout(stub_image, {".osrel": osrel, ".cmdline": cmdline_file,
                                         ".initrd": initrd, ".linux": linux})
        args: list[str | Path] = [objcopy]
        for p in placements:
            args += ["--add-section", f"{p.name}={p.source}",
                     "--change-section-vma", f"{p.name}={p.vma:#x}"]
        partial = Path(scratch) / "uki.efi"
        run([*args, stub, partial])
        data = partial.read_bytes()
        # sbsign pads an image to 8 bytes before appending its certificate table (the
        # Authenticode spec aligns that table), and the padding is hashed. Padding here keeps
        # the Authenticode digest, and so the PCR 4 prediction, the same once signed.
        data += b"\0" * (-len(data) % 8)
        # objcopy stamps the PE header with the current time (binutils 2.40 ignores
        # SOURCE_DATE_EPOCH here); give it back the stub's own stamp.
        data = pe.with_timestamp(data, pe.timestamp(stub_image.data))
        _check_sections(pe.parse(data, str(out)), stub_image, placements)
        _write_atomically(out, data)
    log.info("  UKI %s: %s", out.name, ", ".join(f"{p.name}@{p.vma:#x}" for p in placements))
    return placements


def _check_sections(uki: pe.PEImage, stub: pe.PEImage, placements: Sequence[Placement]) -> None:
    """objcopy must keep the stub's sections and add ours where asked, at their full size."""
    for original in stub.sections:
        kept = uki.section(original.name)
        if kept is None or kept.virtual_address != original.virtual_address:
            raise UKIError(f"objcopy moved or dropped the stub's {original.name} section")
    for p in placements:
        added = uki.section(p.name)
        if added is None or (added.virtual_address, added.virtual_size) != (p.vma, p.size):
            raise UKIError(f"objcopy placed {p.name} other than at {p.vma:#x}, {p.size} bytes")


def _write_atomically(out: Path, data: bytes) -> None:
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(data)
    partial.chmod(0o644)
    partial.replace(out)


def make_esp(uki: Path, out: Path, *, source_date_epoch: int) -> None:
    """Write a FAT image to `out` holding `uki` as EFI/BOOT/BOOTX64.EFI.

    The volume id is fixed and every timestamp is `source_date_epoch`, so the same UKI gives
    the same image. The image has no partition table: firmware reads it as a whole-disk FAT.
    """
    _require_file(uki, "UKI")
    mkfs, mmd, mcopy = _tool("mkfs.vfat"), _tool("mmd"), _tool("mcopy")
    size_kib = _align(uki.stat().st_size + _ESP_SLACK, 2**20) // 1024
    # mtools dates new entries from SOURCE_DATE_EPOCH; MTOOLSRC keeps user config out.
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch), "MTOOLSRC": os.devnull}
    partial = out.with_name(f".{out.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        run([mkfs, "--invariant", "-i", _ESP_VOLUME_ID, "-n", "ESP", "-C", partial,
             str(size_kib)])
        run([mmd, "-i", partial, "::/EFI", "::/EFI/BOOT"], env=env)
        run([mcopy, "-i", partial, uki, f"::/{ESP_PATH}"], env=env)
        partial.chmod(0o644)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def sign_uki(uki: Path, out: Path, *, key: Path, cert: Path) -> None:
    """Sign `uki` for Secure Boot with sbsign, writing the signed image to `out`.

    A UKI from `assemble_uki` is already 8-byte aligned, so sbsign adds no hashed padding
    and the Authenticode digest (PCR 4) of `out` is that of `uki`.
    """
    _require_file(uki, "UKI")
    _require_file(key, "signing key")
    _require_file(cert, "signing certificate")
    run([_tool("sbsign"), "--key", key, "--cert", cert, "--output", out, uki])
