"""Kernel module selection: a declared set, closed over `modules.dep` and `modules.softdep`.

A pattern without a slash matches module names (`virtio*`, `dm_verity`; `-` and `_` are the
same, as modprobe treats them). A pattern ending in `/` keeps every module under that folder
of `kernel/` (`net/netfilter/`). Soft dependencies may name an alias (`crypto-crc32c`); those
resolve through `modules.alias`, as modprobe would.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.errors import BuildError


def module_name(path: str) -> str:
    """`kernel/drivers/md/dm-verity.ko` -> `dm_verity`."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """The module graph of one kernel, read from depmod's text indexes."""

    paths: dict[str, str]  # module name -> path relative to the release folder
    depends: dict[str, tuple[str, ...]]  # module name -> names it needs loaded first
    softdeps: dict[str, tuple[str, ...]]  # module name -> names or aliases it asks for
    aliases: dict[str, tuple[str, ...]]  # exact alias -> module names

    @classmethod
    def read(cls, release_dir: Path) -> ModuleIndex:
        try:
            dep_text = (release_dir / "modules.dep").read_text()
        except OSError as exc:
            raise BuildError(f"{release_dir}: cannot read modules.dep ({exc.strerror}); "
                             "is the kernel package installed?") from None
        return cls.parse(dep_text, _read_optional(release_dir / "modules.softdep"),
                         _read_optional(release_dir / "modules.alias"))

    @classmethod
    def parse(cls, dep_text: str, softdep_text: str = "", alias_text: str = "") -> ModuleIndex:
        paths: dict[str, str] = {}
        depends: dict[str, tuple[str, ...]] = {}
        for number, line in enumerate(dep_text.splitlines(), 1):
            if not line.strip():
                continue
            head, sep, tail = line.partition(":")
            if not sep or not head.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz")):
                raise BuildError(f"modules.dep:{number}: cannot parse {line[:60]!r}")
            name = module_name(head)
            paths[name] = head
            depends[name] = tuple(module_name(dep) for dep in tail.split())
        softdeps: dict[str, tuple[str, ...]] = {}
        for line in softdep_text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "softdep":
                wanted = [w for w in words[2:] if w not in ("pre:", "post:")]
                key = words[1].replace("-", "_")
                softdeps[key] = softdeps.get(key, ()) + tuple(wanted)
        aliases: dict[str, tuple[str, ...]] = {}
        for line in alias_text.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                aliases[words[1]] = (*aliases.get(words[1], ()), words[2].replace("-", "_"))
        return cls(paths, depends, softdeps, aliases)

    def select(self, patterns: Iterable[str]) -> set[str]:
        """Names matched by `patterns`; a pattern that matches nothing is an error, so a
        typo cannot silently drop a driver the host needs."""
        chosen: set[str] = set()
        for pattern in patterns:
            if pattern.endswith("/"):
                prefix = f"kernel/{pattern}"
                matched = {n for n, p in self.paths.items() if p.startswith(prefix)}
            else:
                wanted = pattern.replace("-", "_")
                matched = {n for n in self.paths if fnmatch.fnmatchcase(n, wanted)}
            if not matched:
                raise BuildError(f"kernel.modules: {pattern!r} matches no module of this "
                                 "kernel; fix the name or remove it")
            chosen |= matched
        return chosen

    def closure(self, names: Iterable[str]) -> set[str]:
        """`names` with everything they depend on, hard or soft, transitively."""
        keep: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name in keep or name not in self.paths:
                continue
            keep.add(name)
            pending.extend(self.depends.get(name, ()))
            for wanted in self.softdeps.get(name, ()):
                normal = wanted.replace("-", "_")
                pending.extend((normal,) if normal in self.paths
                               else self.aliases.get(wanted, ()))
        return keep


def _read_optional(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
