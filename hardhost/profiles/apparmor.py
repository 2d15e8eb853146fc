"""AppArmor profiles generated from a trace, and the default container profile.

A generated profile allows what the trace recorded (files, programs, socket families and
types, capabilities) and nothing else, and carries fixed denies that cover Docker's
docker-default. The layout is the template `apparmor/container.profile.j2`.

How a trace path becomes a rule path (`path_token`):

- It must be absolute and canonical (no `.` or `..` component, no `//`). A NUL, a newline
  or a UTF-16 surrogate that is not a surrogateescape'd byte is refused: no quoting makes
  them safe in a line-based policy.
- A path made only of ``A-Z a-z 0-9 / . _ + -`` is written as it is.
- Any other path is double-quoted. Inside the quotes ``\\`` and ``"`` and the AppArmor
  pattern characters ``* ? [ ] { } ^`` are escaped with a backslash, so they match
  themselves; control characters and non-UTF-8 bytes (surrogateescape) become three-digit
  octal escapes (``\\011``). Everything else (space, comma, ``#``, ``@``, non-ASCII) is
  literal inside quotes. ``@{`` can never start a variable: its ``{`` is escaped.
- AppArmor matches the path the kernel resolved, so ``/proc/self``, ``/proc/thread-self``
  and ``/proc/PID`` become ``/proc/@{pid}`` (and ``/task/@{tid}``). Other symbolic links
  are not resolved here: the trace must hold the resolved paths.
"""

from __future__ import annotations

import re
import string
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

from hardhost.profiles.apparmor_rules import (
    CAPABILITIES,
    SOCK_TYPE_NUMBERS,
    SOCK_TYPES,
    ProfileError,
)
from hardhost.profiles.trace import FAMILIES, Trace

# The policy data, from the package wherever it is installed (`apparmor/` in the repository).
DATA = Path(str(resources.files("hardhost.policy.apparmor")))
TEMPLATE = "container.profile.j2"
# A directory holding this many files the trace read (r or m) with the same permissions gets
# one `/dir/*` rule instead of one rule per file. Writes and runs are never widened: a glob
# grants files the trace never showed, and for those only reading is a small step.
GLOB_SIBLINGS = 8
_GLOB_PERMS = frozenset({"r", "m", "rm"})

# The same rule as profiles/generate.py: the name is also a file name and a `peer=` label.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_PLAIN = frozenset(string.ascii_letters + string.digits + "/._+-")
_PATTERN_CHARS = frozenset('\\"*?[]{}^')
_PROC_PID = re.compile(r"^/proc/(?P<pid>self|thread-self|[1-9][0-9]*)(?P<task>/task/[1-9][0-9]*)?"
                       r"(?=/|$)")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ProfileError(f"AppArmor profile name {name!r}: use letters, digits, '.', '_' and "
                           "'-', starting with a letter or digit (no spaces or slashes)")
    return name


