"""Stage 3: security profiles into the image, each checked by its real consumer first.

The defaults (seccomp/default.json, apparmor/container-default) and the spec's generated
profiles: seccomp JSON under /usr/lib/hardhost/seccomp, AppArmor profiles in
/etc/apparmor.d (enforced at boot), SELinux CIL modules under /usr/share/hardhost/selinux.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec, spec_relative
from hardhost.core.errors import SpecError, UsageError
from hardhost.core.inputs import LARGE_FILE, read_text
from hardhost.core.log import StepTiming
from hardhost.profiles import apparmor, apparmor_validate, seccomp, selinux
from hardhost.profiles import default as defaults

SECCOMP_DIR = "/usr/lib/hardhost/seccomp"
SECCOMP_DEFAULT = f"{SECCOMP_DIR}/default.json"
APPARMOR_DIR = "/etc/apparmor.d"
SELINUX_DIR = "/usr/share/hardhost/selinux"


def _read(spec: Spec, key: str, name: str) -> tuple[Path, str]:
    path = spec_relative(spec, name)
    try:
        return path, read_text(path, what="profile", limit=LARGE_FILE)
    except UsageError as exc:  # missing, a FIFO or device, too large, not UTF-8
        raise SpecError(spec.source, key, str(exc)) from None


def _write(tree: Path, path: str, text: str) -> None:
    target = tree / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o644)


def installed_name(path: Path, suffix: str) -> str:
    name = path.name.removesuffix(suffix)
    return apparmor.check_name(name)


@dataclass(frozen=True)
class Planned:
    path: str  # absolute path inside the image
    text: str
    check: Callable[[str], object] | None = None  # the real consumer's validation


def planned_profiles(spec: Spec) -> list[Planned]:
    """Every profile the stage installs, read but not yet validated: the stage's inputs."""
    planned: list[Planned] = []
    if spec.seccomp.default_profile:
        profile = defaults.build(allow_keyring=True) if spec.seccomp.allow_keyring else None
        planned.append(Planned(SECCOMP_DEFAULT, seccomp.dumps(profile) if profile
                               else defaults.OUTPUT.read_text()))
    for name in spec.seccomp.profiles:
        path, text = _read(spec, "seccomp.profiles", name)
        planned.append(Planned(f"{SECCOMP_DIR}/{installed_name(path, '.seccomp.json')}.json",
                               text, partial(_check_seccomp, str(path))))
    if spec.apparmor.container_profile:
        planned.append(Planned(f"{APPARMOR_DIR}/{apparmor.DEFAULT_NAME}",
                               defaults.APPARMOR_OUTPUT.read_text()))
    for name in spec.apparmor.profiles:
        path, text = _read(spec, "apparmor.profiles", name)
        planned.append(Planned(f"{APPARMOR_DIR}/{installed_name(path, '.apparmor')}", text,
                               apparmor_validate.validate))
    for name in spec.selinux.modules:
        path, text = _read(spec, "selinux.modules", name)
        planned.append(Planned(f"{SELINUX_DIR}/{path.name}", text, selinux.validate))
    return planned


def _check_seccomp(source: str, text: str) -> None:
    profile = seccomp.loads(text, source)
    seccomp.check_names((n for rule in profile.get("syscalls", [])
                         for n in rule.get("names", [])), source)


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    return {"version": 1, "files": {p.path: hashlib.sha256(p.text.encode()).hexdigest()
                                    for p in planned_profiles(spec)}}


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    planned = planned_profiles(ctx.spec)
    for profile in planned:
        if profile.check is not None:
            profile.check(profile.text)
        _write(ctx.tree, profile.path, profile.text)
    step.note = f"{len(planned)} profiles"
