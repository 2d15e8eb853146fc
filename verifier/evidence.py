"""Boot-state evidence: one fixed, read-only script over one exec channel, parsed strictly.

Everything the host prints is hostile input: it is size-capped by the transport, must be
UTF-8, and must contain every section exactly once, in order.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import resources

from verifier.transport import HostOutputError, Session, Target

SECTIONS = ("boot_id", "kernel_release", "cmdline", "mountinfo", "verity", "sysctl",
            "apparmor_enabled", "apparmor_profiles", "sshd", "seccomp", "runtime_config",
            "subuid", "subgid", "listening", "services", "overlay_etc", "overlay_var", "end")
_MARKER = re.compile(r"\n@@hardhost:([a-z_]+)@@\n")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PROFILE = re.compile(r"^(?P<name>.+) \((?P<mode>[a-z]+)\)$")


def script() -> str:
    return resources.files("verifier").joinpath("evidence_script.sh").read_text()


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class Evidence:
    boot_id: str
    kernel_release: str
    cmdline: str
    mounts: tuple[Mount, ...]
    verity: dict[str, str]
    sysctls: dict[str, str]
    apparmor_enabled: bool
    apparmor_profiles: dict[str, str]
    sshd: dict[str, str]
    seccomp_digests: dict[str, str]  # path -> sha256
    runtime_config_digest: str  # sha256 of /etc/docker/daemon.json, "" when absent
    subuid: tuple[str, ...]
    subgid: tuple[str, ...]
    listening: tuple[str, ...]  # "proto local-address:port"
    services: tuple[str, ...]  # running service units
    overlay_changes: dict[str, tuple[str, ...] | None]  # None: no overlay upper layer

    def mount(self, mountpoint: str) -> Mount | None:
        """The mount visible at `mountpoint` (the last one stacked there)."""
        found = [m for m in self.mounts if m.mountpoint == mountpoint]
        return found[-1] if found else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def split_marked_sections(raw: bytes, host: str, expected: tuple[str, ...],
                          what: str) -> dict[str, str]:
    """Split the output of a fixed host script whose sections start with `@@hardhost:NAME@@`
    lines. Every name in `expected` must appear exactly once, in order, with nothing before
    the first marker; `what` names the output in errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HostOutputError(f"{host}: {what} is not UTF-8 (byte {exc.start})") from None
    parts = _MARKER.split("\n" + text)
    names = parts[1::2]
    if tuple(names) != expected or parts[0].strip():
        raise HostOutputError(f"{host}: {what} sections are missing, repeated or out of "
                              f"order (got {', '.join(names[:20]) or 'none'})")
    return dict(zip(names, parts[2::2], strict=True))


def split_sections(raw: bytes, host: str) -> dict[str, str]:
    return split_marked_sections(raw, host, SECTIONS, "evidence")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, host: str) -> tuple[Mount, ...]:
    mounts = []
    for line in text.splitlines():
        if not line:
            continue
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            raise HostOutputError(f"{host}: malformed mountinfo line: {line[:80]!r}")
        options = tuple(sorted(set(fields[5].split(",")) | set(rest[2].split(","))))
        mounts.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1]), options))
    return tuple(mounts)


def _key_values(text: str, sep: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        key, found, value = line.strip().partition(sep)
        if found and key.strip():
            pairs.setdefault(key.strip(), value.strip())
    return pairs


def parse_sysctls(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        path, found, value = line.partition(":")
        if found and path.startswith("/proc/sys/"):
            key = path.removeprefix("/proc/sys/").replace("/", ".")
            # Multi-line files (rare) keep their first line; whitespace is normalised the way
            # sysctl(8) prints it.
            values.setdefault(key, " ".join(value.split()))
    return values


def parse_profiles(text: str) -> dict[str, str]:
    profiles = {}
    for line in text.splitlines():
        match = _PROFILE.match(line.strip())
        if match:
            profiles[match.group("name")] = match.group("mode")
    return profiles


_SHA256_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64})  (?P<path>/\S+)$")


def parse_digests(text: str, host: str) -> dict[str, str]:
    digests = {}
    for line in text.splitlines():
        if not line:
            continue
        match = _SHA256_LINE.match(line)
        if not match:
            raise HostOutputError(f"{host}: malformed sha256sum line: {line[:80]!r}")
        digests[match.group("path")] = match.group("digest")
    return digests


