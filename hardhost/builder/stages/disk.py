"""Stage 8: the disk image, `disk.img` (or `disk.qcow2`): the ESP with systemd-boot and the
UKI, slot A with the root and its hash tree, an empty slot B, and an empty state partition."""

from __future__ import annotations

from hardhost.builder import disk
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec
from hardhost.builder.stages.uki import loader_path
from hardhost.core.errors import SpecError
from hardhost.core.log import StepTiming
from hardhost.image import layout


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    return {"version": 1, "disk": vars(spec.disk), "epoch": epoch}


def _check_fits(ctx: BuildContext, partitions: list[disk.Partition]) -> None:
    """Refuse a root, hash tree or UKI that its partition cannot hold, naming the setting."""
    sizes = {p.label: p.size for p in partitions}
    root = (ctx.staging / layout.ROOT_IMAGE).stat().st_size
    verity = (ctx.staging / layout.ROOT_VERITY).stat().st_size
    if root > sizes[layout.root_label("a")] or verity > sizes[layout.verity_label("a")]:
        raise SpecError(ctx.spec.source, "disk.slot_size_mib",
                        f"the root image is {root / disk.MIB:.0f} MiB, more than the "
                        f"{ctx.spec.disk.slot_size_mib} MiB slot; raise it")
    # Two UKIs live on the ESP during an update: the running one and the new one.
    boot = 2 * (ctx.staging / layout.UKI).stat().st_size + loader_path(ctx).stat().st_size
    if boot + 4 * disk.MIB > sizes[layout.ESP_LABEL]:
        raise SpecError(ctx.spec.source, "disk.esp_size_mib",
                        f"two UKIs and systemd-boot need {boot / disk.MIB:.0f} MiB, more than "
                        f"the {ctx.spec.disk.esp_size_mib} MiB ESP; raise it")


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    partitions = disk.partition_table(ctx.spec.disk, ctx.root_hash)
    _check_fits(ctx, partitions)
    sizes = {p.label: p.size for p in partitions}
    esp = ctx.workdir / "esp.fat"
    state = ctx.workdir / "state.ext4"
    disk.make_fat(disk.esp_files(ctx.staging / layout.UKI, loader_path(ctx)), esp,
                  size=sizes[layout.ESP_LABEL], source_date_epoch=ctx.source_date_epoch)
    disk.make_state(state, size=sizes[layout.STATE_LABEL], root_hash=ctx.root_hash,
                    source_date_epoch=ctx.source_date_epoch)
    raw = ctx.staging / layout.DISK if not ctx.qcow2 else ctx.workdir / layout.DISK
    disk.write_disk(raw, partitions, {
        layout.ESP_LABEL: esp, layout.root_label("a"): ctx.staging / layout.ROOT_IMAGE,
        layout.verity_label("a"): ctx.staging / layout.ROOT_VERITY,
        layout.STATE_LABEL: state}, ctx.root_hash)
    if ctx.qcow2:
        disk.to_qcow2(raw, ctx.staging / layout.DISK_QCOW2)
    step.note = (f"{disk.disk_size(partitions) / 2**30:.1f} GiB "
                 f"{'qcow2' if ctx.qcow2 else 'raw'}, slots of {ctx.spec.disk.slot_size_mib} MiB")
