"""The disk image: a GPT disk with an ESP (systemd-boot and the image's UKI), two A/B slots of
a root partition and its dm-verity partition each, and a state partition.

The partition types are those of the Discoverable Partitions Specification; slot A's
partition UUIDs derive from the image's root hash (`layout.slot_uuids`), which is how the
command line inside the UKI finds them. Slot B starts empty: an update writes it. Every
identifier is derived from the root hash and every timestamp is the build's epoch, so the
same image gives the same bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hardhost.builder.spec import Disk
from hardhost.core.errors import BuildError
from hardhost.core.run import run
from hardhost.image import layout

MIB = 2**20
SECTOR = 512
# systemd-boot from Debian's systemd-boot-efi, the package that also ships the UKI's stub.
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SYSTEMD_BOOT_PACKAGE = "systemd-boot-efi"
# No menu and no editor: a boot-time command line edit would boot something the manifest
# does not describe. No entries of systemd-boot's own making (the firmware, other OSes).
LOADER_CONF = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
_ESP_VOLUME_ID = "48484f53"  # "HHOS": fixed, so two ESPs of one image are identical
_HASH_SIZE = 32  # sha256, the hash veritysetup format uses
_WRITE_CHUNK = MIB


class DiskError(BuildError):
    """A disk image that cannot be made from the given inputs."""


@dataclass(frozen=True)
class Partition:
    label: str
    type_uuid: str
    uuid: str
    start: int  # bytes from the start of the disk
    size: int  # bytes

    @property
    def number(self) -> int:
        return layout.PARTITION_ORDER.index(self.label) + 1


def verity_size(data_size: int) -> int:
    """Bytes a dm-verity hash tree over `data_size` bytes of 4 KiB blocks needs, with its
    superblock, rounded up to MiB: each level has one 32-byte hash per block below."""
    block = layout.DATA_BLOCK_SIZE
    per_block = block // _HASH_SIZE
    blocks = math.ceil(data_size / block)
    total = 1  # the superblock
    while blocks > 1:
        blocks = math.ceil(blocks / per_block)
        total += blocks
    return math.ceil(total * block / MIB) * MIB


def _derived_uuid(root_hash: str, what: str) -> str:
    digest = hashlib.sha256(f"hardhost-disk:{what}:{root_hash}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def partition_table(disk: Disk, root_hash: str) -> list[Partition]:
    """The partitions of a disk whose slot A holds the image with `root_hash`, each aligned
    to 1 MiB after the GPT's first MiB."""
    slot = disk.slot_size_mib * MIB
    root_a, verity_a = layout.slot_uuids(root_hash)
    sizes = {layout.ESP_LABEL: (layout.ESP_TYPE, disk.esp_size_mib * MIB),
             layout.STATE_LABEL: (layout.LINUX_DATA_TYPE, disk.state_size_mib * MIB)}
    uuids = {layout.root_label("a"): root_a, layout.verity_label("a"): verity_a}
    for name in layout.SLOTS:
        sizes[layout.root_label(name)] = (layout.ROOT_TYPE, slot)
        sizes[layout.verity_label(name)] = (layout.ROOT_VERITY_TYPE, verity_size(slot))
    partitions = []
    offset = MIB
    for label in layout.PARTITION_ORDER:
        type_uuid, size = sizes[label]
        partitions.append(Partition(label, type_uuid, uuids.get(label) or _derived_uuid(
            root_hash, label), offset, size))
        offset += size
    return partitions


def disk_size(partitions: list[Partition]) -> int:
    """The disk's size: its partitions, and a MiB at the end for the backup GPT."""
    return partitions[-1].start + partitions[-1].size + MIB


def sfdisk_script(partitions: list[Partition], root_hash: str) -> str:
    lines = ["label: gpt", f"label-id: {_derived_uuid(root_hash, 'disk')}", "unit: sectors",
             f"first-lba: {MIB // SECTOR}", f"sector-size: {SECTOR}", ""]
    lines += [f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type_uuid}, "
              f"uuid={p.uuid}, name=\"{p.label}\"" for p in partitions]
    return "\n".join(lines) + "\n"


def make_fat(files: Mapping[str, Path | str], out: Path, *, size: int,
             source_date_epoch: int) -> None:
    """A FAT file system of `size` bytes at `out` holding `files` (path on the ESP ->
    source file, or text). The volume id is fixed and every timestamp is the epoch."""
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch), "MTOOLSRC": os.devnull}
    run(["mkfs.vfat", "--invariant", "-F", "32", "-i", _ESP_VOLUME_ID, "-n", "ESP", "-C",
         out, str(size // 1024)])
    folders = sorted({str(Path(path).parents[i]) for path in files
                      for i in range(len(Path(path).parents) - 1)}, key=len)
    if folders:
        run(["mmd", "-i", out, *[f"::/{folder}" for folder in folders]], env=env)
    with tempfile.TemporaryDirectory(prefix="esp-", dir=out.parent) as scratch:
        for index, (path, source) in enumerate(sorted(files.items())):
            if isinstance(source, str):
                text = Path(scratch) / f"file{index}"
                text.write_text(source)
                source = text
            run(["mcopy", "-i", out, source, f"::/{path}"], env=env)


def esp_files(uki: Path, loader: Path) -> dict[str, Path | str]:
    return {layout.LOADER: loader, layout.LOADER_CONF: LOADER_CONF,
            f"{layout.ENTRY_DIR}/{layout.FIRST_ENTRY}": uki}


def copy_into(source: Path, out: int, offset: int, limit: int) -> None:
    """Copy `source` into the open file `out` at `offset`, leaving zero MiBs as holes."""
    size = source.stat().st_size
    if size > limit:
        raise DiskError(f"{source.name}: {size} bytes do not fit its {limit}-byte partition")
    zero = bytes(_WRITE_CHUNK)
    with source.open("rb") as f:
        position = offset
        while chunk := f.read(_WRITE_CHUNK):
            if chunk != zero[:len(chunk)]:
                os.pwrite(out, chunk, position)
            position += len(chunk)


def write_disk(out: Path, partitions: list[Partition], contents: Mapping[str, Path],
               root_hash: str) -> None:
    """Write the disk image to `out`: the GPT, then each partition's content by label."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, disk_size(partitions))
        for partition in partitions:
            source = contents.get(partition.label)
            if source is not None:
                copy_into(source, fd, partition.start, partition.size)
    finally:
        os.close(fd)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", out],
        input=sfdisk_script(partitions, root_hash).encode())


def make_state(out: Path, *, size: int, root_hash: str, source_date_epoch: int) -> None:
    """An empty ext4 file system labelled for the state partition, made reproducibly."""
    ident = _derived_uuid(root_hash, "state-fs")
    with tempfile.TemporaryDirectory(prefix="state-", dir=out.parent) as empty:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        os.close(fd)
        run(["mkfs.ext4", "-q", "-F", "-L", layout.STATE_LABEL, "-U", ident, "-O",
             "^has_journal", "-T", "default", "-E",
             f"root_owner=0:0,hash_seed={ident},lazy_itable_init=0,nodiscard", "-d", empty,
             out], env={"E2FSPROGS_FAKE_TIME": str(source_date_epoch)})


def to_qcow2(raw: Path, out: Path) -> None:
    """The disk as qcow2, for hypervisors that take it (`qemu-img` from qemu-utils)."""
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out])
