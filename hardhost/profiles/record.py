"""Record a workload under `strace -f` and normalise what it did into a `Trace`.

strace runs with raw constants (`-X raw`) so flags parse as numbers, and with `-yy` so file
descriptors carry their paths and socket endpoints. Only successful opens count as file use:
failed probes (a library search path, say) are not what the workload needs.
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hardhost.core.errors import CommandFailed
from hardhost.core.run import run
from hardhost.profiles.trace import FileAccess, NetworkCall, SocketUse, Trace, TraceError, normalise

_LINE = re.compile(r"^(?P<pid>\d+) +(?:(?P<name>[a-z_][a-z0-9_]*)\((?P<args>.*)"
                   r"|<\.\.\. (?P<rname>[a-z_][a-z0-9_]*) resumed>(?P<rest>.*))$")
_RESULT = re.compile(r"\)\s+=\s+(?P<ret>-?(?:0x[0-9a-f]+|\d+|\?))(?:<(?P<path>[^>]*)>)?"
                     r"(?:\s.*)?$")
_FD_PATH = re.compile(r"^-?\d+<(?P<path>/[^>]*)>$")
_FD_SOCKET = re.compile(r"^\d+<(?P<proto>[A-Za-z0-9-]+):\[(?P<detail>[^\]]*)\]>$")

FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet"}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
_PROTO_TYPES = {"TCP": ("inet", "stream"), "TCPv6": ("inet6", "stream"),
                "UDP": ("inet", "dgram"), "UDPv6": ("inet6", "dgram"),
                "UNIX-STREAM": ("unix", "stream"), "UNIX-DGRAM": ("unix", "dgram"),
                "UNIX-SEQPACKET": ("unix", "seqpacket"), "NETLINK": ("netlink", "dgram")}
O_ACCMODE, O_WRONLY, O_RDWR, O_CREAT, O_APPEND, O_TRUNC = 3, 1, 2, 0o100, 0o2000, 0o1000
O_DIRECTORY = 0o200000
PROT_EXEC = 4
# Capabilities a syscall needs whenever it succeeds for an unprivileged container.
_CAPABILITY_CALLS = {
    "chown": "chown", "fchown": "chown", "lchown": "chown", "fchownat": "chown",
    "setuid": "setuid", "setresuid": "setuid", "setreuid": "setuid",
    "setgid": "setgid", "setresgid": "setgid", "setregid": "setgid", "setgroups": "setgid",
    "mount": "sys_admin", "umount2": "sys_admin", "pivot_root": "sys_admin",
    "chroot": "sys_chroot", "mknod": "mknod", "mknodat": "mknod",
}


def split_args(text: str) -> list[str]:
    """Split strace's argument text at top-level commas (quotes, brackets, fd tags kept)."""
    args, current, depth, quoted, escaped = [], [], 0, False, False
    for char in text:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
            if depth < 0:
                break  # the closing parenthesis of the call
        elif char == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    tail = "".join(current).strip()
    if tail:
        args.append(tail)
    return args


def c_string(arg: str) -> str | None:
    """Decode a quoted strace string; None if it is not one or strace truncated it."""
    if len(arg) < 2 or not arg.startswith('"') or not arg.endswith('"'):
        return None
    raw, _ = codecs.escape_decode(arg[1:-1].encode())
    return bytes(raw).decode("utf-8", errors="surrogateescape")


def number(arg: str) -> int | None:
    """Parse `0x1|0x80000` or `17` style raw constants."""
    total = 0
    for part in arg.split("|"):
        try:
            total |= int(part.strip(), 0)
        except ValueError:
            return None
    return total


def _fd_path(arg: str) -> str | None:
    match = _FD_PATH.match(arg)
    return match.group("path") if match else None


def _hex_bytes(arg: str) -> bytes | None:
    text = c_string(arg.split("=", 1)[1]) if "=" in arg else None
    return text.encode("utf-8", errors="surrogateescape") if text is not None else None


