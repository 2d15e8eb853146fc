"""The build's scratch folder: a real tmpfs (mounted, so those tests need root: e2e), or a plain
folder; gone afterwards in every case, and cleaned up after a build that was killed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hardhost.builder.workspace import (
    IN_MEMORY_MIN_AVAILABLE,
    Workspace,
    in_memory,
    memory_available,
    scratch,
)


def _fstype(path: Path) -> str | None:
    """The filesystem mounted exactly at `path`, if one is."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        if fields.split()[4] == str(path):
            return tail.split()[0]
    return None


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.e2e  # mounts a tmpfs: root
def test_memory_is_a_private_tmpfs_gone_afterwards(tmp_path: Path) -> None:
    with scratch(tmp_path, "img", Workspace.MEMORY) as folder:
        assert folder.parent == tmp_path
        assert _fstype(folder) == "tmpfs"
        assert folder.stat().st_mode & 0o777 == 0o700
        (folder / "tree").mkdir()
        (folder / "tree/file").write_text("x")
    assert _fstype(folder) is None
    assert list(tmp_path.iterdir()) == []


def test_disk_is_a_plain_folder_gone_afterwards(tmp_path: Path) -> None:
    with scratch(tmp_path, "img", Workspace.DISK) as folder:
        assert _fstype(folder) is None
        (folder / "file").write_text("x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e  # mounts a tmpfs: root
def test_a_failed_build_leaves_nothing_mounted_or_written(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), scratch(tmp_path, "img", Workspace.MEMORY) as folder:
        (folder / "half-written").write_text("x")
        raise RuntimeError("a stage failed")
    assert _fstype(folder) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e  # mounts a tmpfs: root
def test_a_killed_builds_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    dead = tmp_path / f".img.work-{_dead_pid()}-abc"
    dead.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", dead], check=True)
    (dead / "left").write_text("x")
    running = tmp_path / f".img.work-{os.getpid()}-def"  # a build still going
    running.mkdir()
    other = tmp_path / f".other.work-{_dead_pid()}-ghi"  # another image's: not this build's
    other.mkdir()
    staging = tmp_path / f".img.partial-{_dead_pid()}-jkl"  # its half-written output
    (staging / "root.img").parent.mkdir()
    (staging / "root.img").write_text("half")
    try:
        with scratch(tmp_path, "img", Workspace.DISK) as folder:
            assert not dead.exists() and not staging.exists()
            assert _fstype(dead) is None
            assert running.is_dir() and other.is_dir()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])
        assert not folder.exists()
    finally:
        if _fstype(dead):
            subprocess.run(["umount", dead], check=False)


def test_auto_chooses_memory_only_when_enough_is_available() -> None:
    assert in_memory(Workspace.AUTO, IN_MEMORY_MIN_AVAILABLE)
    assert not in_memory(Workspace.AUTO, IN_MEMORY_MIN_AVAILABLE - 1)
    assert in_memory(Workspace.MEMORY, 0)
    assert not in_memory(Workspace.DISK, 2**40)
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(next(line for line in meminfo.splitlines()
                         if line.startswith("MemTotal:")).split()[1])
    assert 0 < memory_available() <= total_kib * 1024
