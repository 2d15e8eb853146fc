"""Stage 7: a Unified Kernel Image, the systemd-boot that starts it, and the PCRs a TPM will
hold once they have booted, predicted for the signed manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

from hardhost.builder import disk, pcr, uki
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec, spec_relative
from hardhost.builder.stages.harden import measures_phases
from hardhost.core.errors import SpecError, ToolMissing
from hardhost.core.log import StepTiming
from hardhost.image import layout
from hardhost.image.manifest import sha256_file

UKI_NAME = layout.UKI
# systemd-pcrphase-sysinit.service extends PCR 11 with "sysinit" before sysinit.target, so
# before sshd can answer. The image masks the later "ready" phase unit (see harden), whose
# measurement would race with the first attestation.
MEASURED_PHASES = ("sysinit",)


def _file_digest(path: Path) -> str:
    # A missing stub or key is reported when the stage runs, not when keys are computed.
    return sha256_file(path) if path.is_file() else ""


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    image = spec.image
    return {
        "version": 2, "stub": _file_digest(uki.STUB), "loader": _file_digest(disk.SYSTEMD_BOOT),
        "phases": MEASURED_PHASES, "epoch": epoch,
        "cmdline": list(spec.kernel.cmdline), "console": spec.kernel.console,
        "secure_boot": [_file_digest(spec_relative(spec, p)) for p in
                        (image.secure_boot_key, image.secure_boot_cert) if p],
    }


def _secure_boot_file(spec: Spec, key: str, value: str) -> Path:
    path = spec_relative(spec, value)
    if not path.is_file():
        raise SpecError(spec.source, key, f"{path}: no such file")
    return path


def loader_path(ctx: BuildContext) -> Path:
    """Where the stage leaves the systemd-boot the disk stage puts on the ESP."""
    return ctx.workdir / "systemd-bootx64.efi"


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    spec = ctx.spec
    if not disk.SYSTEMD_BOOT.is_file():
        raise ToolMissing(str(disk.SYSTEMD_BOOT), disk.SYSTEMD_BOOT_PACKAGE)
    out = ctx.staging / UKI_NAME
    loader = loader_path(ctx)
    uki.assemble_uki(uki.STUB, linux=ctx.staging / layout.KERNEL,
                     initrd=ctx.staging / layout.INITRD, cmdline=ctx.cmdline,
                     osrel=ctx.tree / "usr/lib/os-release", out=out)
    if spec.image.secure_boot_key:
        key = _secure_boot_file(spec, "image.secure_boot_key", spec.image.secure_boot_key)
        cert = _secure_boot_file(spec, "image.secure_boot_cert", spec.image.secure_boot_cert)
        unsigned = ctx.workdir / "uki.unsigned.efi"
        out.rename(unsigned)
        uki.sign_uki(unsigned, out, key=key, cert=cert)
        uki.sign_uki(disk.SYSTEMD_BOOT, loader, key=key, cert=cert)
    else:
        shutil.copyfile(disk.SYSTEMD_BOOT, loader)
    phases = MEASURED_PHASES if measures_phases(ctx.tree) else ()
    predicted = pcr.predict_pcrs(out, loader=loader, phases=phases)
    ctx.pcrs = {index: value.value for index, value in predicted.items()}
    step.note = f"PCR 11 {ctx.pcrs[11][:16]}…" + (", signed" if spec.image.secure_boot_key
                                                 else "")
