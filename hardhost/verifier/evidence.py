"""Boot-state evidence: one fixed, read-only script over one exec channel, parsed strictly.

Everything the host prints is hostile input: it is size-capped by the transport, must be
UTF-8, and must contain every section exactly once, in order, each marked with this run's
nonce. Every key appears once. The script's exit status and stderr are evidence too.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Any

from hardhost.core.inputs import decode_json
from hardhost.core.outputs import printable
from hardhost.image import layout
from hardhost.image.manifest import CONTAINER_POLICY_DIR
from hardhost.verifier.transport import HostOutputError, Session, Target

SECTIONS = ("boot_id", "kernel_release", "cmdline", "namespaces", "mountinfo", "verity",
            "sysctl", "apparmor_enabled", "apparmor_profiles", "sshd", "seccomp",
            "runtime_config", "subuid", "subgid", "listening", "services", "failed_units",
            "overlay_etc", "overlay_var", "container_policy", "container_overrides",
            "workloads", "end")
OVERLAYS = layout.OVERLAID_DIRS
# The script's caps (`head -z -n`, `head -n`): what is listed of each upper layer, of
# /etc/containers, of the files overriding it and of podman's running containers.
LISTED_PER_LAYER = 1000
LISTED_POLICY_FILES = 200
LISTED_OVERRIDES = 100
LISTED_WORKLOADS = 200
POLICY_DIR = CONTAINER_POLICY_DIR.rstrip("/")  # the folder the container_policy section lists
STDERR_KEPT = 4096  # characters of the script's stderr kept in the evidence
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PROFILE = re.compile(r"(?P<name>\S.*) \((?P<mode>[a-z]+)\)")
_NONCE = re.compile(r"[0-9a-f]{32}")
# `sshd -T` prints these once per value; every other key once.
SSHD_MULTI_VALUED = frozenset({"listenaddress", "acceptenv", "hostkey", "port", "subsystem",
                               "setenv", "permitopen", "permitlisten", "include",
                               "channeltimeout", "authorizedkeysfile"})
# systemd's unit name characters (unit_name_is_valid in src/basic/unit-name.c).
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}")
_COUNT = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() takes "²", which int() refuses
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def script() -> str:
    return resources.files("hardhost.verifier").joinpath("evidence_script.sh").read_text()


def script_with_nonce(nonce: str) -> str:
    """The fixed script, with this run's section nonce (hex) assigned before it."""
    if not _NONCE.fullmatch(nonce):
        raise ValueError("the nonce is 32 hex digits")
    return f"nonce={nonce}\n{script()}"


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    def option(self, name: str) -> str | None:
        """The value of a `name=value` mount option, or None."""
        prefix = f"{name}="
        return next((o.removeprefix(prefix) for o in self.options if o.startswith(prefix)),
                    None)


@dataclass(frozen=True)
class UpperLayer:
    """What changed in an overlay since boot, outside the allowed globs."""

    count: int  # changed entries outside the allowed globs
    names: tuple[str, ...]  # at most LISTED_PER_LAYER of them; undecodable bytes escaped

    @property
    def truncated(self) -> bool:
        return self.count > len(self.names)


class PodmanState(enum.StrEnum):
    """What the workloads section could say of podman's containers."""

    ANSWERED = "answered"
    ABSENT = "absent"  # no /usr/bin/podman
    FAILED = "failed"  # `podman ps` failed or timed out: the script's stderr says why


@dataclass(frozen=True)
class Workload:
    """A container podman runs, with what podman says of its image."""

    name: str
    image_ref: str  # the reference it was started from; "" for a `--rootfs` container
    image_id: str  # 64 hex digits; "" for a `--rootfs` container
    repo_digests: tuple[str, ...]  # `REPOSITORY@sha256:HEX` of each registry copy known
    runtime: str  # the OCI runtime's name (or the path it was given as)


