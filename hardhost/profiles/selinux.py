"""SELinux: a least-privilege CIL module for one container, generated from its trace.

The module declares one process domain, `NAME_t`, and one type per object the trace touched:
each traced path gets its own type, labelled by an exact-match `filecon` (or a path-scoped
`genfscon` under /proc and /sys, which no file context reaches), and each traced port its own
`portcon`. Every allow rule targets one of those types, the domain itself, or the one base type
the kernel leaves no choice about (`node_t` for binds), and carries only the permissions the
trace implies. `validate` compiles a module for real with `secilc` against
`selinux_base.cil`, a minimal base shipped beside this file.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from importlib import resources
from pathlib import Path
from typing import TypeAlias

from hardhost.core.errors import CommandFailed, UsageError
from hardhost.core.run import run
from hardhost.profiles.trace import Trace

log = logging.getLogger(__name__)

BASE_POLICY = "selinux_base.cil"

# What the module borrows from the base policy, by name (selinux_base.cil declares each).
_USER, _DOMAIN_ROLE, _OBJECT_ROLE, _LEVEL = "system_u", "system_r", "object_r", "s0"
_PROC_ROOT, _SYSFS_ROOT, _NODE = "proc_t", "sysfs_t", "node_t"
_SELF = "self"

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SLUG_MAX = 40  # keeps generated type names readable; collisions get a hash suffix anyway

# Mode letters (AppArmor's, see profiles.trace.FILE_MODES) to permissions, per object class.
# execve opens the file read-only, so executing needs read and open as well as execute, and
# execute_no_trans because the program stays in the container's domain. "m" is an mmap with
# PROT_EXEC, which SELinux checks as execute (security/selinux/hooks.c: file_map_prot_check).
# SELinux checks O_APPEND opens as append, not write; granting it with "w" matches AppArmor,
# whose "w" includes "a", and adds nothing a writer could not do with lseek.
_FILE_PERMS: Mapping[str, Mapping[str, frozenset[str]]] = {
    "file": {
        "r": frozenset({"getattr", "open", "read"}),
        "w": frozenset({"append", "getattr", "open", "write"}),
        "a": frozenset({"append", "getattr", "open"}),
        "x": frozenset({"execute", "execute_no_trans", "getattr", "map", "open", "read"}),
        "m": frozenset({"execute", "map"}),
    },
    "chr_file": {
        "r": frozenset({"getattr", "open", "read"}),
        "w": frozenset({"append", "getattr", "open", "write"}),
        "a": frozenset({"append", "getattr", "open"}),
        "m": frozenset({"execute", "map"}),
    },
    # A directory is read to list it and written to add or remove entries; search is the
    # traversal both need.
    "dir": {
        "r": frozenset({"getattr", "open", "read", "search"}),
        "w": frozenset({"add_name", "getattr", "open", "remove_name", "search", "write"}),
        "a": frozenset({"add_name", "getattr", "open", "search", "write"}),
    },
}

# Character devices a container sees in /dev. Their class is chr_file, not file, and a
# file-class rule would not reach them.
_CHAR_DEVICES = frozenset({"/dev/console", "/dev/full", "/dev/null", "/dev/ptmx", "/dev/random",
                           "/dev/tty", "/dev/urandom", "/dev/zero"})

# The kernel's socket classes (security/selinux/hooks.c: socket_type_to_security_class).
# Unix seqpacket sockets are checked as unix_stream_socket. The trace does not record the
# netlink protocol; NETLINK_ROUTE is the one ordinary programs open (glibc's getaddrinfo and
# getifaddrs), and any other protocol is denied rather than guessed at.
_SOCKET_CLASSES: Mapping[tuple[str, str], str] = {
    ("inet", "stream"): "tcp_socket", ("inet6", "stream"): "tcp_socket",
    ("inet", "dgram"): "udp_socket", ("inet6", "dgram"): "udp_socket",
    ("inet", "raw"): "rawip_socket", ("inet6", "raw"): "rawip_socket",
    ("unix", "stream"): "unix_stream_socket", ("unix", "seqpacket"): "unix_stream_socket",
    ("unix", "dgram"): "unix_dgram_socket",
}
_ANY_TYPE_SOCKET_CLASSES: Mapping[str, str] = {
    "netlink": "netlink_route_socket", "packet": "packet_socket"}
_PORT_PROTOCOLS: Mapping[str, str] = {"tcp_socket": "tcp", "udp_socket": "udp"}
_NODE_BIND_CLASSES = frozenset({"tcp_socket", "udp_socket", "rawip_socket"})

# Socket permissions the recorded syscalls imply, on every socket class the trace used.
_SOCKET_SYSCALLS: Mapping[str, str] = {
    "read": "read", "readv": "read", "recvfrom": "read", "recvmsg": "read", "recvmmsg": "read",
    "write": "write", "writev": "write", "sendto": "write", "sendmsg": "write",
    "sendmmsg": "write", "sendfile": "write",
    "getsockopt": "getopt", "setsockopt": "setopt", "shutdown": "shutdown",
    "getsockname": "getattr", "getpeername": "getattr",
}
_ACCEPT_SYSCALLS = frozenset({"accept", "accept4"})

# Process permissions the recorded syscalls imply. Their target is always the domain itself:
# a container's processes see only each other, and all run in NAME_t. The trace has no signal
# numbers, so kill grants each signal permission (SIGKILL and SIGSTOP are checked apart from
# the rest, and signal 0 as signull).
_PROCESS_SYSCALLS: Mapping[str, frozenset[str]] = {
    "clone": frozenset({"fork"}), "clone3": frozenset({"fork"}), "fork": frozenset({"fork"}),
    "vfork": frozenset({"fork"}),
    "kill": frozenset({"sigchld", "sigkill", "signal", "signull", "sigstop"}),
    "tkill": frozenset({"sigchld", "sigkill", "signal", "signull", "sigstop"}),
    "tgkill": frozenset({"sigchld", "sigkill", "signal", "signull", "sigstop"}),
    "getpgid": frozenset({"getpgid"}), "setpgid": frozenset({"setpgid"}),
    "getsid": frozenset({"getsession"}),
    "sched_getscheduler": frozenset({"getsched"}), "sched_getparam": frozenset({"getsched"}),
    "sched_setscheduler": frozenset({"setsched"}), "sched_setparam": frozenset({"setsched"}),
    "setrlimit": frozenset({"setrlimit"}),
}

# Capability names per class (the kernel's classmap.h: COMMON_CAP_PERMS, COMMON_CAP2_PERMS).
_CAPABILITY = frozenset({
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap"})
_CAPABILITY2 = frozenset({
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore"})

# filecon's file-type keyword for each class a filecon label is put on.
_FILECON_KINDS: Mapping[str, str] = {
    "file": "file", "dir": "dir", "chr_file": "char", "sock_file": "socket"}

# secilc's generic trailers, which repeat that it failed without saying why.
_SECILC_NOISE = ("Failed to resolve AST", "Failed to compile cildb", "Failed to verify cil",
                 "Post process failed", "Failed to generate binary")


class ProfileError(UsageError):
    """A trace or name that cannot become a profile, or a profile its consumer rejects."""


@dataclass(frozen=True, order=True)
class _Label:
    """An object the module gives its own type: a path (filecon or genfscon) or a port."""

    kind: str  # "file" (filecon), "fs" (genfscon) or "port" (portcon)
    scope: str  # "" for files, the filesystem for genfscon, the protocol for ports
    key: str  # the absolute path, or the port number

    def slug(self) -> str:
        if self.kind == "file":
            text = self.key
        elif self.kind == "fs":
            text = self.scope + self.key  # "proc" + "/cpuinfo"
        else:
            text = f"{self.scope}_{self.key}"  # "tcp_8080"
        slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:_SLUG_MAX].rstrip("_")
        return slug or "root"


# A type the base declares (or "self"), or a label this module declares a type for.
_Target: TypeAlias = str | _Label


def _base_policy() -> str:
    return resources.files("hardhost.profiles").joinpath(BASE_POLICY).read_text(encoding="utf-8")


def _check_name(name: str) -> str:
    lowered = name.lower()
    if not _NAME.fullmatch(lowered):
        raise ProfileError(
            f"SELinux profile name {name!r}: use a letter, then letters, digits or '_' "
            "(it becomes the type NAME_t, and SELinux identifiers allow nothing else)")
    if re.search(rf"^\(type {lowered}_t\)$", _base_policy(), re.MULTILINE):
        raise ProfileError(f"SELinux profile name {name!r}: the base policy already declares "
                           f"{lowered}_t; choose another name")
    return lowered


def _check_path(path: str) -> None:
    for bad, what in (('"', "a double quote"), ("\n", "a newline"), ("\0", "a NUL byte")):
        if bad in path:
            # CIL strings are double-quoted with no escapes, and file_contexts is line-based:
            # these characters cannot be carried into the policy safely.
            raise ProfileError(f"{path!r}: contains {what}, which a CIL string cannot hold; "
                               "drop it from the trace")
    body = path[:-1] if path.endswith("/") else path  # a trailing "/" marks a directory
    if not path.startswith("/") or any(p in ("", ".", "..") for p in body.split("/")[1:]):
        raise ProfileError(f"{path!r}: not a canonical absolute path; file contexts match "
                           "only canonical paths, so record the resolved path")


def _regex(path: str) -> str:
    """An exact-match file-context regex for `path` (PCRE, matched bytewise by libselinux)."""
    out = []
    for byte in path.encode():
        char = chr(byte)
        if char.isascii() and (char.isalnum() or char in "/_-"):
            out.append(char)
        elif 0x21 <= byte <= 0x7E:
            out.append("\\" + char)  # a backslashed non-alphanumeric is always literal in PCRE
        else:
            # Spaces would split the file_contexts line; other bytes are written out so that
            # the policy text stays printable ASCII.
            out.append(f"\\x{byte:02x}")
    return "".join(out)


class _Module:
    """The rules and labels of one module while it is being derived from a trace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.domain = f"{name}_t"
        self.rules: dict[tuple[_Target, str], set[str]] = {}
        self.label_classes: dict[_Label, set[str]] = {}

    def allow(self, target: _Target, cls: str, perms: Iterable[str]) -> None:
        granted = set(perms)
        if not granted:
            return
        self.rules.setdefault((target, cls), set()).update(granted)
        if isinstance(target, _Label):
            self.label_classes.setdefault(target, set()).add(cls)

    def path_target(self, path: str) -> tuple[_Target, str]:
        """The type and class an access to `path` is checked against. A trailing "/" marks a
        directory, as in AppArmor."""
        _check_path(path)
        is_dir = path.endswith("/")
        path = path.rstrip("/") or "/"
        cls = "dir" if is_dir else "file"
        fs, _, rest = path[1:].partition("/")
        if fs in ("proc", "sys"):
            if not rest:
                return (_PROC_ROOT if fs == "proc" else _SYSFS_ROOT), "dir"
            head = rest.split("/")[0]
            if fs == "proc" and (head in ("self", "thread-self") or re.fullmatch("[0-9]+", head)):
                # The kernel labels a process's /proc entries with the process's own context.
                return _SELF, cls
            if not re.fullmatch(r"[A-Za-z0-9/_.:@+,=-]+", rest):
                raise ProfileError(f"{path!r}: genfscon paths are literal strings; this one "
                                   "has characters hardhost does not pass through")
            # /proc and /sys have no extended attributes, so no file context reaches them;
            # genfscon labels by path prefix instead.
            return _Label("fs", "proc" if fs == "proc" else "sysfs", "/" + rest), cls
        if path in _CHAR_DEVICES or path.startswith("/dev/pts/"):
            cls = "chr_file"
        return _Label("file", "", path), cls

    def file_access(self, path: str, mode: str, *, entrypoint: bool) -> None:
        target, cls = self.path_target(path)
        perms: set[str] = set()
        for letter in mode:
            allowed = _FILE_PERMS[cls].get(letter)
            if allowed is None:
                raise ProfileError(f"{path}: mode {letter!r} does not apply to a {cls}")
            perms |= allowed
        if entrypoint:
            # The runtime execs the container's first program straight into NAME_t, which the
            # kernel allows only from a file the domain may enter through.
            perms.add("entrypoint")
        self.allow(target, cls, perms)

    def render(self) -> str:
        names = _type_names(self.name, self.label_classes)

        def name_of(target: _Target) -> str:
            return names[target] if isinstance(target, _Label) else target

        lines = [
            f'; SELinux policy module "{self.name}", generated by hardhost from a recorded trace.',
            "; One domain, one type per object the trace touched, and only the permissions it",
            "; used. Compiled for real by secilc with profiles/selinux_base.cil.",
            "",
            "; The container's process domain.",
            f"(type {self.domain})",
            f"(roletype {_DOMAIN_ROLE} {self.domain})",
        ]
        if names:
            lines += ["", "; One type per traced path or port, and the statement that labels it."]
        for label in sorted(names, key=names.__getitem__):
            type_name = names[label]
            context = f"({_USER} {_OBJECT_ROLE} {type_name} (({_LEVEL}) ({_LEVEL})))"
            lines += [f"(type {type_name})", f"(roletype {_OBJECT_ROLE} {type_name})"]
            if label.kind == "file":
                classes = self.label_classes[label]
                # One path, one label: a path used as two classes is labelled for any.
                kind = _FILECON_KINDS[next(iter(classes))] if len(classes) == 1 else "any"
                lines.append(f'(filecon "{_regex(label.key)}" {kind} {context})')
            elif label.kind == "fs":
                lines.append(f'(genfscon {label.scope} "{label.key}" {context})')
            else:
                lines.append(f"(portcon {label.scope} {label.key} {context})")
        lines += ["", "; What the trace did, and nothing more."]
        rules = sorted((name_of(target), cls, " ".join(sorted(perms)))
                       for (target, cls), perms in self.rules.items())
        lines += [f"(allow {self.domain} {target} ({cls} ({perms})))"
                  for target, cls, perms in rules]
        return "\n".join(lines) + "\n"