def _escape(text: str, origin: str) -> tuple[str, bool]:
    """`text` as literal AppArmor path characters, and whether it needs double quotes."""
    out: list[str] = []
    quote = False
    for char in text:
        if char in _PLAIN:
            out.append(char)
            continue
        quote = True
        code = ord(char)
        if char in ("\0", "\n"):
            raise ProfileError(f"{origin}: a path with a NUL or newline cannot go into an "
                               "AppArmor profile")
        if char in _PATTERN_CHARS:
            out.append("\\" + char)
        elif 0xDC80 <= code <= 0xDCFF:  # a non-UTF-8 byte, as surrogateescape decoded it
            out.append(f"\\{code - 0xDC00:03o}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ProfileError(f"{origin}: the path holds a lone UTF-16 surrogate")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        else:
            out.append(char)
    return "".join(out), quote


def _check_path(path: str, origin: str) -> None:
    if not path.startswith("/"):
        raise ProfileError(f"{origin}: {path!r} is not an absolute path")
    if "\0" in path or "\n" in path:
        raise ProfileError(f"{origin}: {path!r}: a path with a NUL or newline cannot go into "
                           "an AppArmor profile")
    parts = path.rstrip("/").split("/")[1:] if path != "/" else []
    if any(part in ("", ".", "..") for part in parts):
        raise ProfileError(f"{origin}: {path!r} is not canonical; record the path the kernel "
                           "resolves (no '.', '..' or '//')")


def _pattern(path: str, origin: str) -> tuple[str, bool]:
    """The rule path for literal `path`, and whether it needs quotes; /proc/PID made generic."""
    _check_path(path, origin)
    prefix = ""
    match = _PROC_PID.match(path)
    if match:
        prefix = "/proc/@{pid}"
        if match.group("pid") == "thread-self" or match.group("task"):
            prefix += "/task/@{tid}"
        path = path[match.end():]
    body, quote = _escape(path, origin)
    return prefix + body, quote


def _token(body: str, quote: bool) -> str:
    return f'"{body}"' if quote else body


def path_token(path: str, origin: str = "path") -> str:
    """The AppArmor rule path that matches exactly the file `path` (see the module docstring)."""
    return _token(*_pattern(path, origin))


def _perms(mode: str) -> str:
    """AppArmor permissions for a trace mode: `w` covers `a`, `x` runs inside this profile."""
    letters = set(mode)
    perms = "r" if "r" in letters else ""
    perms += "w" if "w" in letters else ("a" if "a" in letters else "")
    perms += "m" if "m" in letters else ""
    return perms + ("ix" if "x" in letters else "")


def _capability(name: str, origin: str) -> str:
    canonical = name.lower().removeprefix("cap_")
    if canonical not in CAPABILITIES:
        raise ProfileError(f"{origin}: unknown capability {name!r} (use names such as "
                           "net_bind_service or CAP_NET_BIND_SERVICE)")
    return canonical


def _sock_type(sock_type: str, origin: str) -> str:
    named = SOCK_TYPE_NUMBERS.get(sock_type, sock_type)
    if named and named not in SOCK_TYPES:
        raise ProfileError(f"{origin}: unknown socket type {sock_type!r} (expected one of "
                           f"{', '.join(sorted(SOCK_TYPES))})")
    return named


def _family(family: str, origin: str) -> str:
    if family not in FAMILIES:
        raise ProfileError(f"{origin}: unknown socket family {family!r} (expected one of "
                           f"{', '.join(sorted(FAMILIES))})")
    return family


def _network_rules(trace: Trace, origin: str) -> list[str]:
    pairs = {(_family(s.family, origin), _sock_type(s.sock_type, origin)) for s in trace.sockets}
    pairs |= {(_family(n.family, origin), _sock_type(n.sock_type, origin))
              for n in trace.network}
    untyped = {family for family, sock_type in pairs if not sock_type}
    return sorted(family if not sock_type else f"{family} {sock_type}"
                  for family, sock_type in pairs if not sock_type or family not in untyped)


def _file_rules(trace: Trace, origin: str) -> list[str]:
    executables = set(trace.executables)
    single: list[str] = []
    # (directory pattern, directory needs quotes, perms) -> leaf patterns and their quoting
    siblings: dict[tuple[str, bool, str], list[tuple[str, bool]]] = {}
    for access in trace.files:
        mode = access.mode.replace("x", "") if access.path in executables else access.mode
        perms = _perms(mode)
        if not perms:
            continue  # only run, and the program rules cover that
        body, quote = _pattern(access.path, origin)
        directory, _, leaf = access.path.rpartition("/")
        if leaf and directory and perms in _GLOB_PERMS:
            dir_body, dir_quote = _pattern(directory, origin)
            leaf_body, leaf_quote = _escape(leaf, origin)
            siblings.setdefault((dir_body, dir_quote, perms), []).append((leaf_body, leaf_quote))
        else:
            single.append(f"{_token(body, quote)} {perms}")
    for (dir_body, dir_quote, perms), leaves in siblings.items():
        if len(leaves) >= GLOB_SIBLINGS:
            single.append(f"{_token(dir_body + '/*', dir_quote)} {perms}")
        else:
            single += [f"{_token(f'{dir_body}/{leaf}', dir_quote or leaf_quote)} {perms}"
                       for leaf, leaf_quote in leaves]
    return sorted(single, key=lambda rule: rule.lstrip('"'))


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(DATA),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # an AppArmor policy, not HTML; paths are escaped by path_token
    )


def generate(trace: Trace, name: str) -> str:
    """The AppArmor profile text for `trace`, named `name`."""
    check_name(name)
    origin = f"trace for {name}"
    return _environment().get_template(TEMPLATE).render(
        name=name,
        capabilities=sorted({_capability(c, origin) for c in trace.capabilities}),
        network=_network_rules(trace, origin),
        executables=[f"{path_token(path, origin)} ix" for path in sorted(trace.executables)],
        files=_file_rules(trace, origin),
        ptrace="ptrace" in trace.syscalls,
        glob_siblings=GLOB_SIBLINGS,
    )


DEFAULT_NAME = "hardhost-container-default"
DEFAULT_TEMPLATE = "container-default.profile.j2"


def generate_default(name: str = DEFAULT_NAME) -> str:
    """The container profile for workloads without a recording (apparmor/container-default)."""
    check_name(name)
    return _environment().get_template(DEFAULT_TEMPLATE).render(name=name, ptrace=False)