@dataclass(frozen=True)
class Evidence:
    boot_id: str
    kernel_release: str
    cmdline: str
    namespaces: dict[str, str]  # mnt/pid/net -> "init" or "other"; proc -> "live"/"stale"
    mounts: tuple[Mount, ...]
    verity: dict[str, str]
    sysctls: dict[str, str]
    apparmor_enabled: bool
    apparmor_profiles: dict[str, str]
    sshd: dict[str, str]
    seccomp_digests: dict[str, str]  # path -> sha256
    runtime_config: dict[str, str]  # path -> sha256 of each engine configuration present
    subuid: tuple[str, ...]
    subgid: tuple[str, ...]
    listening: tuple[str, ...]  # "proto local-address:port"
    services: tuple[str, ...]  # running service units
    failed_units: tuple[str, ...]
    overlay_changes: dict[str, UpperLayer | None]  # None: no overlay upper layer
    # Each entry of /etc/containers -> its sha256, or what it is when it was not hashed (a
    # link, a FIFO, a file over 1 MiB); count: the entries found, more when some are unlisted.
    container_policy: dict[str, str]
    container_policy_count: int
    container_overrides: tuple[str, ...]  # paths of files that override /etc/containers
    container_overrides_count: int
    podman: PodmanState
    workloads: tuple[Workload, ...]  # podman's running containers, by name
    workload_count: int  # the running containers podman listed (0 unless it answered)
    exit_status: int  # the script's; 0 when every command it ran succeeded
    stderr: str  # the script's, capped

    def mount(self, mountpoint: str) -> Mount | None:
        """The mount visible at `mountpoint` (the last one stacked there)."""
        found = [m for m in self.mounts if m.mountpoint == mountpoint]
        return found[-1] if found else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def split_marked_sections(raw: bytes, host: str, expected: tuple[str, ...],
                          what: str, nonce: str = "") -> dict[str, str]:
    """Split the output of a fixed host script whose sections start with `@@hardhost:NAME@@`
    lines (`@@hardhost:NONCE:NAME@@` with a nonce). Every name in `expected` must appear
    exactly once, in order, with nothing before the first marker; `what` names the output
    in errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HostOutputError(f"{host}: {what} is not UTF-8 (byte {exc.start})") from None
    tag = f"{nonce}:" if nonce else ""
    marker = re.compile(rf"\n@@hardhost:{re.escape(tag)}([a-z_]+)@@\n")
    parts = marker.split("\n" + text)
    names = parts[1::2]
    if tuple(names) != expected or parts[0].strip():
        shown = printable(", ".join(names[:20])) or "none"
        raise HostOutputError(f"{host}: {what} sections are missing, repeated or out of "
                              f"order (got {shown})")
    return dict(zip(names, parts[2::2], strict=True))


def split_sections(raw: bytes, host: str, nonce: str = "") -> dict[str, str]:
    return split_marked_sections(raw, host, SECTIONS, "evidence", nonce)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _bad(host: str, what: str, line: str) -> HostOutputError:
    return HostOutputError(f"{host}: {what}: {printable(line[:80])!r}")


def parse_mountinfo(text: str, host: str) -> tuple[Mount, ...]:
    mounts = []
    for line in text.splitlines():
        if not line:
            continue
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            raise _bad(host, "malformed mountinfo line", line)
        options = tuple(sorted(set(fields[5].split(",")) | set(rest[2].split(","))))
        mounts.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1]), options))
    return tuple(mounts)


def _once(pairs: dict[str, str], key: str, value: str, host: str, what: str) -> None:
    """Add `key` once: a second value for it is forged or broken evidence, never a choice
    between the two."""
    if key in pairs:
        raise HostOutputError(f"{host}: {what} {printable(key[:80])!r} appears twice")
    pairs[key] = value


def _key_values(text: str, sep: str, host: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        key, found, value = line.strip().partition(sep)
        if found and key.strip():
            _once(pairs, key.strip(), value.strip(), host, what)
    return pairs


def parse_sysctls(text: str, host: str) -> dict[str, str]:
    """`grep -r ''` over /proc/sys: one `PATH:LINE` per line of each file. A file of several
    lines (kernel.core_modes on Linux 6.x) gives consecutive lines of one path, joined into
    one value; a key that comes back after another key is forged or broken evidence."""
    values: dict[str, str] = {}
    previous = ""
    for line in text.splitlines():
        path, found, value = line.partition(":")
        if not found or not path.startswith("/proc/sys/"):
            raise _bad(host, "malformed sysctl line", line)
        key = path.removeprefix("/proc/sys/").replace("/", ".")
        # Whitespace is normalised the way sysctl(8) prints it.
        if key == previous:
            values[key] = " ".join([values[key], *value.split()]).strip()
        else:
            _once(values, key, " ".join(value.split()), host, "sysctl")
        previous = key
    return values


def parse_profiles(text: str, host: str = "host") -> dict[str, str]:
    profiles: dict[str, str] = {}
    for line in text.splitlines():
        match = _PROFILE.fullmatch(line.strip())
        if not match:
            raise _bad(host, "malformed AppArmor profile line", line)
        _once(profiles, match.group("name"), match.group("mode"), host, "AppArmor profile")
    return profiles


_SHA256_LINE = re.compile(r"(?P<digest>[0-9a-f]{64})  (?P<path>/\S+)")


def parse_digests(text: str, host: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        match = _SHA256_LINE.fullmatch(line)
        if not match:
            raise _bad(host, "malformed sha256sum line", line)
        _once(digests, match.group("path"), match.group("digest"), host, "digest of")
    return digests


def parse_listening(text: str) -> tuple[str, ...]:
    sockets = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] in ("tcp", "udp"):
            sockets.add(f"{fields[0]} {fields[4]}")
    return tuple(sorted(sockets))


def parse_units(text: str, host: str, what: str) -> tuple[str, ...]:
    """Unit names from `systemctl list-units --no-legend --plain`, each strictly a name."""
    units = set()
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not _UNIT.fullmatch(fields[0]) or fields[0] in units:
            raise _bad(host, f"malformed or repeated {what} line", line)
        units.add(fields[0])
    return tuple(sorted(units))


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def parse_sshd(text: str, host: str = "host") -> dict[str, str]:
    """`sshd -T`: each key once, except those sshd prints once per value, whose values are
    joined with newlines in the order printed."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if not key:
            continue
        if not key.isalnum():
            raise _bad(host, "malformed sshd -T line", line)
        key = key.lower()
        if key in SSHD_MULTI_VALUED and key in config:
            config[key] += "\n" + value.strip()
        else:
            _once(config, key, value.strip(), host, "sshd -T key")
    return config


