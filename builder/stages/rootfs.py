"""Stage 5: the tree becomes a read-only erofs or squashfs image with a dm-verity hash tree."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

from builder import layout
from builder.cmdline import kernel_cmdline
from builder.context import BuildContext
from builder.errors import BuildError
from builder.log import StepTiming
from builder.run import run
from builder.spec import Compression, Filesystem, Spec

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def derived_identity(spec: Spec, bootstrap_key: str) -> tuple[str, str]:
    """The verity salt and filesystem UUID: derived from the spec and the package set, so two
    builds of the same inputs are bit-for-bit identical, and different inputs never share them."""
    seed = f"{spec.digest()}:{bootstrap_key}".encode()
    salt = hashlib.sha256(b"hardhost-verity-salt:" + seed).hexdigest()
    ident = uuid.UUID(bytes=hashlib.sha256(b"hardhost-uuid:" + seed).digest()[:16], version=4)
    return salt, str(ident)


def _mkfs_erofs(ctx: BuildContext, image: Path) -> None:
    level = ",12" if ctx.spec.image.effective_compression is Compression.LZ4HC else ""
    run(["mkfs.erofs", f"-z{ctx.spec.image.effective_compression}{level}",
         f"-T{ctx.source_date_epoch}", f"-U{ctx.uuid}", "--quiet", image, ctx.tree])


def _mksquashfs(ctx: BuildContext, image: Path) -> None:
    epoch = str(ctx.source_date_epoch)
    run(["mksquashfs", ctx.tree, image, "-noappend", "-comp",
         str(ctx.spec.image.effective_compression), "-xattrs", "-all-time", epoch,
         "-mkfs-time", epoch, "-no-progress", "-quiet"])


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    image = ctx.staging / "root.img"
    hashes = ctx.staging / "root.verity"
    ctx.salt, ctx.uuid = derived_identity(ctx.spec, ctx.bootstrap_key)
    if ctx.spec.image.filesystem is Filesystem.EROFS:
        _mkfs_erofs(ctx, image)
    else:
        _mksquashfs(ctx, image)
    # dm-verity covers whole data blocks; squashfs ends wherever its data ends.
    size = image.stat().st_size
    remainder = size % layout.DATA_BLOCK_SIZE
    if remainder:
        with image.open("ab") as f:
            f.write(b"\0" * (layout.DATA_BLOCK_SIZE - remainder))
    root_hash_file = ctx.workdir / "root.hash"
    block = str(layout.DATA_BLOCK_SIZE)
    run(["veritysetup", "format", image, hashes, f"--salt={ctx.salt}", f"--uuid={ctx.uuid}",
         f"--data-block-size={block}", f"--hash-block-size={block}",
         f"--root-hash-file={root_hash_file}"])
    root_hash = root_hash_file.read_text().strip()
    if not _HEX64.match(root_hash):
        raise BuildError(f"veritysetup wrote an unexpected root hash: {root_hash[:80]!r}")
    ctx.root_hash = root_hash
    ctx.cmdline = kernel_cmdline(ctx.spec, root_hash)
    (ctx.staging / "cmdline").write_text(ctx.cmdline + "\n")
    step.note = f"{image.stat().st_size / 2**20:.0f} MiB {ctx.spec.image.filesystem}"