def _type_names(name: str, labels: Iterable[_Label]) -> dict[_Label, str]:
    """Readable, unique type names; labels whose slugs collide each get a hash suffix."""
    by_base: dict[str, list[_Label]] = {}
    for label in labels:
        by_base.setdefault(f"{name}_{label.kind}_{label.slug()}", []).append(label)
    names = {}
    for base, group in by_base.items():
        for label in group:
            if len(group) == 1:
                names[label] = f"{base}_t"
            else:
                digest = sha256(f"{label.scope}:{label.key}".encode()).hexdigest()[:8]
                names[label] = f"{base}_{digest}_t"
    return names


def _socket_class(family: str, sock_type: str) -> str:
    cls = _ANY_TYPE_SOCKET_CLASSES.get(family) or _SOCKET_CLASSES.get((family, sock_type))
    if cls is None:
        raise ProfileError(f"socket {family}/{sock_type or '?'}: no SELinux socket class for "
                           "it; the trace must record the socket type (stream, dgram, raw "
                           "or seqpacket)")
    return cls


def _network(module: _Module, trace: Trace, caps: set[str]) -> None:
    syscalls = set(trace.syscalls)
    used: dict[str, set[str]] = {}
    for use in trace.sockets:
        used.setdefault(_socket_class(use.family, use.sock_type), set())
    for call in trace.network:
        cls = _socket_class(call.family, call.sock_type)
        perms = used.setdefault(cls, set())
        perms.add(call.call)
        if call.call == "listen" and syscalls & _ACCEPT_SYSCALLS:
            perms.add("accept")
        protocol = _PORT_PROTOCOLS.get(cls)
        if call.call == "bind" and cls in _NODE_BIND_CLASSES:
            # Addresses are not labelled in the base, so every bind is to node_t.
            module.allow(_NODE, cls, {"node_bind"})
        if call.call == "bind" and protocol and call.port:
            # Port 0 asks for an ephemeral port, which the kernel does not check.
            module.allow(_Label("port", protocol, str(call.port)), cls, {"name_bind"})
        if call.call == "connect" and cls == "tcp_socket":
            if not call.port:
                raise ProfileError(f"tcp connect to {call.address or 'an unknown address'} "
                                   "with no port: SELinux checks the port, so the trace must "
                                   "record it")
            module.allow(_Label("port", "tcp", str(call.port)), cls, {"name_connect"})
        if call.family == "unix" and call.call == "connect":
            if call.address.startswith("/"):
                # Connecting to a named socket needs write on its socket file.
                target, _ = module.path_target(call.address)
                module.allow(target, "sock_file", {"write"})
            # The peer is a process in the container, hence in this same domain.
            if cls == "unix_stream_socket":
                module.allow(_SELF, cls, {"connectto"})
            else:
                module.allow(_SELF, cls, {"sendto"})
    io = {perm for syscall, perm in _SOCKET_SYSCALLS.items() if syscall in syscalls}
    for cls, perms in used.items():
        granted = {"create"} | perms | io
        if cls == "netlink_route_socket" and "write" in granted:
            # Each route message is checked too: queries as nlmsg_read, and changes as
            # nlmsg_write, which the kernel refuses without CAP_NET_ADMIN anyway.
            granted.add("nlmsg_read")
            if "net_admin" in caps:
                granted.add("nlmsg_write")
        module.allow(_SELF, cls, granted)


