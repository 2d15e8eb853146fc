"""UKI inputs (a small PE that passes for a kernel, an initrd, an os-release) and UKIs
assembled from them, for the UKI and PCR tests."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import disk, pe, uki
from hardhost.core.run import run
from hardhost.image import layout
from tests.support.tools import need

CMDLINE = "root=/dev/mapper/root ro console=ttyS0 hardhost.roothash=" + "ab" * 32
OSREL = 'PRETTY_NAME="hardhost test"\nID=debian\nVERSION_ID="12"\n'


def need_stub() -> Path:
    if not uki.STUB.is_file():
        pytest.fail(f"{uki.STUB} not found: apt-get install {uki.STUB_PACKAGE}")
    return uki.STUB


# The EV_EVENT_TAG descriptions a Linux EFI stub that measures into PCR 9 carries.
KERNEL_TAGS = b"LOADED_IMAGE::LoadOptions\0Linux initrd\0"


def fake_kernel(path: Path, *, tags: bytes = KERNEL_TAGS) -> Path:
    """A small PE application that passes for a kernel with a LoadFile2-capable EFI stub:
    the stub itself with MajorImageVersion 1, `tags` appended after its sections, and its
    checksum made right again."""
    data = bytearray(need_stub().read_bytes() + tags)
    image = pe.parse(bytes(data))
    struct.pack_into("<H", data, image.checksum_offset - 20, 1)  # MajorImageVersion
    struct.pack_into("<I", data, image.checksum_offset,
                     pe.checksum(bytes(data), image.checksum_offset))
    path.write_bytes(bytes(data))
    return path


@dataclass(frozen=True)
class Inputs:
    linux: Path
    initrd: Path
    osrel: Path
    cmdline: str


def make_inputs(directory: Path, *, cmdline: str = CMDLINE, initrd: bytes = b"") -> Inputs:
    directory.mkdir(parents=True, exist_ok=True)
    initrd_path = directory / "initrd.img"
    initrd_path.write_bytes(initrd or bytes(range(256)) * 3001)  # not page-sized on purpose
    osrel = directory / "os-release"
    osrel.write_text(OSREL)
    return Inputs(fake_kernel(directory / "vmlinuz"), initrd_path, osrel, cmdline)


def build_uki(directory: Path, inputs: Inputs, name: str = "uki.efi") -> Path:
    out = directory / name
    uki.assemble_uki(need_stub(), linux=inputs.linux, initrd=inputs.initrd,
                     cmdline=inputs.cmdline, osrel=inputs.osrel, out=out)
    return out


def sign(image: Path, directory: Path) -> tuple[Path, Path]:
    """`image` signed with a fresh self-signed key; returns the signed image and the cert."""
    key, cert = directory / "db.key", directory / "db.crt"
    run([need("openssl", "openssl"), "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-subj", "/CN=hardhost test", "-days", "1", "-keyout", key, "-out", cert])
    signed = directory / "signed.efi"
    uki.sign_uki(image, signed, key=key, cert=cert)
    return signed, cert


def disk_with_uki(original: Path, built_uki: Path, out: Path) -> Path:
    """A copy of the disk image `original` whose ESP holds systemd-boot and `built_uki` as
    its one boot entry, as the disk stage lays it out."""
    table = json.loads(run(["sfdisk", "--json", original], capture=True).stdout)
    esp = next(p for p in table["partitiontable"]["partitions"]
               if p["name"] == layout.ESP_LABEL)
    start, size = esp["start"] * 512, esp["size"] * 512
    run(["cp", "--sparse=always", original, out])
    fat = out.with_name(f"{out.name}.esp")
    disk.make_fat(disk.esp_files(built_uki, disk.SYSTEMD_BOOT), fat, size=size,
                  source_date_epoch=0)
    fd = os.open(out, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(size), start)  # the old ESP's blocks go with it
        disk.copy_into(fat, fd, start, size)
    finally:
        os.close(fd)
        fat.unlink()
    return out
