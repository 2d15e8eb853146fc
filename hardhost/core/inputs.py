"""Reading the files a user names: bounded, never blocking, and strictly typed.

Any path on a command line may be a FIFO, a device such as /dev/zero, a directory or a
huge file. Each is refused in one line before a byte is read: a FIFO is opened without
blocking and refused, a device or directory is not a regular file, and a regular file is
read up to its limit and no further. JSON is decoded with its nesting bounded, so a
deeply nested document is an error instead of a RecursionError.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardhost.core.errors import HardhostError, UsageError

# Limits for the files hardhost reads. Generous for real inputs, far below what would
# exhaust memory. Each caller may pass its own.
SMALL_FILE = 1 << 20  # keys, known_hosts of a few thousand hosts, specs, manifests
LARGE_FILE = 64 << 20  # traces of long recordings, SBOM-sized JSON


def read_bytes(path: Path, *, what: str, limit: int = SMALL_FILE,
               error: type[HardhostError] = UsageError) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them.

    Raises `error` (a `UsageError` by default) naming `what` and the path for a missing or
    unreadable file, a FIFO, a device, a directory, or a file larger than `limit`.
    """
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: the {what} is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", buffering=0) as f:
        chunks, size = [], 0
        try:
            while size <= limit:
                chunk = f.read(min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise error(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if size > limit:
        raise error(f"{path}: the {what} is larger than {limit} bytes")
    return b"".join(chunks)


def read_text(path: Path, *, what: str, limit: int = SMALL_FILE,
              error: type[HardhostError] = UsageError) -> str:
    """`read_bytes`, decoded as UTF-8 (an undecodable file is `error` too)."""
    data = read_bytes(path, what=what, limit=limit, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None


def decode_json(text: str | bytes, *, origin: str,
                error: type[HardhostError] = UsageError) -> Any:
    """Decode untrusted JSON. Deep nesting, a key twice in one object (which parsers resolve
    differently), NaN and Infinity, and anything that is not JSON are each one `error`
    naming `origin`."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(origin, error),
                          parse_constant=_no_constant(origin, error))
    except RecursionError:
        # The C decoder counts its own nesting against the interpreter's recursion limit
        # (about 1,000 levels); no hardhost document nests deeper than about 6.
        raise error(f"{origin}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{origin}: not valid JSON: {_reason(exc)}") from None


def load_json(path: Path, *, what: str, limit: int = SMALL_FILE,
              error: type[HardhostError] = UsageError) -> Any:
    """`read_bytes` then `decode_json`."""
    return decode_json(read_bytes(path, what=what, limit=limit, error=error),
                       origin=str(path), error=error)


def _unique_keys(origin: str, error: type[HardhostError]
                 ) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise error(f"{origin}: JSON key {key[:60]!r} appears twice in one object")
            result[key] = value
        return result
    return build


def _no_constant(origin: str, error: type[HardhostError]) -> Callable[[str], Any]:
    def refuse(name: str) -> Any:
        raise error(f"{origin}: {name} is not a JSON number")
    return refuse


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def file_version(path: Path, *, what: str) -> tuple[str, int, int, int, int]:
    """The path, device, inode, modification time and size of the file at `path`: a key for
    caching what was parsed from it, which changes when the file does. A missing or
    unreadable file is one `UsageError` naming `what`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    return str(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size