def _capabilities(trace: Trace) -> set[str]:
    names = set()
    for raw in trace.capabilities:
        name = raw.lower().removeprefix("cap_")
        if name not in _CAPABILITY | _CAPABILITY2:
            raise ProfileError(f"capability {raw!r} is unknown to SELinux; use a name from "
                               "capabilities(7), e.g. CAP_NET_BIND_SERVICE")
        names.add(name)
    return names


def generate(trace: Trace, name: str) -> str:
    """The CIL module for the container `name` that allows what `trace` did, and no more."""
    module = _Module(_check_name(name))
    modes = dict(trace.file_modes())
    for path in trace.executables:
        modes[path] = "".join(sorted(set(modes.get(path, "")) | {"x"}))
    executables = set(trace.executables)
    for path, mode in sorted(modes.items()):
        module.file_access(path, mode, entrypoint=path in executables)
    caps = _capabilities(trace)
    _network(module, trace, caps)
    # Under a user namespace (hardhost's default, userns-remap) the kernel checks cap_userns
    # and cap2_userns instead (security/selinux/hooks.c: cred_has_capability); which one
    # applies is the runtime's choice, not the trace's, so both carry the same names.
    for classes, names in ((("capability", "cap_userns"), caps & _CAPABILITY),
                           (("capability2", "cap2_userns"), caps & _CAPABILITY2)):
        for cls in classes:
            module.allow(_SELF, cls, names)
    process = set[str]().union(*(_PROCESS_SYSCALLS.get(s, frozenset()) for s in trace.syscalls))
    module.allow(_SELF, "process", process)
    return module.render()


