"""The image spec: TOML parsed into frozen dataclasses, validated at the edge.

Every setting is declared once, as a dataclass field whose metadata carries its help text and,
where the TOML value needs more than a type check, its own parser. The same declarations drive
parsing, unknown-key detection and error messages (`FILE: KEY: what is wrong`), and
`hardhost.builder.schema` renders them as a JSON Schema and as the README's key table.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import json
import re
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardhost.builder import containers as _containers
from hardhost.builder.containers import Containers
from hardhost.core.errors import SpecError
from hardhost.core.inputs import read_text
from hardhost.core.settings import CONTROL_RE as _CONTROL_RE
from hardhost.core.settings import MAX_KEY_PARTS as _MAX_KEY_PARTS
from hardhost.core.settings import Invalid as _Invalid
from hardhost.core.settings import build, parse_toml, without_later_defaults
from hardhost.core.settings import declare as _help
from hardhost.core.settings import show as _show
from hardhost.core.settings import str_list as _str_list
from hardhost.core.settings import text as _text
from hardhost.core.settings import tname as _tname
from hardhost.image import layout
from hardhost.image.manifest import MAX_VALIDITY_DAYS
from hardhost.image.version import IMAGE_VERSION_RE


class Filesystem(enum.StrEnum):
    EROFS = "erofs"
    SQUASHFS = "squashfs"


class Compression(enum.StrEnum):
    LZ4 = "lz4"
    LZ4HC = "lz4hc"
    XZ = "xz"
    ZSTD = "zstd"


# erofs-utils 1.5 (Debian 12) offers only lz4 and lz4hc; squashfs is the small-image choice.
COMPRESSIONS: Mapping[Filesystem, tuple[Compression, ...]] = {
    Filesystem.EROFS: (Compression.LZ4HC, Compression.LZ4),
    Filesystem.SQUASHFS: (Compression.XZ, Compression.ZSTD),
}

# What a VM or NVMe host running containers loads: disks, network, entropy, the root's
# filesystems and dm-verity, and Docker's netfilter, bridge, veth and vxlan networking.
DEFAULT_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_console", "virtio_rng",
    "virtio_balloon", "sd_mod", "ahci", "nvme",
    "ext4", "erofs", "squashfs", "overlay", "autofs4", "efivarfs", "configfs", "loop",
    # The ESP, which an update mounts to install a UKI and the verifier to bless a boot.
    "vfat", "nls_cp437", "nls_ascii",
    "dm_verity",
    "net/netfilter/", "net/ipv4/netfilter/", "net/ipv6/netfilter/", "net/bridge/",
    "veth", "vxlan", "macvlan", "ipvlan", "tun",
    # The ACPI power button, which logind reads through evdev: a hypervisor's or a cloud's
    # "stop" then shuts the host down cleanly instead of cutting its power after a wait.
    "button", "evdev",
)
# Every pattern below is used with fullmatch: `$` would also match before a trailing newline,
# and a newline in a value splits the line it is rendered into (sysctl.conf, subuid, sshd).
_MODULE_RE = re.compile(r"[A-Za-z0-9_\-*?\[\]]+|[a-z0-9_\-]+(/[a-z0-9_\-]+)*/")
# Debian policy 5.6.1: at least two characters, lower case, digits, '+', '-', '.'.
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.\-]+")
_SYSCTL_RE = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+")
# A sysctl value: printable ASCII words separated by single spaces (ip_local_port_range
# takes two numbers). No '#' or ';', which start a comment in sysctl.d.
_SYSCTL_VALUE_RE = re.compile(r"[!-\"$-:<-~]+( [!-\"$-:<-~]+)*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_\-]{0,31}")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")
_SUITE_RE = re.compile(r"[a-z][a-z0-9\-]*")
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
# [distribution] keys added after specs were signed (see Spec.digest).
_DISTRIBUTION_LATER_KEYS = ("security_mirror", "updates")
# A console device and its options, as the kernel documents them: ttyS0, ttyS0,115200n8,
# hvc0, uart8250,io,0x3f8,115200. No space, quote or '=': nothing else can ride along.
_CONSOLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(,[A-Za-z0-9_.:]+)*")
# An extra kernel argument: a lower-case name, then optionally '=' and a value without
# spaces, quotes (the kernel groups words inside "..."), shell glob or other specials
# (the initramfs scripts word-split /proc/cmdline unquoted).
_CMDLINE_ARG_RE = re.compile(r"[a-z0-9_][a-z0-9_.\-]*(=[A-Za-z0-9_.,:/@+%=\-]*)?")
# An OpenSSH public key line: type, base64 blob, optional comment of printable characters.
_KEY_BLOB_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_URL_RE = re.compile(r"(https?|file)://[!-~]+")
# Specs are a few KiB; the bound keeps what tomllib is handed small.
MAX_SPEC_BYTES = 256 << 10
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com")


def _pattern(regex: re.Pattern[str]) -> dict[str, str]:
    """The JSON Schema pattern of a regex the parser uses with fullmatch. `(?![\\s\\S])`
    ends the match at the end of the text in both ECMA-262 and Python regexes; `$` would let a
    trailing newline through in Python."""
    return {"pattern": f"^(?:{regex.pattern})(?![\\s\\S])"}


def _packages(value: Any) -> tuple[str, ...]:
    names = _str_list(value)
    if not names:
        raise _Invalid("must list at least one package")
    for name in names:
        if not _PACKAGE_RE.fullmatch(name):
            raise _Invalid(f"{_show(name)} is not a Debian package name")
    if len(set(names)) != len(names):
        raise _Invalid("lists a package twice")
    return tuple(sorted(names))


def _sysctls(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a table of sysctl = value, got {_tname(value)}")
    pairs: list[tuple[str, str]] = []
    for key, raw in _flatten(value):
        if not _SYSCTL_RE.fullmatch(key):
            raise _Invalid(f"{_show(key)} is not a sysctl name")
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise _Invalid(f"{key}: expected an integer or string, got {_tname(raw)}")
        text = str(raw)
        if not _SYSCTL_VALUE_RE.fullmatch(text):
            raise _Invalid(f"{key}: {_show(text)}: a value is printable words separated by "
                           "single spaces, without '#', ';' or spaces around it")
        pairs.append((key, text))
    return tuple(sorted(pairs))


def _flatten(table: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Accept both `"kernel.kptr_restrict" = 2` and nested `[sysctl.kernel]` tables."""
    if depth > _MAX_KEY_PARTS:
        raise _Invalid(f"{_show(prefix)} is nested deeper than any sysctl")
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{name}.", depth + 1))
        else:
            out.append((name, value))
    return out