def parse_namespaces(text: str, host: str) -> dict[str, str]:
    found = _key_values(text, " ", host, "namespace")
    expected = {"mnt": ("init", "other"), "pid": ("init", "other"), "net": ("init", "other"),
                "proc": ("live", "stale")}
    if set(found) != set(expected) or any(found[k] not in v for k, v in expected.items()):
        raise HostOutputError(f"{host}: malformed namespaces section")
    return found


def _nul_listing(text: str, host: str, what: str, cap: int) -> tuple[int, list[bytes]] | None:
    """A listing as the script prints it: `absent`, or the count of the entries found, then
    at most `cap` of them, each NUL-terminated, all base64-encoded on one line."""
    lines = text.splitlines()
    if lines == ["absent"]:
        return None
    if len(lines) not in (1, 2) or not _COUNT.fullmatch(lines[0]):
        raise HostOutputError(f"{host}: malformed {what}")
    try:
        listed = base64.b64decode(lines[1] if len(lines) == 2 else "", validate=True)
    except binascii.Error:
        raise HostOutputError(f"{host}: the {what} is not base64") from None
    if listed and not listed.endswith(b"\0"):
        raise HostOutputError(f"{host}: malformed {what}")
    entries = listed.split(b"\0")[:-1]
    count = int(lines[0])
    if len(entries) > cap or count < len(entries):
        raise HostOutputError(f"{host}: malformed {what}")
    return count, entries


def _name(raw: bytes) -> str:
    # Names are bytes on Linux; undecodable ones keep their bytes as \xNN escapes.
    return raw.decode("utf-8", "backslashreplace")


