"""Compare a host's evidence with its signed manifest: every fact the manifest implies is one
check, and each check that fails gives the findings of the verdict."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from hardhost.image import layout
from hardhost.image.manifest import CONTAINER_POLICY_DIR, HostManifest
from hardhost.verifier.evidence import OVERLAYS, Evidence, PodmanState, Workload
from hardhost.verifier.verdict import Finding, Severity

# The engine whose containers the evidence lists (its `workloads` section).
PODMAN = "podman"
# The build empties this folder (hardhost.builder.container_policy.REGISTRIES_CONF_D): a
# drop-in there is merged over the manifest's registries.conf, and could bring back short
# names or search registries.
REGISTRIES_CONF_D = f"{CONTAINER_POLICY_DIR}registries.conf.d/"
# The registry podman gives an image that came from none: built, committed, imported or
# loaded on the host (`localhost/NAME`).
LOCAL = "localhost"


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
        _equal(out, "runtime", path, high, digest, ev.runtime_config.get(path, "absent"))
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


def registry_of(reference: str) -> str:
    """The registry of an image reference or repository digest: its first component when
    that names a host (a '.' or ':' in it, `localhost`, or upper case), else Docker Hub, as
    distribution's reference normalisation reads it (splitDockerDomain)."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == LOCAL or first != first.lower()):
        return first.lower()
    return "docker.io"


def _complete(out: list[Check], component: str, listed: int, found: int, expected: str) -> None:
    """A listing the script cut short is a finding of its own: what it left out is unseen."""
    out.append(Check(component, "truncated", () if found <= listed else (
        Finding(f"{component}.truncated", Severity.HIGH, expected,
                f"{listed} of {found} listed"),)))


def _container_policy(m: HostManifest, ev: Evidence, out: list[Check]) -> None:
    """The engine's trust policy as the host holds it, and no file that would override it."""
    high = Severity.HIGH
    for path, digest in sorted(m.container_policy.items()):
        _equal(out, "containers.policy", path, high, digest,
               ev.container_policy.get(path, "absent"))
    out.append(Check("containers.policy", "registries.conf.d", tuple(
        Finding(f"containers.policy.{path}", high, "absent", value)
        for path, value in sorted(ev.container_policy.items())
        if path.startswith(REGISTRIES_CONF_D) and path not in m.container_policy)))
    _complete(out, "containers.policy", len(ev.container_policy), ev.container_policy_count,
              f"every entry of {CONTAINER_POLICY_DIR} listed")
    # podman reads $HOME/.config/containers before /etc/containers, even for root.
    out.append(Check("containers.override", "found", tuple(
        Finding(f"containers.override.{path}", high, "absent", "present")
        for path in ev.container_overrides)))
    _complete(out, "containers.override", len(ev.container_overrides),
              ev.container_overrides_count, "every override file named")


def _workload(m: HostManifest, w: Workload, out: list[Check]) -> None:
    high = Severity.HIGH
    registries = m.workloads.get("registries", ())
    runtimes = m.workloads.get("runtimes", ())
    pulled = [d for d in w.repo_digests if registry_of(d) != LOCAL]
    listed = ", ".join(w.repo_digests) or "no repository digest"
    # An image with no registry's digest was made on the host: no policy ever checked it.
    out.append(Check("workload.unverified", w.name, () if pulled else (
        Finding(f"workload.unverified.{w.name}", high, "an image pulled from a registry",
                listed),)))
    if registries and pulled:
        allowed = any(registry_of(d) in registries for d in pulled)
        out.append(Check("workload.registry", w.name, () if allowed else (
            Finding(f"workload.registry.{w.name}", high, ", ".join(registries),
                    ", ".join(sorted({registry_of(d) for d in pulled}))),)))
    if runtimes:
        out.append(Check("workload.runtime", w.name, () if w.runtime in runtimes else (
            Finding(f"workload.runtime.{w.name}", high, ", ".join(runtimes), w.runtime),)))


def _workloads(m: HostManifest, ev: Evidence, out: list[Check]) -> tuple[Finding, ...]:
    """What the container engine runs, when the manifest says what it may run. Returns the
    records of the running containers, for people."""
    if not m.workloads:
        return ()
    engine = m.workloads.get("engine", ("",))[0]
    if engine != PODMAN:
        # dockerd has no policy of containers/image's kind, and the evidence lists podman's
        # containers only: said, not checked.
        return (Finding("workloads.engine", Severity.INFO, engine,
                        f"not attested: the evidence lists {PODMAN}'s containers only"),)
    _container_policy(m, ev, out)
    expected = f"{PODMAN} at /usr/bin/{PODMAN}, listing its containers"
    if ev.podman is not PodmanState.ANSWERED:
        observed = ("absent" if ev.podman is PodmanState.ABSENT
                    else f"`{PODMAN} ps` failed: see the script's stderr")
        out.append(Check("workloads", "engine", (
            Finding("workloads.engine", Severity.HIGH, expected, observed),)))
        return ()
    out.append(Check("workloads", "engine"))
    _complete(out, "workloads", len(ev.workloads), ev.workload_count,
              "every running container listed")
    for workload in ev.workloads:
        _workload(m, workload, out)
    # Not "workload.NAME": a container named "runtime.x" would share the id of the finding
    # "workload.runtime.x" about a container "x". No finding starts with "container.".
    return tuple(Finding(f"container.{w.name}", Severity.INFO, "",
                         f"image {w.image_ref or '-'}\nid {w.image_id or '-'}\n"
                         f"repo digests {', '.join(w.repo_digests) or 'none'}\n"
                         f"runtime {w.runtime}")
                 for w in ev.workloads)


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
    workloads = _workloads(manifest, evidence, checks)
    records = (Finding("host.listening", Severity.INFO, "", "\n".join(evidence.listening)),
               Finding("host.services", Severity.INFO, "", "\n".join(evidence.services)),
               *workloads)
    return Examination(evidence.boot_id, tuple(checks), records)


def compare(manifest: HostManifest, evidence: Evidence) -> tuple[Finding, ...]:
    """One finding per fact that differs, then the records for people."""
    return examine(manifest, evidence).findings