def _authorized_key(line: str) -> str:
    """One OpenSSH public key line, checked as sshd will read it: a known type, a base64
    blob that encodes that same type, and a printable comment. No options (`command=`,
    `from=`): a key line in a spec grants a plain login, nothing more."""
    bad = _Invalid(f"{_show(line)} is not an OpenSSH public key line (TYPE BASE64 [COMMENT])")
    _text(line)
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] not in _KEY_TYPES or not _KEY_BLOB_RE.fullmatch(parts[1]):
        raise bad
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise bad from None
    kind = parts[0].encode()
    if blob[:4] != len(kind).to_bytes(4, "big") or blob[4:4 + len(kind)] != kind:
        raise _Invalid(f"{_show(line)}: the key's base64 does not hold a {parts[0]} key")
    return line


def _authorized_keys(value: Any) -> tuple[str, ...]:
    return tuple(_authorized_key(line) for line in _str_list(value))


# Kernel arguments a spec may not add. The builder sets the root, its verity hash and the
# hardhost.* devices; the rest would boot something else than the verified root (init=,
# rdinit=, initrd=, which the EFI stub loads from the ESP, dm-mod.create=, rw), open a
# shell before or instead of the system (break= in initramfs-tools, systemd's debug and
# crash shells, systemd.setenv=SYSTEMD_SULOGIN_FORCE=1, systemd.run=, a boot target or
# runlevel), or switch off AppArmor, whose profiles the manifest records (apparmor=0, and
# its module parameters apparmor.enabled=0 and apparmor.mode=complain), or keep a failed
# boot from using up its try (panic=0 halts a panic, and initramfs-tools then opens a shell
# instead of rebooting). sysctl.* (Linux 5.8+) belongs in [sysctl], where the manifest
# records it. The kernel and systemd read '-'
# and '_' in a name as the same character, so names are compared with '_'.
_RESERVED_ARGS = frozenset({
    "root", "rootfstype", "rootflags", "roothash", "usrhash", "ro", "rw", "init", "rdinit",
    "initrd", "nfsroot", "dm_mod.create", "break", "apparmor", "security", "lsm", "selinux",
    "enforcing", "single", "emergency", "rescue", "s", "1", "2", "3", "4", "5", "panic",
})
_RESERVED_PREFIXES = ("hardhost.", "apparmor.")
# systemd.* arguments: only logging, status output and the cgroup layout. The others
# choose units, generators, shells and the environment of the boot.
_SYSTEMD_ALLOWED = frozenset({"systemd.show_status", "systemd.status_unit_format",
                              "systemd.unified_cgroup_hierarchy",
                              "systemd.legacy_systemd_cgroup_controller"})
