"""Stage 1: mmdebstrap makes the root filesystem, cached as a tarball keyed by its inputs."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from builder.cache import BOOTSTRAP_VERSION, stage_key
from builder.context import BuildContext
from builder.errors import BuildError, CommandFailed
from builder.log import StepTiming
from builder.run import run
from builder.spec import Spec

log = logging.getLogger(__name__)

VARIANT = "minbase"
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"

_MISSING_PACKAGE = re.compile(r"Unable to locate package (\S+)|Package '?(\S+?)'? has no "
                              r"installation candidate")


def bootstrap_inputs(spec: Spec) -> dict[str, object]:
    """Everything mmdebstrap's result depends on that hardhost controls."""
    dist = spec.distribution
    return {
        "version": BOOTSTRAP_VERSION,
        "suite": dist.suite,
        "mirror": dist.mirror,
        "architecture": dist.architecture,
        "variant": VARIANT,
        "packages": sorted(spec.packages.include),
    }


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    # The epoch is not an input: later stages clamp every file time to it.
    return bootstrap_inputs(spec)


def bootstrap_key(spec: Spec) -> str:
    return stage_key("bootstrap", bootstrap_inputs(spec))


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    spec = ctx.spec
    key = bootstrap_key(spec)
    cache = ctx.cache_dir / "bootstrap"
    tarball = cache / f"{key}.tar"
    if tarball.exists():
        step.note = "cached"
        log.info("    using cached root filesystem %s", tarball.name[:16])
    else:
        cache.mkdir(parents=True, exist_ok=True)
        # mmdebstrap picks its output format from the extension, so the partial file keeps .tar.
        partial = cache / f".{key}.{os.getpid()}.partial.tar"
        try:
            _mmdebstrap(spec, partial, ctx.source_date_epoch)
            partial.rename(tarball)
        finally:
            partial.unlink(missing_ok=True)
    ctx.tree.mkdir()
    run(["tar", "--extract", "--preserve-permissions", "--xattrs", "--xattrs-include=*",
         "--numeric-owner", "--file", tarball, "--directory", ctx.tree])
    if not ctx.source_date_epoch:
        # Without $SOURCE_DATE_EPOCH, the time dpkg last wrote its database stands for the
        # package set: the same cached bootstrap always gives the same timestamps.
        ctx.source_date_epoch = int((ctx.tree / "var/lib/dpkg/status").stat().st_mtime)


def _mmdebstrap(spec: Spec, target: Path, epoch: int) -> None:
    dist = spec.distribution
    argv = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        f"--architectures={dist.architecture}",
        f"--include={','.join(spec.packages.include)}",
        "--aptopt=Acquire::Retries \"3\"",
        "--dpkgopt=force-unsafe-io",
        # Lay out merged /usr directly; otherwise bookworm installs the usrmerge converter
        # and, with it, all of perl (30 MB the image never runs).
        f"--hook-dir={MERGED_USR_HOOKS}",
        dist.suite,
        str(target),
        dist.mirror,
    ]
    env = {"SOURCE_DATE_EPOCH": str(epoch)} if epoch else None
    try:
        run(argv, env=env, stream=True)
    except CommandFailed as exc:
        missing = _MISSING_PACKAGE.search(exc.stderr)
        if missing:
            name = missing.group(1) or missing.group(2)
            raise BuildError(
                f"package {name!r} does not exist in {dist.suite} at {dist.mirror} "
                f"(mmdebstrap: {missing.group(0)})") from None
        raise