def _upper_listing(text: str, name: str, host: str) -> UpperLayer | None:
    found = _nul_listing(text, host, f"listing of the /{name} upper layer", LISTED_PER_LAYER)
    if found is None:
        return None
    count, entries = found
    return UpperLayer(count, tuple(sorted(_name(entry) for entry in entries)))


# A record of the container_policy section: a file's sha256, or find's type letter (%y) for
# an entry the script did not hash (the folder itself, when it is a link). Names may hold
# newlines: the record is NUL-terminated.
_POLICY_RECORD = re.compile(rf"(?:(?P<digest>[0-9a-f]{{64}})|(?P<type>[A-Za-z?]))  "
                            rf"(?P<path>{re.escape(POLICY_DIR)}(?:/.+)?)", re.DOTALL)
NOT_HASHED = {"f": "not hashed: larger than 1 MiB", "l": "a symbolic link", "p": "a FIFO",
              "s": "a socket", "b": "a block device", "c": "a character device"}


def parse_container_policy(text: str, host: str) -> tuple[int, dict[str, str]]:
    """The entries of /etc/containers found, and each listed one's sha256 (or what it is, when
    it was not hashed), by path."""
    found = _nul_listing(text, host, f"listing of {POLICY_DIR}", LISTED_POLICY_FILES)
    if found is None:
        return 0, {}
    count, entries = found
    files: dict[str, str] = {}
    for entry in entries:
        match = _POLICY_RECORD.fullmatch(_name(entry))
        if not match:
            raise _bad(host, f"malformed {POLICY_DIR} entry", _name(entry))
        kind = match.group("type")
        value = match.group("digest") or NOT_HASHED.get(kind, f"not a regular file ({kind})")
        _once(files, match.group("path"), value, host, f"{POLICY_DIR} entry")
    return count, files


def parse_container_overrides(text: str, host: str) -> tuple[int, tuple[str, ...]]:
    """The files found that would override /etc/containers, and the paths of those listed
    (none on a host without podman, where the script does not search)."""
    what = "listing of container policy overrides"
    found = _nul_listing(text, host, what, LISTED_OVERRIDES)
    if found is None:
        return 0, ()
    count, entries = found
    paths = tuple(sorted({_name(entry) for entry in entries}))
    if len(paths) != len(entries) or not all(path.startswith("/") for path in paths):
        raise HostOutputError(f"{host}: malformed {what}")
    return count, paths


_WORKLOAD_COUNT = re.compile(r"count (?P<count>[0-9]{1,9})")
# podman's container names (NameRegex in libpod/define/errors.go): finding ids carry them.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,1023}")
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")
# The repository part follows distribution's reference grammar, IPv6 hosts included.
_REPO_DIGEST = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._:/\[\]-]{0,1023}@sha256:[0-9a-f]{64}")
MAX_WORKLOAD_LINE = 64 << 10  # characters of one container's or image's line
MAX_REPO_DIGESTS = 100  # of one image: one per repository it was pulled from
MAX_TEXT = 4096  # characters of an image reference or a runtime: PATH_MAX


def _json_object(body: str, keys: tuple[str, ...], host: str, what: str) -> dict[str, Any]:
    """One line of podman's output: a JSON object with exactly `keys`, none twice."""
    value = decode_json(body, origin=f"{host}: {what}", error=HostOutputError)
    if not isinstance(value, dict) or sorted(value) != sorted(keys):
        raise _bad(host, f"malformed {what}", body)
    return value


def _plain(value: object, host: str, what: str) -> str:
    """A string podman printed for people: capped and free of control characters."""
    if not isinstance(value, str) or len(value) > MAX_TEXT or _CONTROL.search(value):
        raise _bad(host, f"malformed {what}", str(value))
    return value