_SYSTEMD_ALLOWED_PREFIXES = ("systemd.log_", "systemd.journald.")


def _reserved(name: str) -> bool:
    name = name.replace("-", "_").removeprefix("rd.")
    if name in _RESERVED_ARGS or name.startswith(_RESERVED_PREFIXES):
        return True
    if name.startswith("systemd."):
        return name not in _SYSTEMD_ALLOWED and not name.startswith(_SYSTEMD_ALLOWED_PREFIXES)
    return False


def _cmdline(value: Any) -> tuple[str, ...]:
    args = _str_list(value)
    for arg in args:
        if not _CMDLINE_ARG_RE.fullmatch(arg):
            raise _Invalid(f"{_show(arg)}: one argument per list item: a lower-case name, "
                           "optionally '=' and a value of letters, digits and _.,:/@+%=- "
                           "(no spaces, quotes or '--')")
        name = arg.split("=", 1)[0]
        if name.startswith("sysctl."):
            raise _Invalid(f"{_show(arg)}: set sysctls in the [sysctl] table, where the "
                           "manifest records them")
        if _reserved(name):
            raise _Invalid(f"{_show(arg)}: {name} decides what boots or how it is verified; "
                           "the builder sets it and a spec cannot")
    return tuple(args)


def _console(value: Any) -> str:
    if not isinstance(value, str) or not _CONSOLE_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)}: expected a console device and its options, e.g. "
                       "ttyS0 or ttyS0,115200n8 (no spaces or '=')")
    return value


def _architecture(value: Any) -> str:
    # The UKI stub (linuxx64.efi.stub), the qemu of `vm start` and the default module set
    # are x86-64's: another architecture would build an image nothing here can boot.
    if value != "amd64":
        raise _Invalid(f"{_show(value)}: hardhost builds amd64 images only")
    return "amd64"


def _modules(value: Any) -> tuple[str, ...]:
    patterns = _str_list(value)
    for pattern in patterns:
        if not _MODULE_RE.fullmatch(pattern):
            raise _Invalid(f"{_show(pattern)}: expected a module name or glob (dm_verity, "
                           "virtio*) or a folder of kernel/ ending in '/' (net/netfilter/)")
    return tuple(patterns)


def _prune_paths(value: Any) -> tuple[str, ...]:
    paths = _str_list(value)
    for path in paths:
        parts = path.split("/")
        if not path or path.startswith("/") or ".." in parts or "" in parts[:-1] \
                or any(c.isspace() for c in path) or _CONTROL_RE.search(path):
            raise _Invalid(f"{_show(path)}: expected a path glob relative to the root, "
                           "without '..', e.g. 'usr/bin/ctr'")
    return tuple(paths)


