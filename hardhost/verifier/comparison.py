"""Compare a host's evidence with its signed manifest: every fact the manifest implies is one
check, and each check that fails gives the findings of the verdict."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from hardhost.image import layout
from hardhost.image.manifest import HostManifest
from hardhost.verifier.evidence import OVERLAYS, Evidence
from hardhost.verifier.verdict import Finding, Severity


@dataclass(frozen=True)
class Check:
    """One fact checked, with its outcome: it holds when it gave no finding. A check of
    absence (no unexpected AppArmor profile, no failed unit) gives one finding per thing
    found, so the verdict names each."""

    component: str  # e.g. "sysctl", "mount.type", "apparmor.profile"
    key: str  # e.g. "kernel.kptr_restrict", "/sys/fs/bpf", "lsb_release"
    findings: tuple[Finding, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.component}.{self.key}"

    @property
    def name(self) -> str:
        """The readable name of the fact, e.g. `sysctl[kernel.kptr_restrict]`."""
        return f"{self.component}[{self.key}]"

    @property
    def holds(self) -> bool:
        return not self.findings


@dataclass(frozen=True)
class Examination:
    """Every check of one host's evidence, and what is recorded for people alongside."""

    boot_id: str  # "" when there was no well-formed evidence to check
    checks: tuple[Check, ...]
    records: tuple[Finding, ...] = ()  # severity INFO: never a check, never a failure

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The verdict's findings: those of the failed checks, in order, then the records."""
        return (*(f for check in self.checks for f in check.findings), *self.records)


def _equal(out: list[Check], component: str, key: str, severity: Severity, expected: str,
           observed: str) -> None:
    findings = () if expected == observed else (
        Finding(f"{component}.{key}", severity, expected, observed),)
    out.append(Check(component, key, findings))


def _boot(m: HostManifest, ev: Evidence, out: list[Check]) -> None:
    crit = Severity.CRITICAL
    _equal(out, "verity", "roothash", crit, m.root_hash, ev.verity.get("root hash", "absent"))
    _equal(out, "verity", "status", crit, "verified", ev.verity.get("status", "absent"))
    _equal(out, "kernel", "release", crit, m.kernel_release, ev.kernel_release)
    _equal(out, "kernel", "cmdline", crit, m.cmdline, ev.cmdline)
    root = ev.mount("/")
    observed = (f"{root.fstype} {'ro' if root.read_only else 'rw'} {root.source}"
                if root else "absent")
    _equal(out, "mount", "root", crit, f"{m.filesystem} ro {layout.ROOT_DEVICE}", observed)
    for name in OVERLAYS:
        mount = ev.mount(f"/{name}")
        # The upper layer the evidence lists must be the one this overlay writes to.
        observed = f"{mount.fstype} upperdir={mount.option('upperdir')}" if mount else "absent"
        _equal(out, "mount", name, crit, f"overlay upperdir={layout.overlay_upper(name)}",
               observed)


def _namespaces(ev: Evidence, out: list[Check]) -> None:
    """The session must see the host as init does: a private mount namespace could show
    the evidence script a mount table and files of its own."""
    for ns in ("mnt", "pid", "net"):
        _equal(out, "namespace", ns, Severity.CRITICAL, "init", ev.namespaces.get(ns, "absent"))
    _equal(out, "namespace", "proc", Severity.CRITICAL, "live",
           ev.namespaces.get("proc", "absent"))


def _mount_table(m: HostManifest, ev: Evidence, out: list[Check]) -> None:
    """Every mount must be one the image makes, once; anything else could shadow what the
    evidence reads, so it is drift whatever it holds."""
    crit = Severity.CRITICAL
    if not m.mounts:
        out.append(Check("mount", "table", (
            Finding("mount.table", Severity.HIGH, "the image's mount table",
                    "absent from the manifest: rebuild the image"),)))
        return
    seen: set[str] = set()
    for mount in ev.mounts:
        point = mount.mountpoint
        expected = m.mounts.get(point) or m.optional_mounts.get(point)
        if expected is not None and point not in seen:
            seen.add(point)
            _equal(out, "mount.type", point, crit, expected, mount.fstype)
        elif expected is None and any(fnmatch.fnmatchcase(point, area)
                                      for area in m.runtime_mount_areas):
            continue
        else:
            out.append(Check("mount.unexpected", point, (
                Finding(f"mount.unexpected.{point}", crit, "no mount here",
                        f"{mount.fstype} {mount.source}"
                        + (" (stacked on another)" if point in seen else "")),)))
    # A mount point of the image that is not mounted fails the same fact as a wrong type.
    for point in sorted(set(m.mounts) - seen):
        out.append(Check("mount.type", point, (
            Finding(f"mount.missing.{point}", crit, m.mounts[point], "absent"),)))


