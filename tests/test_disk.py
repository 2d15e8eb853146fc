"""The disk image's layout, made with the real tools (sfdisk, mkfs.vfat, mtools, mkfs.ext4,
veritysetup) on small sparse files, and read back with sfdisk and the kernel's own parser's
view of it (sfdisk --json)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from hardhost.builder import disk
from hardhost.builder.spec import Disk
from hardhost.image import layout
from tests.support.tools import need

ROOT_HASH = hashlib.sha256(b"a root").hexdigest()


def _table(path: Path) -> dict[str, dict[str, object]]:
    data = json.loads(subprocess.run(["sfdisk", "--json", str(path)], capture_output=True,
                                     text=True, check=True).stdout)
    return {p["name"]: p for p in data["partitiontable"]["partitions"]}


def test_slot_uuids_are_the_two_halves_of_the_root_hash() -> None:
    root, verity = layout.slot_uuids(ROOT_HASH)
    assert root.replace("-", "") == ROOT_HASH[:32] and verity.replace("-", "") == ROOT_HASH[32:]
    with pytest.raises(ValueError):
        layout.slot_uuids("ab" * 16)


@pytest.mark.parametrize("mib", [64, 200, 1024])
def test_verity_partition_holds_the_hash_tree_of_a_full_slot(tmp_path: Path, mib: int) -> None:
    need("veritysetup", "cryptsetup-bin")
    data, hashes = tmp_path / "data", tmp_path / "hashes"
    with data.open("wb") as f:
        f.truncate(mib * disk.MIB)
    subprocess.run(["veritysetup", "format", str(data), str(hashes), "--salt=" + "00" * 32],
                   check=True, capture_output=True)
    assert hashes.stat().st_size <= disk.verity_size(mib * disk.MIB)
    assert disk.verity_size(mib * disk.MIB) - hashes.stat().st_size < 2 * disk.MIB


def test_the_disk_has_dps_types_root_hash_uuids_and_the_contents(tmp_path: Path) -> None:
    need("sfdisk", "fdisk")
    need("mkfs.ext4", "e2fsprogs")
    spec = Disk(slot_size_mib=64, esp_size_mib=64, state_size_mib=16)
    partitions = disk.partition_table(spec, ROOT_HASH)
    root = tmp_path / "root.img"
    root.write_bytes(b"root image " * 1000)
    state = tmp_path / "state.ext4"
    disk.make_state(state, size=16 * disk.MIB, root_hash=ROOT_HASH, source_date_epoch=1)
    out = tmp_path / "disk.img"
    disk.write_disk(out, partitions, {layout.root_label("a"): root,
                                      layout.STATE_LABEL: state}, ROOT_HASH)
    table = _table(out)
    assert list(table) == list(layout.PARTITION_ORDER)
    types = {name: str(p["type"]).lower() for name, p in table.items()}
    assert types[layout.ESP_LABEL] == layout.ESP_TYPE
    assert types["hardhost-root-a"] == types["hardhost-root-b"] == layout.ROOT_TYPE
    assert types["hardhost-verity-b"] == layout.ROOT_VERITY_TYPE
    assert types[layout.STATE_LABEL] == layout.LINUX_DATA_TYPE
    root_uuid, verity_uuid = layout.slot_uuids(ROOT_HASH)
    assert str(table["hardhost-root-a"]["uuid"]).lower() == root_uuid
    assert str(table["hardhost-verity-a"]["uuid"]).lower() == verity_uuid
    uuids = [str(p["uuid"]).lower() for p in table.values()]
    assert len(set(uuids)) == len(uuids)  # slot B has UUIDs of its own
    start = int(table["hardhost-root-a"]["start"]) * 512  # type: ignore[call-overload]
    with out.open("rb") as f:
        f.seek(start)
        assert f.read(root.stat().st_size) == root.read_bytes()
    # Slot B is empty and sparse: the file stores little more than what was written.
    assert out.stat().st_blocks * 512 < 40 * disk.MIB < out.stat().st_size
    # The same inputs give the same bytes.
    again = tmp_path / "again.img"
    state2 = tmp_path / "state2.ext4"
    disk.make_state(state2, size=16 * disk.MIB, root_hash=ROOT_HASH, source_date_epoch=1)
    disk.write_disk(again, partitions, {layout.root_label("a"): root,
                                        layout.STATE_LABEL: state2}, ROOT_HASH)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(
        out.read_bytes()).digest()


def test_a_root_larger_than_its_partition_is_refused(tmp_path: Path) -> None:
    partitions = disk.partition_table(Disk(slot_size_mib=64, esp_size_mib=64,
                                           state_size_mib=16), ROOT_HASH)
    big = tmp_path / "root.img"
    with big.open("wb") as f:
        f.truncate(65 * disk.MIB)
    with pytest.raises(disk.DiskError, match="do not fit its"):
        disk.write_disk(tmp_path / "disk.img", partitions, {layout.root_label("a"): big},
                        ROOT_HASH)


def test_the_esp_holds_systemd_boot_the_loader_config_and_the_first_entry(
        tmp_path: Path) -> None:
    need("mcopy", "mtools")
    loader, uki = tmp_path / "loader.efi", tmp_path / "uki.efi"
    loader.write_bytes(b"systemd-boot")
    uki.write_bytes(b"a UKI")
    fat = tmp_path / "esp.fat"
    disk.make_fat(disk.esp_files(uki, loader), fat, size=64 * disk.MIB, source_date_epoch=0)
    listing = subprocess.run(["mdir", "-/", "-b", "-i", str(fat), "::/"], capture_output=True,
                             text=True, check=True,
                             env={"MTOOLSRC": "/dev/null", "PATH": "/usr/bin:/bin"}).stdout
    assert {"::/EFI/BOOT/BOOTX64.EFI", "::/EFI/Linux/hardhost-1.efi",
            "::/loader/loader.conf"} <= {line.strip() for line in listing.splitlines()}
    conf = subprocess.run(["mtype", "-i", str(fat), "::/loader/loader.conf"],
                          capture_output=True, text=True, check=True,
                          env={"MTOOLSRC": "/dev/null", "PATH": "/usr/bin:/bin"}).stdout
    # No menu and no command line editor at boot.
    assert "timeout 0" in conf and "editor no" in conf