def _user(value: Any) -> str:
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)} is not a valid user name")
    return value


def _remap_user(value: Any) -> str:
    user = _user(value)
    if user == "root":
        raise _Invalid("root: containers remapped to root are not remapped at all; "
                       "name an unprivileged user such as dockremap")
    return user


def _version(value: Any) -> str:
    if not isinstance(value, str) or not IMAGE_VERSION_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)}: use numbers joined by dots, such as 1.4 or 2026.11.30")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)}: use lower-case letters, digits and '-'")
    return value


def _description(value: Any) -> str:
    text = _text(value)
    if len(text) > 200:
        raise _Invalid(f"is {len(text)} characters long; keep it to one line of at most 200")
    return text


def _suite(value: Any) -> str:
    if not isinstance(value, str) or not _SUITE_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)} is not a Debian suite name")
    return value


def _mirror(value: Any) -> str:
    # mmdebstrap writes the URL into the image's apt sources: one word of printable ASCII.
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)}: expected an http://, https:// or file:// URL "
                       "without spaces")
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "file" and not parsed.hostname:
        raise _Invalid(f"{_show(value)}: the URL names no host")
    return value


def _security_mirror(value: Any) -> str:
    return "" if value == "" else _mirror(value)


def _path(value: Any) -> str:
    """A file path relative to the spec's folder (or empty, for unset)."""
    path = _text(value)
    if path and path.rsplit("/", 1)[-1] in ("", ".", ".."):
        raise _Invalid(f"{_show(path)}: expected the path of a file")
    return path


def _files(value: Any) -> tuple[str, ...]:
    paths = _str_list(value)
    for path in paths:
        if not path:
            raise _Invalid("an empty path")
        _path(path)
    return tuple(paths)


@dataclass(frozen=True)
class Distribution:
    """Where the packages come from."""

    suite: str = field(default="bookworm", metadata=_help(
        "Debian release", _suite, schema=_pattern(_SUITE_RE)))
    mirror: str = field(default="http://deb.debian.org/debian", metadata=_help(
        "Debian archive that `SUITE` and `SUITE-updates` are installed from: one printable "
        "`http://`, `https://` or `file://` URL with a host", _mirror))
    architecture: str = field(default="amd64", metadata=_help(
        "Debian architecture; `amd64` only (the UKI stub, qemu and the module set are x86-64)",
        _architecture, schema={"enum": ["amd64"]}))
    # Debian's stable releases get their fixes in two more suites: an image from the release
    # alone misses every security update since its last point release.
    security_mirror: str = field(default=DEBIAN_SECURITY, metadata=_help(
        "archive of Debian's security updates, a URL as `mirror`: `SUITE-security` is "
        "installed from it (unstable and experimental have none); empty leaves security "
        "updates out",
        _security_mirror))
    updates: bool = field(default=True, metadata=_help(
        "install `SUITE-updates` from `mirror` too (stable updates: time zones, urgent "
        "fixes), as Debian's own installations do"))


@dataclass(frozen=True)
class Packages:
    """What is installed."""

    include: tuple[str, ...] = field(metadata=_help(
        "packages installed on top of `minbase`: Debian package names, each once", _packages,
        schema={"minItems": 1, "uniqueItems": True, "items": {
            "type": "string", **_pattern(_PACKAGE_RE)}}))


