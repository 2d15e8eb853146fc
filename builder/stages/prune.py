"""Stage 5: drop what an immutable host never reads: docs, man pages, locales, caches, the
package manager, kernel modules outside the declared set, unused firmware, and the kernel
files that now live outside the root."""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.chroot import run_in_tree
from builder.context import BuildContext
from builder.errors import SpecError
from builder.kmods import ModuleIndex
from builder.log import StepTiming
from builder.run import output
from builder.spec import Spec
from builder.stages.harden import INITRAMFS_MODULES

# hwdb.d holds the sources of hwdb.bin, which a read-only root can never recompile.
_ALWAYS = ("boot/*", "var/cache/apt/*", "var/lib/apt/lists/*", "var/cache/debconf/*-old",
           "var/log/*", "tmp/*", "var/tmp/*", "usr/lib/udev/hwdb.d/*")
_DOCS = ("usr/share/info/*", "usr/share/lintian/*", "usr/share/doc-base/*")
_MAN = ("usr/share/man/*",)
_LOCALES = ("usr/share/locale/*", "usr/share/i18n/*")
# dpkg-query stays, so the installed package list can still be read on the host.
_PACKAGE_MANAGER = ("usr/bin/apt", "usr/bin/apt-*", "usr/lib/apt/*", "usr/bin/dpkg",
                    "usr/bin/dpkg-deb", "usr/bin/dpkg-split", "usr/bin/dpkg-divert",
                    "usr/bin/dpkg-statoverride", "usr/bin/dpkg-trigger",
                    "usr/bin/dpkg-maintscript-helper", "etc/apt/*",
                    "usr/lib/*/libapt-pkg.so*", "usr/lib/*/libapt-private.so*")


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    return {"version": 1, "patterns": prune_patterns(spec),
            "modules": spec.kernel.modules if spec.prune.kernel_modules else None,
            "initramfs_modules": INITRAMFS_MODULES, "firmware": spec.prune.firmware,
            "docs": spec.prune.docs}


def prune_patterns(spec: Spec) -> tuple[str, ...]:
    patterns: tuple[str, ...] = _ALWAYS
    if spec.prune.docs:
        patterns += _DOCS
    if spec.prune.man:
        patterns += _MAN
    if spec.prune.locales:
        patterns += _LOCALES
    if spec.prune.package_manager:
        patterns += _PACKAGE_MANAGER
    return patterns + spec.prune.paths


def _remove(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        size = path.lstat().st_size
        path.unlink()
        return size
    size = sum(p.lstat().st_size for p in path.rglob("*"))
    shutil.rmtree(path)
    return size


def _prune_docs(tree: Path) -> int:
    """Keep each package's copyright file: the licence record an SBOM reads."""
    freed = 0
    for path in (tree / "usr/share/doc").glob("*/*"):
        if path.name != "copyright":
            freed += _remove(path)
    return freed


def _prune_modules(ctx: BuildContext) -> tuple[int, set[Path]]:
    """Remove modules outside the declared set and its dependencies, then let the image's
    own depmod rewrite its indexes. Returns the bytes freed and the kept module files."""
    release_dir = ctx.tree / "usr/lib/modules" / ctx.kernel_release
    index = ModuleIndex.read(release_dir)
    keep = index.closure(index.select(ctx.spec.kernel.modules) | set(INITRAMFS_MODULES))
    kept_paths = {release_dir / index.paths[name] for name in keep}
    freed = 0
    for path in sorted((release_dir / "kernel").rglob("*.ko*")):
        if path not in kept_paths:
            freed += _remove(path)
    for directory in sorted((release_dir / "kernel").rglob("*"), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    run_in_tree(ctx.tree, ["depmod", ctx.kernel_release])
    return freed, kept_paths


def _prune_firmware(tree: Path, modules: set[Path]) -> int:
    """Remove firmware that no kept module names in its `firmware=` modinfo field."""
    firmware_dir = tree / "usr/lib/firmware"
    files = sorted(p for p in firmware_dir.rglob("*") if not p.is_dir()) \
        if firmware_dir.is_dir() else []
    if not files:
        return 0
    wanted: set[str] = set()
    if modules:
        listing = output(["modinfo", "--field=firmware", *sorted(modules)])
        wanted = {line.strip() for line in listing.splitlines() if line.strip()}
    freed = 0
    for path in files:
        name = str(path.relative_to(firmware_dir))
        # Debian may ship firmware compressed; the kernel asks for the plain name.
        if name not in wanted and name.removesuffix(".xz").removesuffix(".zst") not in wanted:
            freed += _remove(path)
    return freed


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    tree = ctx.tree
    freed = 0
    kept: set[Path] | None = None
    if ctx.spec.prune.kernel_modules:
        modules_freed, kept = _prune_modules(ctx)
        freed += modules_freed
    if ctx.spec.prune.firmware:
        if kept is None:
            release_dir = tree / "usr/lib/modules" / ctx.kernel_release
            kept = set(release_dir.rglob("*.ko*"))
        freed += _prune_firmware(tree, kept)
    for pattern in ctx.spec.prune.paths:
        if not any(tree.glob(pattern)):
            raise SpecError(ctx.spec.source, "prune.paths", f"{pattern!r} matches nothing in "
                            "the image; fix the path or remove it")
    for pattern in prune_patterns(ctx.spec):
        for path in sorted(tree.glob(pattern), reverse=True):
            freed += _remove(path)
    if ctx.spec.prune.docs:
        freed += _prune_docs(tree)
    step.note = f"{freed / 2**20:.0f} MiB freed"
    if kept is not None:
        step.note += f", {len(kept)} kernel modules kept"
