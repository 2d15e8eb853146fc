"""Stage 5: drop what an immutable host never reads: docs, man pages, locales, caches, the
package manager, kernel modules outside the declared set, unused firmware, and the kernel
files that now live outside the root."""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Iterable
from pathlib import Path

from hardhost.builder.chroot import run_in_tree
from hardhost.builder.context import BuildContext
from hardhost.builder.kmods import ModuleIndex
from hardhost.builder.spec import Spec
from hardhost.builder.stages.harden import INITRAMFS_MODULES
from hardhost.core.errors import SpecError
from hardhost.core.log import StepTiming
from hardhost.core.run import output

# hwdb.d holds the sources of hwdb.bin, which a read-only root can never recompile.
_ALWAYS = ("boot/*", "var/cache/apt/*", "var/lib/apt/lists/*", "var/cache/debconf/*-old",
           "var/log/*", "tmp/*", "var/tmp/*", "usr/lib/udev/hwdb.d/*")
_DOCS = ("usr/share/info/*", "usr/share/lintian/*", "usr/share/doc-base/*")
_MAN = ("usr/share/man/*",)
_LOCALES = ("usr/share/locale/*", "usr/share/i18n/*")
# Vendor and model names for `udevadm info`, keyboard, mouse and sensor quirks: 13 MB that
# a virtual or headless container host never looks up.
_HWDB = ("usr/lib/udev/hwdb.bin",)
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


def _reading_matter(spec: Spec) -> tuple[str, ...]:
    """The docs, man pages and locales the spec drops: files no build stage reads."""
    return ((_DOCS if spec.prune.docs else ()) + (_MAN if spec.prune.man else ())
            + (_LOCALES if spec.prune.locales else ()))


def prune_patterns(spec: Spec) -> tuple[str, ...]:
    return (_ALWAYS + _reading_matter(spec)
            + (_PACKAGE_MANAGER if spec.prune.package_manager else ())
            + (_HWDB if spec.prune.hwdb else ()) + spec.prune.paths)


def unextracted(spec: Spec, names: Iterable[str]) -> list[str]:
    """Members of the bootstrap tarball this stage deletes whatever the stages before it
    do: docs, man pages and locales, as the spec asks. On this path, creating files costs
    far more than writing their bytes, and these are a quarter of the tree's files, so a
    rebuild does not extract them only to delete them here.

    Names that tar would read back differently from an exclusion list (a backslash, a
    newline, spaces at either end) are left for `run_stage` to delete."""
    split = [pattern.split("/") for pattern in _reading_matter(spec)]
    skipped = []
    for name in names:
        if "\\" in name or "\n" in name or name != name.strip():
            continue
        parts = name.removeprefix("./").split("/")
        # Path.glob matches one name per pattern segment; whatever lies below a match is
        # deleted with it.
        doomed = any(len(parts) >= len(pattern) and all(
            fnmatch.fnmatchcase(part, glob)
            for part, glob in zip(parts[:len(pattern)], pattern, strict=True))
            for pattern in split)
        if spec.prune.docs and parts[:3] == ["usr", "share", "doc"] and len(parts) >= 5:
            doomed = doomed or parts[4] != "copyright"
        if doomed:
            skipped.append(name)
    return skipped


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


def remove_unwanted(tree: Path, spec: Spec) -> int:
    """Delete what `prune_patterns` and the docs rule name; returns the bytes freed."""
    freed = 0
    for pattern in prune_patterns(spec):
        for path in sorted(tree.glob(pattern), reverse=True):
            freed += _remove(path)
    if spec.prune.docs:
        freed += _prune_docs(tree)
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
    freed += remove_unwanted(tree, ctx.spec)
    step.note = f"{freed / 2**20:.0f} MiB freed"
    if kept is not None:
        step.note += f", {len(kept)} kernel modules kept"
