"""The normalised trace: what one recorded workload did, the input of every profile generator.

A trace is data: sorted, deduplicated, and strictly parsed from JSON. Traces from several
runs merge into one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import UsageError

TRACE_VERSION = 1
_SYSCALL = re.compile(r"^[a-z_][a-z0-9_]*$")
FILE_MODES = frozenset("rwaxm")  # read, write, append, execute, mmap-exec (AppArmor's letters)
FAMILIES = frozenset({"unix", "inet", "inet6", "netlink", "packet"})
NET_CALLS = frozenset({"connect", "bind", "listen"})


class TraceError(UsageError):
    """A trace file that is missing, truncated or malformed."""


@dataclass(frozen=True, order=True)
class FileAccess:
    path: str  # absolute
    mode: str  # letters from FILE_MODES, sorted, e.g. "r", "rw", "rx"


@dataclass(frozen=True, order=True)
class NetworkCall:
    call: str  # connect | bind | listen
    family: str  # unix | inet | inet6 | netlink | packet
    sock_type: str  # stream | dgram | raw | seqpacket
    address: str = ""  # IP address or unix socket path, "" when unknown
    port: int = 0


@dataclass(frozen=True, order=True)
class SocketUse:
    family: str
    sock_type: str


@dataclass(frozen=True)
class Trace:
    syscalls: tuple[str, ...] = ()
    # Argument values profiles condition on, as seen in the trace.
    clone_flags: tuple[int, ...] = ()
    personality: tuple[int, ...] = ()
    sockets: tuple[SocketUse, ...] = ()
    executables: tuple[str, ...] = ()
    files: tuple[FileAccess, ...] = ()
    network: tuple[NetworkCall, ...] = ()
    capabilities: tuple[str, ...] = ()
    version: int = field(default=TRACE_VERSION)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def file_modes(self) -> dict[str, str]:
        return {f.path: f.mode for f in self.files}


def normalise(*, syscalls: Iterable[str] = (), clone_flags: Iterable[int] = (),
              personality: Iterable[int] = (), sockets: Iterable[SocketUse] = (),
              executables: Iterable[str] = (), files: Iterable[FileAccess] = (),
              network: Iterable[NetworkCall] = (), capabilities: Iterable[str] = ()) -> Trace:
    """Build a trace: sorted, deduplicated, one entry per file with its modes merged."""
    modes: dict[str, set[str]] = {}
    for access in files:
        modes.setdefault(access.path, set()).update(access.mode)
    return Trace(
        syscalls=tuple(sorted(set(syscalls))),
        clone_flags=tuple(sorted(set(clone_flags))),
        personality=tuple(sorted(set(personality))),
        sockets=tuple(sorted(set(sockets))),
        executables=tuple(sorted(set(executables))),
        files=tuple(FileAccess(p, "".join(sorted(m))) for p, m in sorted(modes.items())),
        network=tuple(sorted(set(network))),
        capabilities=tuple(sorted(set(capabilities))),
    )


def merge(traces: Iterable[Trace]) -> Trace:
    items = list(traces)
    return normalise(
        syscalls=(s for t in items for s in t.syscalls),
        clone_flags=(c for t in items for c in t.clone_flags),
        personality=(p for t in items for p in t.personality),
        sockets=(s for t in items for s in t.sockets),
        executables=(e for t in items for e in t.executables),
        files=(f for t in items for f in t.files),
        network=(n for t in items for n in t.network),
        capabilities=(c for t in items for c in t.capabilities),
    )


def _fail(origin: str, key: str, problem: str) -> TraceError:
    return TraceError(f"{origin}: {key}: {problem}")


def _strings(data: dict[str, Any], key: str, origin: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(origin, key, "expected a list of strings")
    return value


def _ints(data: dict[str, Any], key: str, origin: str) -> list[int]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise _fail(origin, key, "expected a list of non-negative integers")
    return value


def _records(data: dict[str, Any], key: str, origin: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _fail(origin, key, "expected a list of tables")
    return value


def from_json(text: str, origin: str) -> Trace:
    """Parse a trace strictly; every problem names the file and the key."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TraceError(f"{origin}: not a JSON trace (truncated or corrupt): {exc}") from None
    if not isinstance(data, dict):
        raise TraceError(f"{origin}: not a JSON trace")
    known = {"syscalls", "clone_flags", "personality", "sockets", "executables", "files",
             "network", "capabilities", "version"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(origin, unknown[0], "unknown key")
    if data.get("version") != TRACE_VERSION:
        raise _fail(origin, "version", f"expected {TRACE_VERSION}, got {data.get('version')!r}")
    syscalls = _strings(data, "syscalls", origin)
    for name in syscalls:
        if not _SYSCALL.match(name):
            raise _fail(origin, "syscalls", f"{name!r} is not a syscall name")
    files = []
    for record in _records(data, "files", origin):
        path, mode = record.get("path"), record.get("mode")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise _fail(origin, "files", f"{path!r} is not an absolute path")
        if not isinstance(mode, str) or not mode or not set(mode) <= FILE_MODES:
            raise _fail(origin, "files", f"{path}: mode {mode!r} is not made of "
                                         f"{''.join(sorted(FILE_MODES))}")
        files.append(FileAccess(path, mode))
    network = []
    for record in _records(data, "network", origin):
        call, family = record.get("call"), record.get("family")
        if call not in NET_CALLS or family not in FAMILIES:
            raise _fail(origin, "network", f"unknown call or family in {record}")
        port = record.get("port", 0)
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise _fail(origin, "network", f"bad port {port!r}")
        network.append(NetworkCall(str(call), str(family), str(record.get("sock_type", "")),
                                   str(record.get("address", "")), port))
    sockets = []
    for record in _records(data, "sockets", origin):
        if record.get("family") not in FAMILIES:
            raise _fail(origin, "sockets", f"unknown family {record.get('family')!r}")
        sockets.append(SocketUse(str(record["family"]), str(record.get("sock_type", ""))))
    executables = _strings(data, "executables", origin)
    for path in executables:
        if not path.startswith("/"):
            raise _fail(origin, "executables", f"{path!r} is not an absolute path")
    return normalise(
        syscalls=syscalls, clone_flags=_ints(data, "clone_flags", origin),
        personality=_ints(data, "personality", origin), sockets=sockets,
        executables=executables, files=files, network=network,
        capabilities=_strings(data, "capabilities", origin))


def load(path: Path) -> Trace:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: the trace is not UTF-8") from None
    return from_json(text, str(path))
