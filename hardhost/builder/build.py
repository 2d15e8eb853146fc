"""`hardhost build`: run the stages in order into a temporary folder, then rename it into place.

A failed or interrupted build removes its temporary folders, so OUTDIR never holds a
half-written image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.advisories.gate import Gate
from hardhost.builder.cache import cache_root, stage_key
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Filesystem, Spec
from hardhost.builder.stages import (
    bootstrap,
    disk,
    harden,
    initramfs,
    manifest,
    prune,
    rootfs,
    security,
    uki,
)
from hardhost.builder.workspace import Workspace, private_folder, scratch
from hardhost.core.errors import BuildError, UsageError
from hardhost.core.log import StepTiming, complete_step
from hardhost.core.run import which
from hardhost.image import layout

log = logging.getLogger(__name__)

# What a VM boots from.
ARTIFACTS = (layout.KERNEL, layout.INITRD, layout.ROOT_IMAGE, layout.ROOT_VERITY)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[BuildContext, StepTiming], None]
    # What the stage reads from the spec, its data files and the epoch...
    inputs: Callable[[Spec, int], Mapping[str, object]]
    # ...and the stages whose output it reads: their keys are part of its key.
    after: tuple[str, ...] = ()


STAGES = (
    Stage("bootstrap", bootstrap.run_stage, bootstrap.inputs),
    Stage("harden", harden.run_stage, harden.inputs, after=("bootstrap",)),
    Stage("security", security.run_stage, security.inputs, after=("bootstrap",)),
    Stage("initramfs", initramfs.run_stage, initramfs.inputs, after=("bootstrap",)),
    Stage("prune", prune.run_stage, prune.inputs, after=("bootstrap",)),
    Stage("rootfs", rootfs.run_stage, rootfs.inputs, after=("harden", "security", "prune")),
    # The UKI embeds the kernel, the initrd and the command line with the root hash.
    Stage("uki", uki.run_stage, uki.inputs, after=("initramfs", "rootfs")),
    Stage("disk", disk.run_stage, disk.inputs, after=("uki",)),
    Stage("manifest", manifest.run_stage, manifest.inputs,
          after=("bootstrap", "harden", "security", "initramfs", "prune", "rootfs", "uki",
                 "disk")),
)


def stage_keys(spec: Spec, epoch: int) -> dict[str, str]:
    """Each stage's cache key: its own inputs and the keys of the stages it reads from, so
    a change reaches exactly the stages downstream of it."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        keys[stage.name] = stage_key(stage.name, {
            "inputs": stage.inputs(spec, epoch),
            "after": {name: keys[name] for name in stage.after},
        })
    return keys


def required_tools(spec: Spec) -> tuple[str, ...]:
    image_tool = "mkfs.erofs" if spec.image.filesystem is Filesystem.EROFS else "mksquashfs"
    return ("mmdebstrap", "tar", "unshare", "chroot", "systemctl", image_tool, "veritysetup",
            "apparmor_parser", "objcopy", "mkfs.vfat", "mmd", "mcopy", "mkfs.ext4", "sfdisk")


def _source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH, or 0 to let the bootstrap stage derive it from the package set."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not raw:
        return 0
    if not raw.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH: {raw!r} is not a number of seconds")
    return int(raw)


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
            name: {"sha256": sha256, "size": (ctx.staging / name).stat().st_size}
            for name, sha256 in ctx.subjects.items()
        },
        "stages": [{"name": t.name, "seconds": round(t.seconds, 2), "note": t.note}
                   for t in ctx.timings],
    }
    (ctx.staging / layout.BUILD_RECORD).write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n")


def require_root() -> None:
    if os.geteuid() != 0:
        raise BuildError("hardhost build must run as root (mmdebstrap, chroot and device "
                         "nodes need it): run it with sudo")


