"""Stage 7 (boot = "uki"): a Unified Kernel Image on a FAT ESP, and the PCRs a TPM will hold
once it has booted, predicted for the signed manifest."""

from __future__ import annotations

from pathlib import Path

from hardhost.builder import pcr, uki
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Boot, Spec, spec_relative
from hardhost.core.errors import SpecError
from hardhost.core.log import StepTiming
from hardhost.image import layout
from hardhost.image.manifest import sha256_file

UKI_NAME = layout.UKI
ESP_NAME = layout.ESP
# systemd-pcrphase-sysinit.service extends PCR 11 with "sysinit" before sysinit.target, so
# before sshd can answer. The image masks the later "ready" phase unit (see harden), whose
# measurement would race with the first attestation.
MEASURED_PHASES = ("sysinit",)


def _file_digest(path: Path) -> str:
    # A missing stub or key is reported when the stage runs, not when keys are computed.
    return sha256_file(path) if path.is_file() else ""


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    if spec.image.boot is not Boot.UKI:
        return {"boot": str(spec.image.boot)}
    image = spec.image
    return {
        "version": 1, "boot": str(image.boot), "stub": _file_digest(uki.STUB),
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


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    spec = ctx.spec
    if spec.image.boot is not Boot.UKI:
        step.note = "skipped (boot = direct)"
        return
    out = ctx.staging / UKI_NAME
    uki.assemble_uki(uki.STUB, linux=ctx.staging / layout.KERNEL,
                     initrd=ctx.staging / layout.INITRD, cmdline=ctx.cmdline,
                     osrel=ctx.tree / "usr/lib/os-release", out=out)
    if spec.image.secure_boot_key:
        unsigned = ctx.workdir / "uki.unsigned.efi"
        out.rename(unsigned)
        uki.sign_uki(unsigned, out,
                     key=_secure_boot_file(spec, "image.secure_boot_key",
                                           spec.image.secure_boot_key),
                     cert=_secure_boot_file(spec, "image.secure_boot_cert",
                                            spec.image.secure_boot_cert))
    uki.make_esp(out, ctx.staging / ESP_NAME, source_date_epoch=ctx.source_date_epoch)
    predicted = pcr.predict_pcrs(out, phases=MEASURED_PHASES)
    ctx.pcrs = {index: value.value for index, value in predicted.items()}
    step.note = f"PCR 11 {ctx.pcrs[11][:16]}…" + (", signed" if spec.image.secure_boot_key
                                                 else "")
