"""`hardhost build`: run the stages in order into a temporary folder, then rename it into place.

A failed or interrupted build removes its temporary folders, so OUTDIR never holds a
half-written image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.cache import cache_root
from builder.cmdline import kernel_cmdline
from builder.context import BuildContext
from builder.errors import BuildError, UsageError
from builder.log import StepTiming, complete_step
from builder.run import which
from builder.spec import Filesystem, Spec
from builder.stages import bootstrap, harden, initramfs, prune, rootfs

log = logging.getLogger(__name__)

ARTIFACTS = ("vmlinuz", "initrd.img", "root.img", "root.verity")


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[BuildContext, StepTiming], None]


STAGES = (
    Stage("bootstrap", bootstrap.run_stage),
    Stage("harden", harden.run_stage),
    Stage("initramfs", initramfs.run_stage),
    Stage("prune", prune.run_stage),
    Stage("rootfs", rootfs.run_stage),
)


def required_tools(spec: Spec) -> tuple[str, ...]:
    image_tool = "mkfs.erofs" if spec.image.filesystem is Filesystem.EROFS else "mksquashfs"
    return ("mmdebstrap", "tar", "unshare", "chroot", "systemctl", image_tool, "veritysetup")


def _source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not raw:
        return int(time.time())
    if not raw.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH: {raw!r} is not a number of seconds")
    return int(raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_build_json(ctx: BuildContext) -> None:
    spec = ctx.spec
    record = {
        "name": spec.name,
        "spec_digest": spec.digest(),
        "kernel_release": ctx.kernel_release,
        "cmdline": ctx.cmdline,
        "root_hash": ctx.root_hash,
        "verity_salt": ctx.salt,
        "uuid": ctx.uuid,
        "filesystem": str(spec.image.filesystem),
        "compression": str(spec.image.effective_compression),
        "source_date_epoch": ctx.source_date_epoch,
        "artifacts": {
            name: {"sha256": sha256_file(ctx.staging / name),
                   "size": (ctx.staging / name).stat().st_size}
            for name in ARTIFACTS
        },
        "stages": [{"name": t.name, "seconds": round(t.seconds, 2), "note": t.note}
                   for t in ctx.timings],
    }
    (ctx.staging / "build.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def build(spec: Spec, outdir: Path, *, force: bool = False) -> Path:
    """Build `spec` into `outdir/NAME` and return that path."""
    if os.geteuid() != 0:
        raise BuildError("hardhost build must run as root (mmdebstrap, chroot and device "
                         "nodes need it): run it with sudo")
    if not spec.access.authorized_keys:
        raise UsageError(f"{spec.source}: access.authorized_keys: no key would be able to log "
                         "in; list one, or pass --authorized-key FILE")
    for tool in required_tools(spec):
        which(tool)
    final = outdir / spec.name
    if final.exists() and not force:
        raise UsageError(f"{final}: already exists; pass --force to replace it")
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{spec.name}.work-", dir=outdir))
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=outdir))
    ctx = BuildContext(spec=spec, workdir=workdir, staging=staging, cache_dir=cache_root(),
                       source_date_epoch=_source_date_epoch())
    try:
        with complete_step(f"Building {spec.name}", f"Built {spec.name}"):
            for number, stage in enumerate(STAGES, 1):
                with complete_step(f"[{number}/{len(STAGES)}] {stage.name}") as step:
                    stage.run(ctx, step)
                step.name = stage.name
                ctx.timings.append(step)
            ctx.cmdline = kernel_cmdline(spec, ctx.root_hash)
            (staging / "cmdline").write_text(ctx.cmdline + "\n")
            _write_build_json(ctx)
        staging.chmod(0o755)
        for artifact in staging.iterdir():
            artifact.chmod(0o644)  # veritysetup makes its hash file 0600; nothing here is secret
        _replace(staging, final)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _replace(staging: Path, final: Path) -> None:
    """Swap the finished output into place; an old output is removed only after the swap."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
