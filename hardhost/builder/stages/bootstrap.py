"""Stage 1: mmdebstrap makes the root filesystem, cached as a tarball keyed by its inputs."""

from __future__ import annotations

import logging
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path

from hardhost.builder.cache import BOOTSTRAP_VERSION, stage_key
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec
from hardhost.builder.stages import prune
from hardhost.core.errors import BuildError, CommandFailed
from hardhost.core.log import StepTiming
from hardhost.core.run import run

log = logging.getLogger(__name__)

VARIANT = "minbase"
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"

_FETCH_FAILED = re.compile(r"E: Failed to fetch (\S+) +(.+)")
_MISSING_PACKAGE = re.compile(r"Unable to locate package (\S+)|Package '?(\S+?)'? has no "
                              r"installation candidate")


# What every image needs beyond its spec's packages, for updates: systemd-bless-boot (Debian
# puts it in systemd-boot, not systemd), which marks an updated boot good or bad, and sfdisk
# (fdisk), with which an update gives the idle slot the partition UUIDs of its new image.
IMAGE_PACKAGES = ("fdisk", "systemd-boot")


def packages(spec: Spec) -> list[str]:
    """The packages mmdebstrap installs: the spec's, and `IMAGE_PACKAGES`."""
    return sorted(set(spec.packages.include) | set(IMAGE_PACKAGES))


# A cached tree no build used for this long is deleted when another is made.
UNUSED_DAYS = 30
# Suites that never get a -security or -updates suite of their own.
UNRELEASED_SUITES = frozenset({"sid", "unstable", "experimental", "rc-buggy"})
COMPONENTS = "main"


def sources(spec: Spec) -> list[str]:
    """The apt sources mmdebstrap installs from, as sources.list lines: the release, its
    stable updates and its security updates, as the spec asks."""
    dist = spec.distribution
    lines = [f"deb {dist.mirror} {dist.suite} {COMPONENTS}"]
    if dist.suite not in UNRELEASED_SUITES:
        if dist.updates:
            lines.append(f"deb {dist.mirror} {dist.suite}-updates {COMPONENTS}")
        if dist.security_mirror:
            lines.append(f"deb {dist.security_mirror} {dist.suite}-security {COMPONENTS}")
    return lines


def bootstrap_inputs(spec: Spec) -> dict[str, object]:
    """Everything mmdebstrap's result depends on that hardhost controls."""
    dist = spec.distribution
    return {
        "version": BOOTSTRAP_VERSION,
        "suite": dist.suite,
        "sources": sources(spec),
        "architecture": dist.architecture,
        "variant": VARIANT,
        "packages": packages(spec),
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
    if tarball.exists() and not ctx.refresh:
        step.note = "cached"
        made = tarball.stat().st_mtime
        os.utime(tarball, (time.time(), made))  # used now; its mtime stays when it was made
        # Its packages are those of the day it was made: say how old, and how to refresh.
        days = int((time.time() - made) // 86400)
        log.info("    using cached root filesystem %s, packages resolved %s "
                 "(--refresh resolves them again)", tarball.name[:16],
                 "today" if days < 1 else f"{days} day{'s' if days > 1 else ''} ago")
    else:
        cache.mkdir(parents=True, exist_ok=True)
        # mmdebstrap picks its output format from the extension, so the partial file keeps .tar.
        partial = cache / f".{key}.{os.getpid()}.partial.tar"
        try:
            _mmdebstrap(spec, partial, ctx.source_date_epoch)
            partial.rename(tarball)  # a refresh replaces the old tree only once it succeeded
        finally:
            partial.unlink(missing_ok=True)
        evict_unused(cache)
    skipped = extract(tarball, ctx.tree, spec)
    if skipped:
        step.note += f"{', ' if step.note else ''}{skipped} pruned files not extracted"
    if not ctx.source_date_epoch:
        # Without $SOURCE_DATE_EPOCH, the time dpkg last wrote its database stands for the
        # package set: the same cached bootstrap always gives the same timestamps.
        ctx.source_date_epoch = int((ctx.tree / "var/lib/dpkg/status").stat().st_mtime)


def evict_unused(cache: Path, *, now: float | None = None) -> list[str]:
    """Delete the cached trees no build has used for `UNUSED_DAYS` (each is most of a GiB, and
    a changed package list or hardhost version leaves the old one unused for good), and
    partial ones a killed build left a day ago. Returns the names deleted."""
    now = time.time() if now is None else now
    deleted = []
    for entry in cache.iterdir():
        if not entry.name.endswith(".tar") or not entry.is_file():
            continue
        partial = entry.name.startswith(".")
        # Partial trees are still being written while their mtime moves.
        last = entry.stat().st_mtime if partial else entry.stat().st_atime
        if now - last > (86400 if partial else UNUSED_DAYS * 86400):
            entry.unlink(missing_ok=True)
            deleted.append(entry.name)
    if deleted:
        log.info("    removed %d cached root filesystem(s) unused for %d days", len(deleted),
                 UNUSED_DAYS)
    return sorted(deleted)


def extract(tarball: Path, tree: Path, spec: Spec) -> int:
    """Unpack the cached tarball into a new `tree`, without the files the prune stage would
    delete anyway; returns how many were left out."""
    skipped = prune.unextracted(spec, _member_names(tarball))
    tree.mkdir()
    with tempfile.NamedTemporaryFile("w", dir=tree.parent, prefix=".unextracted-") as names:
        # Newline-separated: tar 1.34 ignores the last name of a --null exclusion list.
        names.write("".join(f"{name}\n" for name in skipped))
        names.flush()
        run(["tar", "--extract", "--preserve-permissions", "--xattrs", "--xattrs-include=*",
             "--numeric-owner", "--no-wildcards", "--anchored", "--exclude-from", names.name,
             "--file", tarball, "--directory", tree])
    return len(skipped)


def _member_names(tarball: Path) -> list[str]:
    try:
        # Uncompressed, as mmdebstrap writes a .tar: tarfile's guessing would list an error
        # per compression it tried, on as many lines.
        with tarfile.open(tarball, "r:") as archive:
            return archive.getnames()
    except (OSError, tarfile.TarError) as exc:
        reason = " ".join(str(exc).split())
        raise BuildError(f"{tarball}: cannot read the cached root filesystem ({reason}); "
                         "pass --refresh to make it again") from None


def _mmdebstrap(spec: Spec, target: Path, epoch: int) -> None:
    dist = spec.distribution
    argv = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        f"--architectures={dist.architecture}",
        f"--include={','.join(packages(spec))}",
        "--aptopt=Acquire::Retries \"3\"",
        "--dpkgopt=force-unsafe-io",
        # Lay out merged /usr directly; otherwise bookworm installs the usrmerge converter
        # and, with it, all of perl (30 MB the image never runs).
        f"--hook-dir={MERGED_USR_HOOKS}",
        dist.suite,
        str(target),
        *sources(spec),
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
        unfetched = _FETCH_FAILED.search(exc.stderr)
        if unfetched:
            raise BuildError(f"mmdebstrap could not fetch {unfetched.group(1)}: "
                             f"{unfetched.group(2).strip()}") from None
        raise
