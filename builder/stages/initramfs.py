"""Stage 3: an initramfs that opens the root through dm-verity, and the kernel beside it."""

from __future__ import annotations

import shutil

from builder.chroot import run_in_tree
from builder.context import BuildContext
from builder.errors import BuildError
from builder.log import StepTiming


def kernel_release(ctx: BuildContext) -> str:
    kernels = sorted((ctx.tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        found = ", ".join(k.name for k in kernels) or "none"
        raise BuildError(f"expected one kernel in /boot, found {found}: "
                         "add linux-image-amd64 to packages.include")
    return kernels[0].name.removeprefix("vmlinuz-")


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    release = kernel_release(ctx)
    ctx.kernel_release = release
    initrd = f"/boot/initrd.img-{release}"
    run_in_tree(ctx.tree, ["mkinitramfs", "-o", initrd, release],
                env={"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)})
    shutil.copyfile(ctx.tree / f"boot/vmlinuz-{release}", ctx.staging / "vmlinuz")
    shutil.copyfile(ctx.tree / initrd.lstrip("/"), ctx.staging / "initrd.img")
    step.note = f"kernel {release}"