@dataclass
class _Collector:
    syscalls: set[str] = field(default_factory=set)
    clone_flags: set[int] = field(default_factory=set)
    personality: set[int] = field(default_factory=set)
    sockets: set[SocketUse] = field(default_factory=set)
    executables: set[str] = field(default_factory=set)
    files: list[FileAccess] = field(default_factory=list)
    network: set[NetworkCall] = field(default_factory=set)
    capabilities: set[str] = field(default_factory=set)
    # The path strace printed for a returned file descriptor: the one the kernel resolved,
    # symlinks and all, which is what AppArmor checks.
    _ret_path: str | None = None

    def trace(self) -> Trace:
        return normalise(syscalls=self.syscalls, clone_flags=self.clone_flags,
                         personality=self.personality, sockets=self.sockets,
                         executables=self.executables, files=self.files,
                         network=self.network, capabilities=self.capabilities)

    def call(self, name: str, args: list[str], ret: int | None,
             ret_path: str | None = None) -> None:
        self.syscalls.add(name)
        self._ret_path = ret_path
        ok = ret is not None and ret >= 0
        if ok and name in _CAPABILITY_CALLS:
            self.capabilities.add(_CAPABILITY_CALLS[name])
        handler = getattr(self, f"_on_{name}", None)
        if handler is not None and args:
            handler(args, ok)

    def _on_execve(self, args: list[str], ok: bool) -> None:
        path = c_string(args[0])
        if ok and path and path.startswith("/"):
            # The kernel (and AppArmor) sees the binary behind any symlink; recording runs
            # where the workload runs, so resolving here gives that path.
            self.executables.add(os.path.realpath(path))

    def _open(self, dirfd: str | None, path_arg: str, flags: int | None, ok: bool) -> None:
        path = c_string(path_arg)
        if not ok or path is None or flags is None:
            return
        if self._ret_path and self._ret_path.startswith("/"):
            path = self._ret_path
        elif not path.startswith("/"):
            base = _fd_path(dirfd) if dirfd else None
            if base is None:
                return
            path = os.path.join(base, path)
        path = os.path.normpath(path)
        if flags & O_DIRECTORY and path != "/":
            path += "/"  # AppArmor names a directory with its trailing slash
        access = flags & O_ACCMODE
        mode = "r" if access != O_WRONLY else ""
        if access in (O_WRONLY, O_RDWR) or flags & (O_CREAT | O_TRUNC):
            mode += "a" if flags & O_APPEND and not flags & O_TRUNC else "w"
        self.files.append(FileAccess(path, mode))

    def _on_open(self, args: list[str], ok: bool) -> None:
        if len(args) >= 2:
            self._open(None, args[0], number(args[1]), ok)

    def _on_creat(self, args: list[str], ok: bool) -> None:
        self._open(None, args[0], O_CREAT | O_WRONLY | O_TRUNC, ok)

    def _on_openat(self, args: list[str], ok: bool) -> None:
        if len(args) >= 3:
            self._open(args[0], args[1], number(args[2]), ok)

    def _on_openat2(self, args: list[str], ok: bool) -> None:
        flags = re.search(r"flags=([0-9a-fx|]+)", args[2]) if len(args) >= 3 else None
        if flags:
            self._open(args[0], args[1], number(flags.group(1)), ok)

    def _on_mmap(self, args: list[str], ok: bool) -> None:
        if len(args) >= 5 and ok:
            prot, path = number(args[2]), _fd_path(args[4])
            if prot is not None and prot & PROT_EXEC and path:
                self.files.append(FileAccess(os.path.normpath(path), "m"))

    def _on_clone(self, args: list[str], ok: bool) -> None:
        for arg in args:
            if arg.startswith("flags="):
                value = number(arg.removeprefix("flags="))
                if value is not None:
                    self.clone_flags.add(value)

    def _on_clone3(self, args: list[str], ok: bool) -> None:
        found = re.search(r"flags=([0-9a-fx|]+)", args[0])
        if found and (value := number(found.group(1))) is not None:
            self.clone_flags.add(value)

    def _on_personality(self, args: list[str], ok: bool) -> None:
        value = number(args[0])
        if value is not None:
            self.personality.add(value & 0xFFFFFFFF)

    def _on_socket(self, args: list[str], ok: bool) -> None:
        family, kind = number(args[0]), number(args[1]) if len(args) > 1 else None
        if family in FAMILIES and kind is not None:
            sock_type = SOCK_TYPES.get(kind & 0xF, str(kind & 0xF))
            self.sockets.add(SocketUse(FAMILIES[family], sock_type))
            if sock_type == "raw" or FAMILIES[family] == "packet":
                self.capabilities.add("net_raw")

    def _address(self, call: str, args: list[str]) -> None:
        socket = _FD_SOCKET.match(args[0])
        family_type = _PROTO_TYPES.get(socket.group("proto")) if socket else None
        if len(args) < 2 or family_type is None:
            return
        family, sock_type = family_type
        fields = dict(part.split("=", 1) for part in split_args(args[1].strip("{}"))
                      if "=" in part)
        address, port = "", 0
        if family == "unix":
            address = c_string(fields.get("sun_path", "")) or ""
        else:
            raw_port = _hex_bytes(f"p={fields.get('sin_port') or fields.get('sin6_port', '')}")
            raw_addr = _hex_bytes(f"a={fields.get('sin_addr') or fields.get('sin6_addr', '')}")
            if raw_port is not None and len(raw_port) == 2:
                port = int.from_bytes(raw_port, "big")
            if raw_addr is not None and len(raw_addr) in (4, 16):
                address = str(ipaddress.ip_address(raw_addr))
        if call == "bind" and 0 < port < 1024:
            self.capabilities.add("net_bind_service")
        self.network.add(NetworkCall(call, family, sock_type, address, port))

    def _on_connect(self, args: list[str], ok: bool) -> None:
        self._address("connect", args)

    def _on_bind(self, args: list[str], ok: bool) -> None:
        self._address("bind", args)

    def _on_listen(self, args: list[str], ok: bool) -> None:
        socket = _FD_SOCKET.match(args[0])
        family_type = _PROTO_TYPES.get(socket.group("proto")) if socket else None
        if socket is None or family_type is None:
            return
        host, _, port = socket.group("detail").rpartition(":")
        self.network.add(NetworkCall("listen", *family_type, host.strip("[]"),
                                     int(port) if port.isdigit() else 0))