def _container(body: str, host: str) -> Workload:
    fields = _json_object(body, ("name", "image_ref", "image_id", "runtime"), host,
                          "container line")
    name, image_id = fields["name"], fields["image_id"]
    if not isinstance(name, str) or not _CONTAINER_NAME.fullmatch(name):
        raise _bad(host, "malformed container name", str(name))
    if not isinstance(image_id, str) or not (image_id == "" or _IMAGE_ID.fullmatch(image_id)):
        raise _bad(host, f"container {name}: malformed image id", str(image_id))
    runtime = _plain(fields["runtime"], host, f"container {name}: runtime")
    if not runtime:
        raise _bad(host, f"container {name}: no runtime", body)
    return Workload(name, _plain(fields["image_ref"], host, f"container {name}: image"),
                    image_id, (), runtime)


def _image(body: str, host: str) -> tuple[str, tuple[str, ...]]:
    fields = _json_object(body, ("id", "repo_digests"), host, "image line")
    image_id, digests = fields["id"], fields["repo_digests"]
    if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
        raise _bad(host, "malformed image id", str(image_id))
    # Go's JSON encoding prints a nil slice as null: an image with no repository digest.
    digests = [] if digests is None else digests
    if (not isinstance(digests, list) or len(digests) > MAX_REPO_DIGESTS
            or not all(isinstance(d, str) and _REPO_DIGEST.fullmatch(d) for d in digests)):
        raise _bad(host, f"image {image_id}: malformed repository digests", str(digests))
    if len(set(digests)) != len(digests):
        raise HostOutputError(f"{host}: image {image_id}: a repository digest appears twice")
    return image_id, tuple(sorted(digests))


def parse_workloads(text: str, host: str) -> tuple[PodmanState, int, tuple[Workload, ...]]:
    """Whether podman answered, the number of containers it runs and those listed, each with
    its image's repository digests. Every container line comes before every image line."""
    # Lines end at "\n" only: str.splitlines() would also end one at U+0085, which Go's JSON
    # encoding leaves as it is in a string.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if lines in (["absent"], ["failed"]):
        return PodmanState(lines[0]), 0, ()
    head = _WORKLOAD_COUNT.fullmatch(lines[0]) if lines else None
    if head is None:
        raise HostOutputError(f"{host}: the workloads section does not start with a count")
    containers: dict[str, Workload] = {}
    images: dict[str, tuple[str, ...]] = {}
    for line in lines[1:]:
        kind, _, body = line.partition(" ")
        if len(line) > MAX_WORKLOAD_LINE:
            raise _bad(host, f"workloads line longer than {MAX_WORKLOAD_LINE}", line)
        if kind == "container" and not images:
            workload = _container(body, host)
            if workload.name in containers:
                raise HostOutputError(f"{host}: container {workload.name} appears twice")
            containers[workload.name] = workload
        elif kind == "image":
            image_id, digests = _image(body, host)
            if image_id in images:
                raise HostOutputError(f"{host}: image {image_id} appears twice")
            images[image_id] = digests
        else:
            raise _bad(host, "malformed workloads line", line)
    count = int(head.group("count"))
    if len(containers) > LISTED_WORKLOADS or count < len(containers):
        raise HostOutputError(f"{host}: {len(containers)} containers listed of {count} "
                              "running: malformed workloads section")
    return PodmanState.ANSWERED, count, tuple(
        replace(w, repo_digests=images.get(w.image_id, ())) for _, w in sorted(containers.items()))


