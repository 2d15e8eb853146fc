"""Writing the files a user names: checked before the work starts, replaced whole or not at all.

A command that attests a fleet for ten minutes and then finds that `--junit` names a
directory has lost the run. So every output path is checked up front, by creating (and
removing) a scratch file beside it, which proves the folder exists and takes writes, and
every output is written to a scratch file first and renamed over its path when complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

from hardhost.core.errors import UsageError


def check_output_file(path: Path, *, what: str) -> None:
    """Raise `UsageError` unless a file can be written at `path`: its folder exists and
    takes a new file, and `path` is absent or a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the {what}: {exc.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"{path}: cannot write the {what}: it is {kind}")
    _probe(path.parent, f"{path}: cannot write the {what}")


def check_output_dir(path: Path, *, what: str) -> None:
    """Raise `UsageError` unless `path` is a folder that takes new files, or can be made as
    one (its parent is such a folder)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: cannot write the {what} there: it is not a folder")
    _probe(path if path.is_dir() else path.parent, f"{path}: cannot write the {what}")


def _probe(folder: Path, context: str) -> None:
    if not folder.is_dir():
        raise UsageError(f"{context}: folder {folder} does not exist")
    try:
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".hardhost-probe-")
    except OSError as exc:
        raise UsageError(f"{context}: {folder}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(scratch)


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write `data` to `path` through a scratch file in the same folder, renamed into place
    when complete: a reader sees the old file or the new one, never a part."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(scratch, mode)
        os.replace(scratch, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise


# C0 and C1 control characters and DEL: what a terminal acts on (cursor moves, erasing
# lines, titles) and what XML 1.0 cannot carry at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` from a host, safe to print or to put in XML: every control character (escape
    sequences included) shown as a visible `\\xNN` escape; with `keep_newlines`, newlines
    and tabs are kept. Lone surrogates (from undecodable names) are escaped too."""
    pattern = _CONTROL if keep_newlines else _CONTROL_OR_NEWLINE
    escaped = pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")
