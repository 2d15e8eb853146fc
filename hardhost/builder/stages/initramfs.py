"""Stage 4: an initramfs that opens the root through dm-verity, and the kernel beside it.

mkinitramfs reads only the kernel, its modules and the initramfs-tools configuration, so its
output is cached under a key of those: a sysctl or profile change reuses it.
"""

from __future__ import annotations

import shutil

from hardhost.builder.cache import StageCache
from hardhost.builder.chroot import run_in_tree
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec
from hardhost.builder.stages.harden import (
    INITRAMFS_CONFIG,
    INITRAMFS_MODULES,
    file_digests,
    render_layer,
)
from hardhost.core.errors import BuildError
from hardhost.core.log import StepTiming
from hardhost.image import layout

CACHE_ENTRIES = 4


def kernel_release(ctx: BuildContext) -> str:
    kernels = sorted((ctx.tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        found = ", ".join(k.name for k in kernels) or "none"
        raise BuildError(f"expected one kernel in /boot, found {found}: "
                         "add linux-image-amd64 to packages.include")
    return kernels[0].name.removeprefix("vmlinuz-")


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    config = [f for f in render_layer(spec) if f.path.startswith(f"{INITRAMFS_CONFIG}/")]
    return {"version": 1, "config": file_digests(config), "modules": INITRAMFS_MODULES,
            "epoch": epoch}


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    release = kernel_release(ctx)
    ctx.kernel_release = release
    shutil.copyfile(ctx.tree / f"boot/vmlinuz-{release}", ctx.staging / layout.KERNEL)
    cache = StageCache(ctx.cache_dir, "initramfs", keep=CACHE_ENTRIES)
    key = ctx.keys["initramfs"]
    entry = cache.lookup(key) if ctx.reuse else None
    if entry is not None:
        shutil.copyfile(entry / layout.INITRD, ctx.staging / layout.INITRD)
        step.note = f"kernel {release}, cached"
        return
    initrd = f"/boot/initrd.img-{release}"
    run_in_tree(ctx.tree, ["mkinitramfs", "-o", initrd, release],
                env={"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)})
    shutil.copyfile(ctx.tree / initrd.lstrip("/"), ctx.staging / layout.INITRD)
    cache.store(key, {layout.INITRD: ctx.staging / layout.INITRD})
    step.note = f"kernel {release}"