def build(spec: Spec, outdir: Path, *, key: Ed25519PrivateKey, force: bool = False,
          reuse: bool = True, workspace: Workspace = Workspace.AUTO,
          qcow2: bool = False, gate: Gate | None = None, refresh: bool = False) -> Path:
    """Build `spec` into `outdir/NAME`, sign its manifest with `key`, and return the path.

    With `reuse` off, every stage after bootstrap runs even when its output is cached; with
    `refresh`, the bootstrap runs too, resolving the packages again, and replaces its cache.
    `workspace` says where the image tree is assembled. With `qcow2`, the disk image is
    `disk.qcow2` instead of the raw `disk.img`. With a `gate`, an image whose packages fail
    its policy is a `BuildError` before the manifest is signed, and nothing is written.
    """
    require_root()
    if not spec.access.authorized_keys:
        raise UsageError(f"{spec.source}: access.authorized_keys: no key would be able to log "
                         "in; list one, or pass --authorized-key FILE")
    for tool in required_tools(spec) + (("qemu-img",) if qcow2 else ()):
        which(tool)
    # The container policy's keys are read now: a missing or wrong one is a spec error
    # before the bootstrap's minute and a half, not after it.
    harden.container_policy_files(spec)
    final = outdir / spec.name
    if final.exists() and not force:
        raise UsageError(f"{final}: already exists; pass --force to replace it")
    outdir.mkdir(parents=True, exist_ok=True)
    with scratch(outdir, spec.name, workspace) as workdir:
        return _build_in(spec, final, workdir, key=key, reuse=reuse, qcow2=qcow2, gate=gate,
                         refresh=refresh)


def _build_in(spec: Spec, final: Path, workdir: Path, *, key: Ed25519PrivateKey,
              reuse: bool, qcow2: bool, gate: Gate | None, refresh: bool) -> Path:
    staging = private_folder(final.parent, spec.name, "partial")
    ctx = BuildContext(spec=spec, workdir=workdir, staging=staging, cache_dir=cache_root(),
                       signing_key=key, source_date_epoch=_source_date_epoch(), reuse=reuse,
                       qcow2=qcow2, gate=gate, refresh=refresh)
    try:
        with complete_step(f"Building {spec.name}", f"Built {spec.name}"):
            for number, stage in enumerate(STAGES, 1):
                with complete_step(f"[{number}/{len(STAGES)}] {stage.name}") as step:
                    stage.run(ctx, step)
                if stage.name == "bootstrap":  # the epoch may come from the package set
                    ctx.keys = stage_keys(spec, ctx.source_date_epoch)
                step.name = stage.name
                ctx.timings.append(step)
            _write_build_json(ctx)
        staging.chmod(0o755)
        for artifact in staging.iterdir():
            artifact.chmod(0o644)  # veritysetup makes its hash file 0600; nothing here is secret
        _replace(staging, final)
    finally:
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


def check_reproducible(spec: Spec, outdir: Path, *, key: Ed25519PrivateKey,
                       force: bool = False, workspace: Workspace = Workspace.AUTO,
                       qcow2: bool = False, gate: Gate | None = None, refresh: bool = False
                       ) -> tuple[Path, str | None]:
    """Build `spec` twice and compare the signed artifacts (with `refresh`, the first build
    bootstraps afresh and the second uses its tree).

    Returns the first build's path and the name of the first artifact that differs, or None.
    """
    # Neither build takes a stage's output from the cache: both must make every byte.
    final = build(spec, outdir, key=key, force=force, reuse=False, workspace=workspace,
                  qcow2=qcow2, gate=gate, refresh=refresh)
    again_dir = Path(tempfile.mkdtemp(prefix=f".{spec.name}.again-", dir=outdir))
    try:
        with complete_step("Building again to compare"):
            again = build(spec, again_dir, key=key, reuse=False, workspace=workspace,
                          qcow2=qcow2)
        first = json.loads((final / layout.BUILD_RECORD).read_text())["artifacts"]
        second = json.loads((again / layout.BUILD_RECORD).read_text())["artifacts"]
        for name in manifest.subjects(qcow2=qcow2):
            if first[name]["sha256"] != second[name]["sha256"]:
                return final, name
        return final, None
    finally:
        shutil.rmtree(again_dir, ignore_errors=True)
