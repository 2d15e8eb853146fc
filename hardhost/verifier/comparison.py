"""Compare a host's evidence with its signed manifest: one finding per fact that differs."""

from __future__ import annotations

import fnmatch

from hardhost.image import layout
from hardhost.image.manifest import HostManifest
from hardhost.verifier.evidence import OVERLAYS, Evidence
from hardhost.verifier.verdict import Finding, Severity


def _check(findings: list[Finding], fid: str, severity: Severity, expected: str,
           observed: str) -> None:
    if expected != observed:
        findings.append(Finding(fid, severity, expected, observed))


def _boot(m: HostManifest, ev: Evidence, out: list[Finding]) -> None:
    crit = Severity.CRITICAL
    _check(out, "verity.roothash", crit, m.root_hash, ev.verity.get("root hash", "absent"))
    _check(out, "verity.status", crit, "verified", ev.verity.get("status", "absent"))
    _check(out, "kernel.release", crit, m.kernel_release, ev.kernel_release)
    _check(out, "kernel.cmdline", crit, m.cmdline, ev.cmdline)
    root = ev.mount("/")
    observed = (f"{root.fstype} {'ro' if root.read_only else 'rw'} {root.source}"
                if root else "absent")
    _check(out, "mount.root", crit, f"{m.filesystem} ro {layout.ROOT_DEVICE}", observed)
    for name in OVERLAYS:
        mount = ev.mount(f"/{name}")
        # The upper layer the evidence lists must be the one this overlay writes to.
        observed = f"{mount.fstype} upperdir={mount.option('upperdir')}" if mount else "absent"
        _check(out, f"mount.{name}", crit, f"overlay upperdir={layout.overlay_upper(name)}",
               observed)


def _namespaces(ev: Evidence, out: list[Finding]) -> None:
    """The session must see the host as init does: a private mount namespace could show
    the evidence script a mount table and files of its own."""
    for ns in ("mnt", "pid", "net"):
        _check(out, f"namespace.{ns}", Severity.CRITICAL, "init",
               ev.namespaces.get(ns, "absent"))
    _check(out, "namespace.proc", Severity.CRITICAL, "live", ev.namespaces.get("proc", "absent"))


def _mount_table(m: HostManifest, ev: Evidence, out: list[Finding]) -> None:
    """Every mount must be one the image makes, once; anything else could shadow what the
    evidence reads, so it is drift whatever it holds."""
    crit = Severity.CRITICAL
    if not m.mounts:
        out.append(Finding("mount.table", Severity.HIGH, "the image's mount table",
                           "absent from the manifest: rebuild the image"))
        return
    seen: set[str] = set()
    for mount in ev.mounts:
        point = mount.mountpoint
        expected = m.mounts.get(point) or m.optional_mounts.get(point)
        if expected is not None and point not in seen:
            seen.add(point)
            _check(out, f"mount.type.{point}", crit, expected, mount.fstype)
        elif expected is None and any(fnmatch.fnmatchcase(point, area)
                                      for area in m.runtime_mount_areas):
            continue
        else:
            out.append(Finding(f"mount.unexpected.{point}", crit, "no mount here",
                               f"{mount.fstype} {mount.source}"
                               + (" (stacked on another)" if point in seen else "")))
    for point in sorted(set(m.mounts) - seen):
        out.append(Finding(f"mount.missing.{point}", crit, m.mounts[point], "absent"))


def _script(ev: Evidence, out: list[Finding]) -> None:
    """A command of the evidence script that failed means a fact it could not read."""
    _check(out, "evidence.exit_status", Severity.HIGH, "0", str(ev.exit_status))
    _check(out, "evidence.stderr", Severity.HIGH, "", ev.stderr.strip())
    for unit in ev.failed_units:
        out.append(Finding(f"systemd.failed.{unit}", Severity.HIGH, "active or inactive",
                           "failed"))


def _controls(m: HostManifest, ev: Evidence, out: list[Finding]) -> None:
    high = Severity.HIGH
    for key, value in sorted(m.sysctls.items()):
        _check(out, f"sysctl.{key}", high, value, ev.sysctls.get(key, "absent"))
    _check(out, "apparmor.enabled", high, "Y", "Y" if ev.apparmor_enabled else "N")
    for name, mode in sorted(m.apparmor_profiles.items()):
        _check(out, f"apparmor.profile.{name}", high, mode,
               ev.apparmor_profiles.get(name, "absent"))
    for name, mode in sorted(m.apparmor_runtime_profiles.items()):
        if name in ev.apparmor_profiles:
            _check(out, f"apparmor.profile.{name}", high, mode, ev.apparmor_profiles[name])
    expected = set(m.apparmor_profiles) | set(m.apparmor_runtime_profiles)
    for name in sorted(set(ev.apparmor_profiles) - expected):
        out.append(Finding(f"apparmor.unexpected.{name}", high, "absent",
                           ev.apparmor_profiles[name]))
    for key, value in sorted(m.sshd.items()):
        _check(out, f"sshd.{key}", high, value, ev.sshd.get(key, "absent"))
    for path, digest in sorted(m.seccomp_profiles.items()):
        _check(out, f"seccomp.{path}", high, digest, ev.seccomp_digests.get(path, "absent"))
    for path, digest in sorted(m.runtime_config.items()):
        _check(out, f"runtime.{path}", high, digest, ev.runtime_config_digest or "absent")
    if "subuid" in m.userns:
        _check(out, "userns.subuid", high, m.userns["subuid"], "\n".join(ev.subuid))
    if "subgid" in m.userns:
        _check(out, "userns.subgid", high, m.userns["subgid"], "\n".join(ev.subgid))


def _overlays(m: HostManifest, ev: Evidence, out: list[Finding]) -> None:
    for name in OVERLAYS:
        layer = ev.overlay_changes.get(name)
        if layer is None:
            out.append(Finding(f"overlay.{name}.absent", Severity.CRITICAL,
                               "a tmpfs upper layer", "absent"))
            continue
        # The host already left out what the globs allow; checked again here, because
        # the host's find(1) is not this process's fnmatch.
        allowed = m.mutable_paths.get(name, ())
        modified = [path for path in layer.names
                    if not any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed)]
        if layer.truncated:
            modified.append(f"... and {layer.count - len(layer.names)} more changed entries")
        if modified:
            out.append(Finding(f"overlay.{name}.modified", Severity.MEDIUM, "",
                               "\n".join(modified)))


def compare(manifest: HostManifest, evidence: Evidence) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    _script(evidence, findings)
    _namespaces(evidence, findings)
    _boot(manifest, evidence, findings)
    _mount_table(manifest, evidence, findings)
    _controls(manifest, evidence, findings)
    _overlays(manifest, evidence, findings)
    findings.append(Finding("host.listening", Severity.INFO, "",
                            "\n".join(evidence.listening)))
    findings.append(Finding("host.services", Severity.INFO, "", "\n".join(evidence.services)))
    return tuple(findings)
