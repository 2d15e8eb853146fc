"""Compare a host's evidence with its signed manifest: one finding per fact that differs."""

from __future__ import annotations

import fnmatch

from builder.manifest import HostManifest
from verifier.evidence import Evidence
from verifier.verdict import Finding, Severity


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
    _check(out, "mount.root", crit, f"{m.filesystem} ro /dev/mapper/root", observed)
    for name in ("etc", "var"):
        mount = ev.mount(f"/{name}")
        kind = mount.fstype if mount else "absent"
        _check(out, f"mount.{name}", crit, "overlay", kind)


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
    for name in ("etc", "var"):
        changed = ev.overlay_changes.get(name)
        if changed is None:
            out.append(Finding(f"overlay.{name}.absent", Severity.CRITICAL,
                               "a tmpfs upper layer", "absent"))
            continue
        allowed = m.mutable_paths.get(name, ())
        modified = [path for path in changed
                    if not any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed)]
        if modified:
            out.append(Finding(f"overlay.{name}.modified", Severity.MEDIUM, "",
                               "\n".join(modified)))


def compare(manifest: HostManifest, evidence: Evidence) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    _boot(manifest, evidence, findings)
    _controls(manifest, evidence, findings)
    _overlays(manifest, evidence, findings)
    findings.append(Finding("host.listening", Severity.INFO, "",
                            "\n".join(evidence.listening)))
    findings.append(Finding("host.services", Severity.INFO, "", "\n".join(evidence.services)))
    return tuple(findings)