def _reason(stderr: str, cil_text: str) -> str:
    """secilc's specific complaint, with the module statement it points at."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_SECILC_NOISE)] or lines
    reason = " | ".join(specific) or "no reason given"
    # secilc cites "module.cil:LINE" when resolving and "line LINE of module.cil" when parsing.
    where = re.search(r"module\.cil:(\d+)|line (\d+) of module\.cil", reason)
    source = cil_text.splitlines()
    line = int(where.group(1) or where.group(2)) if where else 0
    if 0 < line <= len(source):
        reason += f" (the statement: {source[line - 1].strip()})"
    return reason


def validate(cil_text: str) -> None:
    """Compile `cil_text` with secilc against the shipped base policy; raise ProfileError if
    secilc rejects it."""
    base = _base_policy()
    with tempfile.TemporaryDirectory(prefix="hardhost-selinux-") as tmp:
        work = Path(tmp)
        (work / "base.cil").write_text(base, encoding="utf-8")
        (work / "module.cil").write_text(cil_text, encoding="utf-8")
        log.debug("secilc: compiling the module with %s", BASE_POLICY)
        try:
            # Relative names and cwd: secilc's messages then cite "module.cil:LINE", and its
            # default outputs (policy.33, file_contexts) land in the temporary directory.
            run(["secilc", "--output", "policy", "--filecontext", "file_contexts",
                 "base.cil", "module.cil"], cwd=work, timeout=120)
        except CommandFailed as exc:
            raise ProfileError("SELinux module rejected by secilc: "
                               f"{_reason(exc.stderr, cil_text)}") from None