def parse_strace(lines: Iterable[str]) -> Trace:
    """Normalise `strace -f -X raw -yy` output into a trace."""
    collector = _Collector()
    pending: dict[str, tuple[str, str]] = {}
    for line in lines:
        match = _LINE.match(line.rstrip("\n"))
        if not match:
            continue  # signals, exits and other notes
        pid = match.group("pid")
        if match.group("name"):
            name, text = match.group("name"), match.group("args")
            if text.endswith("<unfinished ...>"):
                pending[pid] = (name, text.removesuffix("<unfinished ...>"))
                continue
        else:
            name = match.group("rname")
            started, head = pending.pop(pid, (name, ""))
            text = head + match.group("rest")
            name = started
        result = _RESULT.search(text)
        ret, ret_path = None, None
        if result and result.group("ret") != "?":
            ret = int(result.group("ret"), 0)
            ret_path = result.group("path")
        collector.call(name, split_args(text), ret, ret_path)
    return collector.trace()


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        yield from f


def record(argv: Sequence[str], *, timeout: float | None = None) -> tuple[Trace, int]:
    """Run `argv` under strace and return its trace and exit status."""
    if not argv:
        raise TraceError("profile record: give the command to record after --")
    with tempfile.TemporaryDirectory(prefix="hardhost-trace-") as scratch:
        log = Path(scratch) / "strace.log"
        try:
            proc = run(["strace", "-f", "-qq", "-X", "raw", "-yy", "-s", "4096",
                        "-e", "signal=none", "-o", log, "--", *argv],
                       check=False, timeout=timeout)
        except CommandFailed as exc:
            raise TraceError(f"profile record: {exc}") from None
        if not log.exists():
            raise TraceError(f"profile record: strace wrote no trace: "
                             f"{proc.stderr.decode(errors='replace').strip()[:200]}")
        return parse_strace(_lines(log)), proc.returncode