def _script(ev: Evidence, out: list[Check]) -> None:
    """A command of the evidence script that failed means a fact it could not read."""
    _equal(out, "evidence", "exit_status", Severity.HIGH, "0", str(ev.exit_status))
    _equal(out, "evidence", "stderr", Severity.HIGH, "", ev.stderr.strip())
    out.append(Check("systemd", "failed", tuple(
        Finding(f"systemd.failed.{unit}", Severity.HIGH, "active or inactive", "failed")
        for unit in ev.failed_units)))


def _controls(m: HostManifest, ev: Evidence, out: list[Check]) -> None:
    high = Severity.HIGH
    for key, value in sorted(m.sysctls.items()):
        _equal(out, "sysctl", key, high, value, ev.sysctls.get(key, "absent"))
    _equal(out, "apparmor", "enabled", high, "Y", "Y" if ev.apparmor_enabled else "N")
    for name, mode in sorted(m.apparmor_profiles.items()):
        _equal(out, "apparmor.profile", name, high, mode,
               ev.apparmor_profiles.get(name, "absent"))
    # The runtime's own profiles are loaded when the runtime starts: checked once present.
    for name, mode in sorted(m.apparmor_runtime_profiles.items()):
        if name in ev.apparmor_profiles:
            _equal(out, "apparmor.profile", name, high, mode, ev.apparmor_profiles[name])
    expected = set(m.apparmor_profiles) | set(m.apparmor_runtime_profiles)
    out.append(Check("apparmor", "unexpected", tuple(
        Finding(f"apparmor.unexpected.{name}", high, "absent", ev.apparmor_profiles[name])
        for name in sorted(set(ev.apparmor_profiles) - expected))))
    for key, value in sorted(m.sshd.items()):
        _equal(out, "sshd", key, high, value, ev.sshd.get(key, "absent"))
    for path, digest in sorted(m.seccomp_profiles.items()):
        _equal(out, "seccomp", path, high, digest, ev.seccomp_digests.get(path, "absent"))
    for path, digest in sorted(m.runtime_config.items()):
        _equal(out, "runtime", path, high, digest, ev.runtime_config_digest or "absent")
    if "subuid" in m.userns:
        _equal(out, "userns", "subuid", high, m.userns["subuid"], "\n".join(ev.subuid))
    if "subgid" in m.userns:
        _equal(out, "userns", "subgid", high, m.userns["subgid"], "\n".join(ev.subgid))


def _overlay(m: HostManifest, ev: Evidence, name: str) -> tuple[Finding, ...]:
    layer = ev.overlay_changes.get(name)
    if layer is None:
        return (Finding(f"overlay.{name}.absent", Severity.CRITICAL, "a tmpfs upper layer",
                        "absent"),)
    # The host already left out what the globs allow; checked again here, because the
    # host's find(1) is not this process's fnmatch.
    allowed = m.mutable_paths.get(name, ())
    modified = [path for path in layer.names
                if not any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed)]
    if layer.truncated:
        modified.append(f"... and {layer.count - len(layer.names)} more changed entries")
    if modified:
        return (Finding(f"overlay.{name}.modified", Severity.MEDIUM, "", "\n".join(modified)),)
    return ()


def examine(manifest: HostManifest, evidence: Evidence) -> Examination:
    """Every check the manifest implies, passing ones too, in the order of the verdict."""
    checks: list[Check] = []
    _script(evidence, checks)
    _namespaces(evidence, checks)
    _boot(manifest, evidence, checks)
    _mount_table(manifest, evidence, checks)
    _controls(manifest, evidence, checks)
    checks.extend(Check("overlay", name, _overlay(manifest, evidence, name))
                  for name in OVERLAYS)
    records = (Finding("host.listening", Severity.INFO, "", "\n".join(evidence.listening)),
               Finding("host.services", Severity.INFO, "", "\n".join(evidence.services)))
    return Examination(evidence.boot_id, tuple(checks), records)


def compare(manifest: HostManifest, evidence: Evidence) -> tuple[Finding, ...]:
    """One finding per fact that differs, then the records for people."""
    return examine(manifest, evidence).findings
