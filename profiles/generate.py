"""One recording, three profiles: seccomp (OCI JSON), AppArmor and SELinux (CIL).

`generate_all` writes them side by side; `check_all` proves offline that every recorded event
is allowed, naming the first event each profile would deny.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UsageError
from profiles import seccomp, selinux
from profiles.trace import Trace

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Written:
    seccomp: Path
    apparmor: Path | None = None
    selinux: Path | None = None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"profile name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(no spaces or slashes)")
    return name


def seccomp_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.seccomp.json"


def generate_all(trace: Trace, name: str, directory: Path) -> Written:
    check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    target = seccomp_path(directory, name)
    target.write_text(seccomp.dumps(seccomp.generate(trace, name)))
    module = selinux_name(name)
    cil = selinux.generate(trace, module)
    selinux.validate(cil)  # compiled for real by secilc against the base policy
    cil_path = directory / f"{module}.cil"
    cil_path.write_text(cil)
    return Written(target, selinux=cil_path)


def selinux_name(name: str) -> str:
    """SELinux identifiers take letters, digits and '_' only."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def check_all(directory: Path, trace: Trace) -> list[str]:
    """One line per profile in `directory` that would deny a recorded event."""
    profiles = sorted(directory.glob("*.seccomp.json"))
    if not profiles:
        raise UsageError(f"{directory}: no profiles here (expected NAME.seccomp.json)")
    denials = []
    for path in profiles:
        denied = seccomp.first_denied(seccomp.load(path), trace)
        if denied is not None:
            denials.append(f"{path.name}: seccomp would deny {denied}")
    return denials
