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

from hardhost.core.errors import UsageError
from hardhost.core.inputs import LARGE_FILE, decode_json, read_text

TRACE_VERSION = 1
_SYSCALL = re.compile(r"^[a-z_][a-z0-9_]*$")
FILE_MODES = frozenset("rwaxm")  # read, write, append, execute, mmap-exec (AppArmor's letters)
FAMILIES = frozenset({"unix", "inet", "inet6", "netlink", "packet"})
NET_CALLS = frozenset({"connect", "bind", "listen"})
# The recorder names the common socket types and writes others (rdm, packet) as numbers.
SOCK_TYPES = frozenset({"", "stream", "dgram", "raw", "seqpacket", *map(str, range(16))})
# The most entries a trace may hold in any one list. A long recording of a busy service
# opens some ten thousand distinct files; a trace beyond this is not a recording but an
# attempt to make every generator and `profile check` run for hours.
MAX_ENTRIES = 100_000
MAX_PATH = 4096  # PATH_MAX
MAX_TEXT = 256  # syscall and capability names, socket addresses


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


def _list(data: dict[str, Any], key: str, origin: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise _fail(origin, key, "expected a list")
    if len(value) > MAX_ENTRIES:
        raise _fail(origin, key, f"more than {MAX_ENTRIES} entries")
    return value


def _strings(data: dict[str, Any], key: str, origin: str, limit: int = MAX_TEXT) -> list[str]:
    value = _list(data, key, origin)
    for item in value:
        if not isinstance(item, str):
            raise _fail(origin, key, "expected a list of strings")
        if len(item) > limit or "\0" in item:
            raise _fail(origin, key, f"{item[:40]!r}…: longer than {limit} characters or "
                                     "holds a NUL")
    return value


def _ints(data: dict[str, Any], key: str, origin: str) -> list[int]:
    value = _list(data, key, origin)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64
               for v in value):
        raise _fail(origin, key, "expected a list of integers in 0..2**64-1")
    return value


def _records(data: dict[str, Any], key: str, origin: str,
             fields: frozenset[str]) -> list[dict[str, Any]]:
    value = _list(data, key, origin)
    for record in value:
        if not isinstance(record, dict):
            raise _fail(origin, key, "expected a list of tables")
        unknown = sorted(set(record) - fields)
        if unknown:
            raise _fail(origin, key, f"unknown field {unknown[0][:40]!r}")
    return value


def _text(record: dict[str, Any], name: str, key: str, origin: str, allowed: frozenset[str]
          | None = None, limit: int = MAX_TEXT) -> str:
    value = record.get(name, "")
    if not isinstance(value, str) or len(value) > limit or "\0" in value or (
            allowed is not None and value not in allowed):
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        raise _fail(origin, key, f"{name} {shown} is not valid")
    return value


def from_json(text: str, origin: str) -> Trace:
    """Parse a trace strictly; every problem names the file and the key."""
    data = decode_json(text, origin=origin, error=TraceError)
    if not isinstance(data, dict):
        raise TraceError(f"{origin}: not a JSON trace")
    known = {"syscalls", "clone_flags", "personality", "sockets", "executables", "files",
             "network", "capabilities", "version"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(origin, unknown[0][:40], "unknown key")
    version = data.get("version")
    if version != TRACE_VERSION or isinstance(version, bool):
        shown = version if isinstance(version, int) else type(version).__name__
        raise _fail(origin, "version", f"expected {TRACE_VERSION}, got {shown!r}")
    syscalls = _strings(data, "syscalls", origin)
    for name in syscalls:
        if not _SYSCALL.match(name):
            raise _fail(origin, "syscalls", f"{name[:40]!r} is not a syscall name")
    files = []
    for record in _records(data, "files", origin, frozenset({"path", "mode"})):
        path = _text(record, "path", "files", origin, limit=MAX_PATH)
        if not path.startswith("/"):
            raise _fail(origin, "files", f"{path[:40]!r} is not an absolute path")
        mode = _text(record, "mode", "files", origin)
        if not mode or not set(mode) <= FILE_MODES:
            raise _fail(origin, "files", f"{path[:80]}: mode {mode[:40]!r} is not made of "
                                         f"{''.join(sorted(FILE_MODES))}")
        files.append(FileAccess(path, mode))
    network = []
    for record in _records(data, "network", origin,
                           frozenset({"call", "family", "sock_type", "address", "port"})):
        port = record.get("port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise _fail(origin, "network", f"bad port {str(port)[:20]!r}")
        network.append(NetworkCall(
            _text(record, "call", "network", origin, NET_CALLS),
            _text(record, "family", "network", origin, FAMILIES),
            _text(record, "sock_type", "network", origin, SOCK_TYPES),
            _text(record, "address", "network", origin, limit=MAX_PATH), port))
    sockets = []
    for record in _records(data, "sockets", origin, frozenset({"family", "sock_type"})):
        sockets.append(SocketUse(_text(record, "family", "sockets", origin, FAMILIES),
                                 _text(record, "sock_type", "sockets", origin, SOCK_TYPES)))
    executables = _strings(data, "executables", origin, limit=MAX_PATH)
    for path in executables:
        if not path.startswith("/"):
            raise _fail(origin, "executables", f"{path[:40]!r} is not an absolute path")
    return normalise(
        syscalls=syscalls, clone_flags=_ints(data, "clone_flags", origin),
        personality=_ints(data, "personality", origin), sockets=sockets,
        executables=executables, files=files, network=network,
        capabilities=_strings(data, "capabilities", origin))


def load(path: Path) -> Trace:
    """Read and parse the trace at `path`: at most `LARGE_FILE` bytes and `MAX_ENTRIES`
    entries a list; a FIFO, a device or a folder is refused without waiting."""
    return from_json(read_text(path, what="trace", limit=LARGE_FILE, error=TraceError),
                     str(path))