@dataclass(frozen=True)
class ImageOptions:
    """The root image and how it boots."""

    filesystem: Filesystem = field(default=Filesystem.EROFS, metadata=_help(
        "`erofs` (fast reads) or `squashfs` (smallest)"))
    compression: Compression | None = field(default=None, metadata=_help(
        "erofs: `lz4hc`, `lz4`; squashfs: `xz`, `zstd`",
        shown=", ".join(f"`{c[0]}` ({fs})" for fs, c in COMPRESSIONS.items())))

    secure_boot_key: str = field(default="", metadata=_help(
        "PEM private key that signs systemd-boot and the UKI for Secure Boot with `sbsign`, "
        "relative to the spec; set both it and `secure_boot_cert`, or neither", _path))
    secure_boot_cert: str = field(default="", metadata=_help(
        "the PEM certificate of `secure_boot_key`, relative to the spec", _path))

    @property
    def effective_compression(self) -> Compression:
        return self.compression or COMPRESSIONS[self.filesystem][0]


def _mib(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected a number of MiB, got {_tname(value)}")
        if not low <= value <= high:
            raise _Invalid(f"{value} is outside {low}..{high} MiB")
        return value
    return parse


@dataclass(frozen=True)
class Disk:
    """The disk image (`disk.img`): a GPT disk with an ESP, two slots of a root partition and
    its dm-verity partition each, and a state partition."""

    slot_size_mib: int = field(default=1024, metadata=_help(
        "size of each slot's root partition; its verity partition is sized to match. Leave "
        "room for later images: an update writes into the slot the disk already has", _mib(
            64, 65536), schema={"minimum": 64, "maximum": 65536}))
    esp_size_mib: int = field(default=256, metadata=_help(
        "size of the ESP (FAT32, so at least 64), which holds systemd-boot and the UKIs of "
        "both slots", _mib(64, 4096), schema={"minimum": 64, "maximum": 4096}))
    state_size_mib: int = field(default=64, metadata=_help(
        "size of the state partition (the SSH host key and machine-id, kept across boots and "
        "updates)", _mib(16, 65536), schema={"minimum": 16, "maximum": 65536}))


def _tries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 9:
        raise _Invalid(f"expected a number of tries from 1 to 9, got {_show(value)}")
    return value


def _bless_timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= 86400:
        raise _Invalid(f"expected seconds from 60 to 86400, got {_show(value)}")
    return value


@dataclass(frozen=True)
class BootOptions:
    """How an updated image proves itself: systemd-boot's boot counting, and a deadline."""

    tries: int = field(default=3, metadata=_help(
        "boots a new image gets (its UKI is installed as `NAME+TRIES.efi`); when a boot that "
        "panics or is not blessed in time has used the last one, systemd-boot starts the "
        "previous slot",
        _tries, schema={"minimum": 1, "maximum": 9}))
    bless_timeout: int = field(default=900, metadata=_help(
        "seconds a boot under assessment waits to be blessed (after its attestation "
        "passes) before it reboots itself, using up a try: a host no verifier reaches falls "
        "back too", _bless_timeout, schema={"minimum": 60, "maximum": 86400}))


@dataclass(frozen=True)
class Kernel:
    """The kernel's command line and the modules the image keeps."""

    cmdline: tuple[str, ...] = field(default=(), metadata=_help(
        "extra kernel arguments, each one plain token (`name` or `name=value`). Refused: what "
        "decides the root or its verification (`root`, `rootfstype`, `roothash`, `init`, "
        "`rdinit`, `initrd`, `ro`/`rw`, `dm-mod.create`, `hardhost.*`, …), shells and boot "
        "targets (`break`, `single`, `emergency`, `systemd.*` but logging, status and cgroup "
        f"layout), `panic` (the builder sets `panic={layout.PANIC_REBOOT_SECONDS}`, so a "
        "failed boot restarts and uses up its try), the LSM (`apparmor`, `security`, `lsm`, "
        "…) and `sysctl.*` (use `[sysctl]`)",
        _cmdline, schema={"items": {"type": "string", **_pattern(_CMDLINE_ARG_RE)}}))
    console: str = field(default="ttyS0", metadata=_help(
        "kernel console: a device and its options (`ttyS0`, `ttyS0,115200n8`, "
        "`uart8250,io,0x3f8,115200`)", _console, schema=_pattern(_CONSOLE_RE)))
    modules: tuple[str, ...] = field(default=DEFAULT_MODULES, metadata=_help(
        "modules kept by `prune.kernel_modules`, with everything they need from `modules.dep` "
        "and `modules.softdep`: names (`dm_verity`, globs like `virtio*`) or folders of "
        "`kernel/` ending in `/` (`net/netfilter/`); a pattern that matches no module is an "
        "error", _modules, schema={"items": {"type": "string", **_pattern(_MODULE_RE)}},
        shown="virtio, AHCI, NVMe, ext4, erofs, squashfs, overlay, dm-verity, netfilter, "
              "bridge, veth, vxlan, macvlan, ipvlan, tun, the ACPI power button and evdev, …"))


@dataclass(frozen=True)
class SSH:
    """The image's sshd."""

    permit_root_login: bool = field(default=False, metadata=_help(
        "let root log in, by key only (passwords are always refused)"))


@dataclass(frozen=True)
class Access:
    """Who logs in, and with which keys."""

    user: str = field(default="root", metadata=_help(
        "the login that receives the keys (created if not root); root needs "
        "`ssh.permit_root_login = true`", _user, schema=_pattern(_USER_RE)))
    authorized_keys: tuple[str, ...] = field(default=(), metadata=_help(
        "OpenSSH public key lines (`TYPE BASE64 [COMMENT]`, no options such as `command=`) "
        "baked into the image; `hardhost build --authorized-key FILE` adds more",
        _authorized_keys))


@dataclass(frozen=True)
class Prune:
    """What the image drops."""

    docs: bool = field(default=True, metadata=_help(
        "drop `/usr/share/doc` (copyright files stay) and info pages"))
    man: bool = field(default=True, metadata=_help("drop man pages"))
    locales: bool = field(default=True, metadata=_help("drop translations and locales"))
    package_manager: bool = field(default=True, metadata=_help(
        "remove apt and dpkg (dpkg-query stays), so the image cannot install packages"))
    kernel_modules: bool = field(default=True, metadata=_help(
        "remove every kernel module outside `kernel.modules` and its dependencies"))
    firmware: bool = field(default=True, metadata=_help(
        "remove firmware files no kept module asks for (`modinfo` `firmware=`)"))
    hwdb: bool = field(default=True, metadata=_help(
        "remove udev's hardware database `hwdb.bin` (13 MB: vendor and model names, "
        "input-device quirks), which a server's udev rules do not need"))
    paths: tuple[str, ...] = field(default=(), metadata=_help(
        "further files to remove, as globs relative to the root (`usr/bin/ctr`); one that "
        "matches nothing is an error", _prune_paths))


# The subordinate id range of userns-remap: above the first 65536 ids (system and login
# users), and ending inside 32 bits.
_SUBID_MIN = 65536
_SUBID_MAX = 2**32 - 65536
_COUNT_MAX = 2**31


def _subid(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_tname(value)}")
    if not _SUBID_MIN <= value <= _SUBID_MAX:
        raise _Invalid(f"{value} is outside {_SUBID_MIN}..{_SUBID_MAX}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _COUNT_MAX:
        raise _Invalid(f"expected a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Seccomp:
    """The containers' seccomp profiles."""

    default_profile: bool = field(default=True, metadata=_help(
        "install `seccomp/default.json` and make it the container runtime's default"))
    allow_keyring: bool = field(default=False, metadata=_help(
        "let that default profile allow `add_key`, `keyctl` and `request_key`"))
    profiles: tuple[str, ...] = field(default=(), metadata=_help(
        "generated `NAME.seccomp.json` files to install under `/usr/lib/hardhost/seccomp/` "
        "(relative to the spec's folder)", _files))


@dataclass(frozen=True)
class AppArmor:
    """The AppArmor profiles loaded at boot."""

    container_profile: bool = field(default=True, metadata=_help(
        "install the `hardhost-container-default` profile, loaded in enforce mode at boot"))
    profiles: tuple[str, ...] = field(default=(), metadata=_help(
        "generated AppArmor profiles to install and enforce, checked with `apparmor_parser` "
        "first (relative to the spec's folder)", _files))


@dataclass(frozen=True)
class SELinux:
    """SELinux policy modules shipped in the image."""

    modules: tuple[str, ...] = field(default=(), metadata=_help(
        "generated CIL modules to ship under `/usr/share/hardhost/selinux/`, compiled with "
        "`secilc` at build time (relative to the spec's folder)", _files))


@dataclass(frozen=True)
class UserNamespaces:
    """The user namespaces containers run in."""

    remap_user: str = field(default="dockremap", metadata=_help(
        "user whose `/etc/subuid` and `/etc/subgid` ranges containers run in (dockerd "
        "`userns-remap`); not root, not `access.user`", _remap_user,
        schema={**_pattern(_USER_RE), "not": {"const": "root"}}))
    subid_start: int = field(default=100000, metadata=_help(
        "first subordinate id of that range; `subid_start + subid_count` ends inside 32 bits",
        _subid, schema={"minimum": _SUBID_MIN, "maximum": _SUBID_MAX}))
    subid_count: int = field(default=65536, metadata=_help(
        "number of subordinate ids in that range", _count,
        schema={"minimum": 1, "maximum": _COUNT_MAX}))
    restrict_unprivileged: bool = field(default=True, metadata=_help(
        "`kernel.unprivileged_userns_clone = 0`: close user namespaces to ordinary users on "
        "the host, so only root makes them"))


def _validity(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected a number of days, got {_tname(value)}")
    if not 1 <= value <= MAX_VALIDITY_DAYS:
        # A verifier refuses a manifest valid for longer (hardhost.image.manifest).
        raise _Invalid(f"{value} is outside 1..{MAX_VALIDITY_DAYS} days")
    return value


@dataclass(frozen=True)
class ManifestOptions:
    """How the manifest is signed."""

    signing_key: str = field(default="", metadata=_help(
        "Ed25519 private key (PEM) that signs the manifest, relative to the spec's folder; "
        "`hardhost build --key FILE` overrides it", _path))
    validity_days: int = field(default=90, metadata=_help(
        "days until the signed manifest expires (verifiers refuse a longer validity)",
        _validity, schema={"minimum": 1, "maximum": MAX_VALIDITY_DAYS}))


# A [sysctl] table: `"kernel.sysrq" = 0`, or nested tables whose keys join with dots.
_SYSCTL_SCHEMA: Mapping[str, Any] = {
    "$anchor": "sysctls", "type": "object",
    "propertyNames": {"pattern": r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*(?![\s\S])"},
    "additionalProperties": {"anyOf": [
        {"type": "integer"},
        {"type": "string", **_pattern(_SYSCTL_VALUE_RE)},
        {"$ref": "#sysctls"},
    ]},
}


@dataclass(frozen=True)
class Spec:
    """A hardhost image spec (TOML): an immutable, hardened container host."""

    name: str = field(metadata=_help(
        "image name: lower-case letters, digits and `-`; the output folder is `OUTDIR/NAME`",
        _name, schema=_pattern(_NAME_RE)))
    packages: Packages
    version: str = field(default="1", metadata=_help(
        "the image's version: numbers joined by dots (`1`, `2.4`, `2026.11.30`), compared "
        "number by number; an update refuses an older one. In `/etc/os-release` as "
        "`IMAGE_VERSION` and in the signed manifest", _version,
        schema=_pattern(IMAGE_VERSION_RE)))
    description: str = field(default="", metadata=_help(
        "free text, one line of at most 200 characters", _description,
        schema={"maxLength": 200}))
    distribution: Distribution = Distribution()
    image: ImageOptions = ImageOptions()
    disk: Disk = Disk()
    boot: BootOptions = BootOptions()
    kernel: Kernel = Kernel()
    ssh: SSH = SSH()
    access: Access = Access()
    prune: Prune = Prune()
    manifest: ManifestOptions = ManifestOptions()
    seccomp: Seccomp = Seccomp()
    apparmor: AppArmor = AppArmor()
    selinux: SELinux = SELinux()
    userns: UserNamespaces = UserNamespaces()
    # A frozen dataclass, immutable like the sections above (ruff sees only same-module ones).
    containers: Containers = Containers()  # noqa: RUF009
    sysctl: tuple[tuple[str, str], ...] = field(default=(), metadata=_help(
        "sysctl overrides, merged over the hardened baseline: flat (`\"kernel.sysrq\" = 0`) "
        "or nested tables; values are integers, or printable words separated by single spaces",
        _sysctls, schema=_SYSCTL_SCHEMA, shown="`{}`"))
    # Not a key of the file: where it was read from, for errors and relative paths.
    source: str = field(default="", compare=False, metadata=_help("path the spec came from"))

    def digest(self) -> str:
        """sha256 over the canonical form of every setting that shapes the image (not the
        file's bytes or path, nor how the manifest is signed)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("manifest")
        # Specs from before [containers], or before its later keys or [distribution]'s,
        # keep their digest, and so their manifests.
        data["distribution"] = without_later_defaults(self.distribution,
                                                      _DISTRIBUTION_LATER_KEYS)
        containers = _containers.canonical(self.containers)
        if containers is None:
            data.pop("containers")
        else:
            data["containers"] = containers
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _validate(spec: Spec, path: str) -> None:
    allowed = COMPRESSIONS[spec.image.filesystem]
    if spec.image.compression is not None and spec.image.compression not in allowed:
        raise SpecError(path, "image.compression",
                        f"{spec.image.compression} is not available for "
                        f"{spec.image.filesystem} (use {' or '.join(allowed)})")
    if bool(spec.image.secure_boot_key) != bool(spec.image.secure_boot_cert):
        raise SpecError(path, "image.secure_boot_key",
                        "set both secure_boot_key and secure_boot_cert, or neither")
    if spec.access.user == spec.userns.remap_user:
        raise SpecError(path, "userns.remap_user",
                        f"{spec.userns.remap_user} is also access.user; containers must not "
                        "run as the login user: name another user")
    if spec.userns.subid_start + spec.userns.subid_count > 2**32:
        raise SpecError(path, "userns.subid_count",
                        f"subid_start + subid_count ends past {2**32 - 1}, the last id")
    if spec.access.user == "root" and not spec.ssh.permit_root_login:
        raise SpecError(path, "access.user",
                        "root cannot log in unless ssh.permit_root_login = true")
    _containers.validate(spec.containers, spec.packages.include, dict(spec.sysctl), path)


def parse_spec(text: str, path: str) -> Spec:
    """Parse spec `text` (read from `path`, which names the file in errors)."""
    table = parse_toml(text, path)
    spec = typing.cast(Spec, build(Spec, table, path))
    spec = dataclasses.replace(spec, source=path)
    _validate(spec, path)
    return spec


def spec_relative(spec: Spec, path: str) -> Path:
    """A path from the spec, relative to the folder the spec file is in."""
    return Path(spec.source).parent / Path(path).expanduser()


def load_spec(path: Path) -> Spec:
    """Read and parse the spec at `path`. A FIFO, a device, a folder, a file larger than
    `MAX_SPEC_BYTES` or one that is not UTF-8 is a `UsageError` naming the file."""
    text = read_text(path, what="spec", limit=MAX_SPEC_BYTES)
    return parse_spec(text, str(path))


def with_authorized_keys(spec: Spec, extra: tuple[str, ...], origin: str) -> Spec:
    """Return `spec` with key lines from the command line added to `[access]`."""
    try:
        keys = _authorized_keys(list(extra))
    except _Invalid as exc:
        raise SpecError(origin, "authorized key", str(exc)) from None
    merged = tuple(dict.fromkeys(spec.access.authorized_keys + keys))
    return dataclasses.replace(spec, access=dataclasses.replace(spec.access,
                                                                authorized_keys=merged))
