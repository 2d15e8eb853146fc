"""One recording, three profiles: seccomp (OCI JSON), AppArmor and SELinux (CIL).

`generate_all` writes them side by side; `check_all` proves offline that every recorded event
is allowed, naming the first event each profile would deny.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.errors import UsageError
from hardhost.core.outputs import check_output_dir
from hardhost.profiles import (
    apparmor,
    apparmor_check,
    apparmor_read,
    apparmor_validate,
    seccomp,
    selinux,
)
from hardhost.profiles.trace import Trace


@dataclass(frozen=True)
class Written:
    seccomp: Path
    apparmor: Path | None = None
    selinux: Path | None = None


def seccomp_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.seccomp.json"


def generate_all(trace: Trace, name: str, directory: Path) -> Written:
    """Write the three profiles of `trace` into `directory`, all or none.

    Every profile is generated and validated (secilc, apparmor_parser) before anything is
    written; the files are then written to a scratch folder beside them and renamed into
    place. A failure at any step leaves `directory` as it was: a half-written set would pass
    for a profile that was never checked.
    """
    apparmor.check_name(name)
    module = selinux_name(name)
    targets = {seccomp_path(directory, name).name: seccomp.dumps(seccomp.generate(trace, name)),
               f"{module}.cil": selinux.generate(trace, module),
               f"{name}.apparmor": apparmor.generate(trace, name)}
    check_output_dir(directory, what="profiles")
    for target in targets:
        _check_target(directory / target)
    selinux.validate(targets[f"{module}.cil"])  # compiled for real by secilc
    # apparmor_parser -Q -K: parsed, not loaded
    apparmor_validate.validate(targets[f"{name}.apparmor"])
    if directory.is_dir():
        _install_files(directory, targets)
    else:
        _install_folder(directory, targets)
    return Written(directory / seccomp_path(directory, name).name,
                   apparmor=directory / f"{name}.apparmor", selinux=directory / f"{module}.cil")


def _check_target(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"{path}: exists and is not a regular file; move it away or choose "
                         "another --out-dir or --name")


def _write_all(folder: Path, targets: dict[str, str]) -> None:
    for filename, text in targets.items():
        with open(folder / filename, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(folder / filename, 0o644)


def _install_folder(directory: Path, targets: dict[str, str]) -> None:
    """A new folder: fill a scratch folder beside it, then rename it into place whole."""
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        _write_all(scratch, targets)
        os.chmod(scratch, 0o755)
        os.rename(scratch, directory)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise UsageError(f"{directory}: cannot write the profiles: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _install_files(directory: Path, targets: dict[str, str]) -> None:
    """An existing folder: write in a scratch folder inside it, then rename each file over
    its target, keeping the old ones aside until all are in place and restoring them if a
    rename fails."""
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".hardhost-profiles-"))
    old = scratch / "old"
    placed: list[str] = []
    kept: list[str] = []
    try:
        _write_all(scratch, targets)
        old.mkdir()
        for filename in targets:
            if (directory / filename).exists():
                os.rename(directory / filename, old / filename)
                kept.append(filename)
            os.rename(scratch / filename, directory / filename)
            placed.append(filename)
    except BaseException as exc:
        for filename in placed:
            with contextlib.suppress(OSError):
                os.unlink(directory / filename)
        for filename in kept:
            with contextlib.suppress(OSError):
                os.rename(old / filename, directory / filename)
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UsageError(f"{directory}: cannot write the profiles: {exc.strerror}") from None
        raise
    shutil.rmtree(scratch, ignore_errors=True)


def selinux_name(name: str) -> str:
    """SELinux identifiers take letters, digits and '_' only."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def check_all(directory: Path, trace: Trace) -> list[str]:
    """One line per profile in `directory` that would deny a recorded event (seccomp with its
    argument conditions, AppArmor with its deny rules winning)."""
    profiles = sorted(directory.glob("*.seccomp.json"))
    if not profiles:
        raise UsageError(f"{directory}: no profiles here (expected NAME.seccomp.json)")
    denials = []
    for path in profiles:
        denied = seccomp.first_denied(seccomp.load(path), trace)
        if denied is not None:
            denials.append(f"{path.name}: seccomp would deny {denied}")
    for path in sorted(directory.glob("*.apparmor")):
        refused = apparmor_check.first_denied(apparmor_read.load(path), trace)
        if refused is not None:
            denials.append(f"{path.name}: AppArmor would deny {refused}")
    return denials
