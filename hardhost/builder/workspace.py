"""Where a build assembles its image tree: in memory (a tmpfs of its own) or on disk.

Unpacking the cached tree creates about 12,000 files, and on a disk each creation waits on
the filesystem's journal: that alone was most of a rebuild. In a tmpfs it takes about a
second. The tmpfs is mounted on the build's scratch folder beside the output and unmounted
when the build ends; the scratch folder of a build that was killed is cleaned up by the next
build of the same image into the same output folder.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hardhost.core.errors import BuildError, CommandFailed
from hardhost.core.run import process_cmdline, run

log = logging.getLogger(__name__)

# The tree peaks near 1 GiB (the unpacked tarball before pruning); the rest is headroom
# for the compressor and everything else the machine runs.
IN_MEMORY_MIN_AVAILABLE = 4 * 2**30


class Workspace(enum.StrEnum):
    AUTO = "auto"  # memory when at least IN_MEMORY_MIN_AVAILABLE is available, else disk
    MEMORY = "memory"
    DISK = "disk"


def memory_available() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, _, value = line.partition(":")
            if key == "MemAvailable":
                return int(value.split()[0]) * 1024
    return 0


def in_memory(choice: Workspace, available: int) -> bool:
    if choice is Workspace.AUTO:
        return available >= IN_MEMORY_MIN_AVAILABLE
    return choice is Workspace.MEMORY


@contextmanager
def scratch(outdir: Path, name: str, choice: Workspace) -> Iterator[Path]:
    """A fresh scratch folder in `outdir`, on a private tmpfs when `choice` allows; removed,
    and unmounted, when the block ends, however it ends."""
    remove_stale(outdir, name)
    folder = private_folder(outdir, name, "work")
    mounted = False
    try:
        if in_memory(choice, memory_available()):
            mounted = _mount(folder, required=choice is Workspace.MEMORY)
        yield folder
    finally:
        if mounted:
            _unmount(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _mount(folder: Path, *, required: bool) -> bool:
    try:
        # mode=0700: the tree holds the image's private files before they are packed.
        run(["mount", "-t", "tmpfs", "-o", "mode=0700,nosuid,nodev", "hardhost-tree", folder])
    except CommandFailed as exc:
        if required:
            raise BuildError(f"{folder}: cannot mount a tmpfs for --workspace memory: "
                             f"{exc}") from None
        log.warning("building on disk: cannot mount a tmpfs on %s: %s", folder, exc)
        return False
    log.debug("building in memory: a tmpfs on %s", folder)
    return True


def private_folder(outdir: Path, name: str, kind: str) -> Path:
    """A new folder `.NAME.KIND-PID-RANDOM` in `outdir`: the pid lets a later build tell
    whether the build that made it is still running."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{os.getpid()}-", dir=outdir))


def remove_stale(outdir: Path, name: str) -> None:
    """Remove the scratch and staging folders of builds of `name` into `outdir` whose
    process is gone."""
    for kind in ("work", "partial"):
        for folder in outdir.glob(f".{name}.{kind}-*-*"):
            pid = folder.name.removeprefix(f".{name}.{kind}-").split("-", 1)[0]
            if pid.isdigit() and not process_cmdline(int(pid)):
                _remove_left(folder)


def _remove_left(folder: Path) -> None:
    log.info("removing %s, left by a build that did not finish", folder)
    if os.path.ismount(folder):
        _unmount(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _unmount(folder: Path) -> None:
    # Lazy: a process still inside the tree (a killed chroot's child) cannot keep the
    # folder from being removed; the memory is freed when the last one lets go.
    if run(["umount", "--lazy", folder], check=False).returncode != 0:
        log.warning("%s: cannot unmount the build's tmpfs; unmount it by hand", folder)