def parse_listening(text: str) -> tuple[str, ...]:
    sockets = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] in ("tcp", "udp"):
            sockets.add(f"{fields[0]} {fields[4]}")
    return tuple(sorted(sockets))


def parse_services(text: str) -> tuple[str, ...]:
    return tuple(sorted(line.split()[0] for line in text.splitlines()
                        if line.split() and line.split()[0].endswith(".service")))


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def parse_sshd(text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key.isalnum():
            config.setdefault(key.lower(), value.strip())
    return config


def _upper_listing(text: str, name: str, host: str) -> tuple[str, ...] | None:
    body = text.removesuffix("\n")
    if body == "absent":
        return None
    if body and not body.endswith("\0"):
        raise HostOutputError(f"{host}: malformed listing of the /{name} upper layer")
    return tuple(sorted(body.split("\0")[:-1]))


def parse(raw: bytes, host: str) -> Evidence:
    sections = split_sections(raw, host)
    boot_id = sections["boot_id"].strip()
    if not _UUID.match(boot_id):
        raise HostOutputError(f"{host}: boot_id {boot_id[:40]!r} is not a UUID")
    overlay = {name: _upper_listing(sections[f"overlay_{name}"], name, host)
               for name in ("etc", "var")}
    return Evidence(
        boot_id=boot_id,
        kernel_release=sections["kernel_release"].strip(),
        cmdline=sections["cmdline"].strip(),
        mounts=parse_mountinfo(sections["mountinfo"], host),
        verity=_key_values(sections["verity"], ":"),
        sysctls=parse_sysctls(sections["sysctl"]),
        apparmor_enabled=sections["apparmor_enabled"].strip() == "Y",
        apparmor_profiles=parse_profiles(sections["apparmor_profiles"]),
        sshd=parse_sshd(sections["sshd"]),
        seccomp_digests=parse_digests(sections["seccomp"], host),
        runtime_config_digest=next(iter(parse_digests(sections["runtime_config"], host)
                                        .values()), ""),
        subuid=_lines(sections["subuid"]),
        subgid=_lines(sections["subgid"]),
        listening=parse_listening(sections["listening"]),
        services=parse_services(sections["services"]),
        overlay_changes=overlay,
    )


def collect(session: Session, *, timeout: float) -> Evidence:
    result = session.run_script(script(), timeout=timeout)
    return parse(result.stdout, str(session.target))


def render_table(target: Target, ev: Evidence) -> str:
    root = ev.mount("/")
    rows = [
        ("host", str(target)),
        ("boot_id", ev.boot_id),
        ("kernel", ev.kernel_release),
        ("root", f"{root.fstype} {'ro' if root.read_only else 'RW'} on {root.source}"
         if root else "not found"),
        ("dm-verity", f"{ev.verity.get('status', 'absent')}, root hash "
                      f"{ev.verity.get('root hash', '-')}"),
    ]
    for name in ("etc", "var"):
        mount = ev.mount(f"/{name}")
        kind = f"{mount.fstype} on {mount.source}" if mount else "not mounted"
        changed = ev.overlay_changes[name]
        drift = "no upper layer" if changed is None else f"{len(changed)} changed since boot"
        rows.append((f"/{name}", f"{kind}; {drift}"))
    enforced = sorted(n for n, m in ev.apparmor_profiles.items() if m == "enforce")
    rows.append(("apparmor", f"{'enabled' if ev.apparmor_enabled else 'DISABLED'}, "
                             f"{len(enforced)} profiles in enforce mode"))
    rows.append(("sshd", f"passwordauthentication {ev.sshd.get('passwordauthentication', '?')}, "
                         f"permitrootlogin {ev.sshd.get('permitrootlogin', '?')}"))
    for key in ("kernel.kptr_restrict", "kernel.dmesg_restrict", "kernel.yama.ptrace_scope",
                "kernel.unprivileged_bpf_disabled", "net.ipv4.conf.all.rp_filter"):
        rows.append((f"sysctl {key}", ev.sysctls.get(key, "absent")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
