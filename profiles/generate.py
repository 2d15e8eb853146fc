"""One recording, three profiles: seccomp (OCI JSON), AppArmor and SELinux (CIL).

`generate_all` writes them side by side; `check_all` proves offline that every recorded event
is allowed, naming the first event each profile would deny.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UsageError
from profiles import apparmor, seccomp, selinux
from profiles.trace import Trace


@dataclass(frozen=True)
class Written:
    seccomp: Path
    apparmor: Path | None = None
    selinux: Path | None = None


def seccomp_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.seccomp.json"


def generate_all(trace: Trace, name: str, directory: Path) -> Written:
    apparmor.check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    target = seccomp_path(directory, name)
    target.write_text(seccomp.dumps(seccomp.generate(trace, name)))
    module = selinux_name(name)
    cil = selinux.generate(trace, module)
    selinux.validate(cil)  # compiled for real by secilc against the base policy
    cil_path = directory / f"{module}.cil"
    cil_path.write_text(cil)
    profile = apparmor.generate(trace, name)
    apparmor.validate(profile)  # apparmor_parser -Q -K: parsed for real, not loaded
    apparmor_path = directory / f"{name}.apparmor"
    apparmor_path.write_text(profile)
    return Written(target, apparmor=apparmor_path, selinux=cil_path)


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
        refused = apparmor.first_denied(apparmor.load(path), trace)
        if refused is not None:
            denials.append(f"{path.name}: AppArmor would deny {refused}")
    return denials
