"""Stage 4: drop what an immutable host never reads: docs, man pages, locales, caches,
the package manager and the kernel files that now live outside the root."""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.context import BuildContext
from builder.log import StepTiming
from builder.spec import Spec

_ALWAYS = ("boot/*", "var/cache/apt/*", "var/lib/apt/lists/*", "var/cache/debconf/*-old",
           "var/log/*", "tmp/*", "var/tmp/*")
_DOCS = ("usr/share/info/*", "usr/share/lintian/*", "usr/share/doc-base/*")
_MAN = ("usr/share/man/*",)
_LOCALES = ("usr/share/locale/*", "usr/share/i18n/*")
# dpkg-query stays, so the installed package list can still be read on the host.
_PACKAGE_MANAGER = ("usr/bin/apt", "usr/bin/apt-*", "usr/lib/apt/*", "usr/bin/dpkg",
                    "usr/bin/dpkg-deb", "usr/bin/dpkg-split", "usr/bin/dpkg-divert",
                    "usr/bin/dpkg-statoverride", "usr/bin/dpkg-trigger",
                    "usr/bin/dpkg-maintscript-helper", "etc/apt/*")


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
    return patterns


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


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    tree = ctx.tree
    freed = 0
    for pattern in prune_patterns(ctx.spec):
        for path in sorted(tree.glob(pattern), reverse=True):
            freed += _remove(path)
    if ctx.spec.prune.docs:
        freed += _prune_docs(tree)
    step.note = f"{freed / 2**20:.0f} MiB freed"