def parse(raw: bytes, host: str, *, nonce: str = "", exit_status: int = 0,
          stderr: bytes = b"") -> Evidence:
    sections = split_sections(raw, host, nonce)
    boot_id = sections["boot_id"].strip()
    if not _UUID.fullmatch(boot_id):
        raise HostOutputError(f"{host}: boot_id {printable(boot_id[:40])!r} is not a UUID")
    overlay = {name: _upper_listing(sections[f"overlay_{name}"], name, host)
               for name in OVERLAYS}
    policy_count, policy = parse_container_policy(sections["container_policy"], host)
    overrides_count, overrides = parse_container_overrides(sections["container_overrides"],
                                                           host)
    podman, workload_count, workloads = parse_workloads(sections["workloads"], host)
    return Evidence(
        boot_id=boot_id,
        kernel_release=sections["kernel_release"].strip(),
        cmdline=sections["cmdline"].strip(),
        namespaces=parse_namespaces(sections["namespaces"], host),
        mounts=parse_mountinfo(sections["mountinfo"], host),
        verity=_key_values(sections["verity"], ":", host, "veritysetup status key"),
        sysctls=parse_sysctls(sections["sysctl"], host),
        apparmor_enabled=sections["apparmor_enabled"].strip() == "Y",
        apparmor_profiles=parse_profiles(sections["apparmor_profiles"], host),
        sshd=parse_sshd(sections["sshd"], host),
        seccomp_digests=parse_digests(sections["seccomp"], host),
        runtime_config=parse_digests(sections["runtime_config"], host),
        subuid=_lines(sections["subuid"]),
        subgid=_lines(sections["subgid"]),
        listening=parse_listening(sections["listening"]),
        services=parse_units(sections["services"], host, "running service"),
        failed_units=parse_units(sections["failed_units"], host, "failed unit"),
        overlay_changes=overlay,
        container_policy=policy,
        container_policy_count=policy_count,
        container_overrides=overrides,
        container_overrides_count=overrides_count,
        podman=podman,
        workloads=workloads,
        workload_count=workload_count,
        exit_status=exit_status,
        stderr=stderr.decode("utf-8", "backslashreplace")[:STDERR_KEPT],
    )


def allowed_globs(mutable_paths: dict[str, Sequence[str]]) -> list[str]:
    """The script's arguments: `NAME:GLOB` for each overlay's allowed globs. Globs with a
    backslash are left to the verifier: find(1) reads it as an escape, fnmatch does not."""
    return [f"{name}:{glob}" for name in OVERLAYS for glob in mutable_paths.get(name, ())
            if "\\" not in glob]


def collect(session: Session, *, timeout: float,
            mutable_paths: dict[str, Sequence[str]] | None = None) -> Evidence:
    """Run the evidence script on `session` and parse what it printed. Upper-layer entries
    matching `mutable_paths` are left out of the listings on the host."""
    nonce = secrets.token_hex(16)
    result = session.run_script(script_with_nonce(nonce), timeout=timeout,
                                args=allowed_globs(mutable_paths or {}))
    return parse(result.stdout, str(session.target), nonce=nonce,
                 exit_status=result.exit_status, stderr=result.stderr)


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
        drift = "no upper layer" if changed is None else f"{changed.count} changed since boot"
        rows.append((f"/{name}", f"{kind}; {drift}"))
    rows.append(("mounts", f"{len(ev.mounts)}, namespace {ev.namespaces.get('mnt', '?')}"))
    if ev.podman is not PodmanState.ABSENT:
        running = (f"{ev.workload_count} running" if ev.podman is PodmanState.ANSWERED
                   else "podman FAILED")
        rows.append(("containers", f"{running}, {ev.container_overrides_count} policy "
                                   "overrides"))
    rows.append(("failed units", ", ".join(ev.failed_units) or "none"))
    rows.append(("script", f"exit status {ev.exit_status}"
                           + (f", stderr {ev.stderr.strip()[:200]}" if ev.stderr.strip() else "")))
    enforced = sorted(n for n, m in ev.apparmor_profiles.items() if m == "enforce")
    rows.append(("apparmor", f"{'enabled' if ev.apparmor_enabled else 'DISABLED'}, "
                             f"{len(enforced)} profiles in enforce mode"))
    rows.append(("sshd", f"passwordauthentication {ev.sshd.get('passwordauthentication', '?')}, "
                         f"permitrootlogin {ev.sshd.get('permitrootlogin', '?')}"))
    for key in ("kernel.kptr_restrict", "kernel.dmesg_restrict", "kernel.yama.ptrace_scope",
                "kernel.unprivileged_bpf_disabled", "net.ipv4.conf.all.rp_filter"):
        rows.append((f"sysctl {key}", ev.sysctls.get(key, "absent")))
    width = max(len(k) for k, _ in rows)
    # Every value came from the host: escape sequences in it must not reach the terminal.
    return "\n".join(f"{k.ljust(width)}  {printable(v)}" for k, v in rows)
