"""AppArmor profiles from a trace, an offline check of them, and validation by apparmor_parser.

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
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

from hardhost.core.errors import CommandFailed, UsageError
from hardhost.core.inputs import SMALL_FILE, read_text
from hardhost.core.run import run
from hardhost.profiles.aaglob import MAX_PATTERN, Glob, GlobError, compile_glob
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

# Linux capabilities by their AppArmor names (include/uapi/linux/capability.h, Linux 6.1).
CAPABILITIES = frozenset({
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot",
    "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource",
    "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
    "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend",
    "audit_read", "perfmon", "bpf", "checkpoint_restore",
})
SOCK_TYPES = frozenset({"stream", "dgram", "raw", "rdm", "seqpacket", "packet"})
# profiles/record.py writes a socket type it has no name for as its number.
_SOCK_TYPE_NUMBERS = {"1": "stream", "2": "dgram", "3": "raw", "4": "rdm", "5": "seqpacket",
                      "10": "packet"}

_PLAIN = frozenset(string.ascii_letters + string.digits + "/._+-")
_PATTERN_CHARS = frozenset('\\"*?[]{}^')
_PROC_PID = re.compile(r"^/proc/(?P<pid>self|thread-self|[1-9][0-9]*)(?P<task>/task/[1-9][0-9]*)?"
                       r"(?=/|$)")

# Values of the tunables our profiles use, for the offline check (which reads no files).
# /etc/apparmor.d/tunables/proc, .../kernelvars and .../sys in AppArmor 3.0.
TUNABLES: Mapping[str, tuple[str, ...]] = {
    "PROC": ("/proc/",),
    "sys": ("/sys/",),
    "pid": ("{[1-9],[1-9][0-9],[1-9][0-9][0-9],[1-9][0-9][0-9][0-9],[1-9][0-9][0-9][0-9][0-9],"
            "[1-9][0-9][0-9][0-9][0-9][0-9],[1-4][0-9][0-9][0-9][0-9][0-9][0-9]}",),
    "tid": ("@{pid}",),
}
_FILE_LETTERS = frozenset("rwalkmx")
_EXEC_MODE = re.compile(r"[pPcCuU]?i?[uU]?x")
_OTHER_RULES = frozenset({"signal", "ptrace", "mount", "umount", "remount", "pivot_root",
                          "unix", "dbus", "change_profile", "rlimit", "userns", "io_uring",
                          "mqueue"})


class ProfileError(UsageError):
    """A trace, name or profile that cannot become, or be read as, an AppArmor profile."""


# --- Generation -------------------------------------------------------------------------


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
    named = _SOCK_TYPE_NUMBERS.get(sock_type, sock_type)
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


# --- Reading a profile back -------------------------------------------------------------


@dataclass(frozen=True)
class FileRule:
    """A file rule: `pattern` is the path expression after unquoting and variable expansion."""

    pattern: str
    perms: frozenset[str]  # letters of "rwalkmx"; any exec mode (ix, px, ...) counts as x
    deny: bool
    line: int
    text: str
    # Matched in linear time: a profile read back by `profile check` may be hostile, and a
    # Python regex of its pattern could backtrack for hours (see profiles.aaglob).
    glob: Glob = field(compare=False, repr=False)

    def matches(self, path: str) -> bool:
        return self.glob.fullmatch(path)


@dataclass(frozen=True)
class NetworkRule:
    family: str  # "" for every family
    sock_type: str  # "" for every type
    deny: bool
    line: int
    text: str


@dataclass(frozen=True)
class CapabilityRule:
    names: frozenset[str]  # empty for every capability
    deny: bool
    line: int
    text: str


@dataclass(frozen=True)
class OtherRule:
    """A rule the offline check does not evaluate (signal, ptrace, mount, ...), as written."""

    kind: str
    deny: bool
    line: int
    text: str


@dataclass(frozen=True)
class ParsedProfile:
    name: str
    includes: tuple[str, ...] = ()
    files: tuple[FileRule, ...] = ()
    network: tuple[NetworkRule, ...] = ()
    capabilities: tuple[CapabilityRule, ...] = ()
    other: tuple[OtherRule, ...] = ()


def _strip_comment(line: str) -> str:
    quoted = escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _tokens(text: str, origin: str) -> list[str]:
    """Split a rule at whitespace; a double-quoted token keeps its quotes and escapes."""
    tokens: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char.isspace() and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if quoted:
        raise ProfileError(f"{origin}: unterminated quoted string")
    if current:
        tokens.append("".join(current))
    return tokens


def _number(text: str, start: int, digits: str, base: int, width: int) -> tuple[int, int] | None:
    """Up to `width` digits from `start` while the value stays a byte, as lib.c strntol."""
    end, value = start, 0
    while end < len(text) and end - start < width and text[end] in digits:
        if value * base + int(text[end], base) > 255:
            break
        value = value * base + int(text[end], base)
        end += 1
    return (value, end) if end > start else None


def _escape_sequence(text: str, start: int) -> tuple[int, int] | None:
    """The value of the escape whose letter is at `start`, and where it ends (parser lib.c)."""
    letter = text[start]
    if letter in "01234567":
        return _number(text, start, "01234567", 8, 3)
    if letter == "d":
        return _number(text, start + 1, string.digits, 10, 3)
    if letter == "x":
        return _number(text, start + 1, string.hexdigits, 16, 2)
    simple = {"\\": 0x5C, '"': 0x22, "a": 7, "e": 0x1B, "f": 0xC, "n": 0xA, "r": 0xD, "t": 9}
    return (simple[letter], start + 1) if letter in simple else None


def _unquote(token: str, origin: str) -> str:
    """Strip quotes and decode escapes as apparmor_parser does, keeping pattern escapes."""
    if token.startswith('"'):
        if len(token) < 2 or not token.endswith('"'):
            raise ProfileError(f"{origin}: unterminated quoted string {token}")
        token = token[1:-1]
    out: list[str] = []
    index = 0
    while index < len(token):
        char = token[index]
        decoded = _escape_sequence(token, index + 1) if char == "\\" and index + 1 < len(
            token) else None
        if decoded is None:
            out.append(char)  # not an escape, or one the parser passes on as it is
            index += 1
            continue
        value, index = decoded
        if value == 0:
            raise ProfileError(f"{origin}: a NUL in a path")
        literal = chr(0xDC00 + value) if value >= 0x80 else chr(value)
        out.append("\\" + literal if literal in "*?[]{}^,\\" else literal)
    return "".join(out)


_VARIABLE = re.compile(r"@\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, variables: Mapping[str, tuple[str, ...]], origin: str,
            depth: int = 0) -> str:
    """Replace each `@{name}` not preceded by an escape with its value (or {a,b} of values)."""
    if depth > 16:
        raise ProfileError(f"{origin}: variables nest too deep")
    out: list[str] = []
    index = 0
    for match in _VARIABLE.finditer(text):
        backslashes = len(text[:match.start()]) - len(text[:match.start()].rstrip("\\"))
        if backslashes % 2:
            continue
        name = match.group("name")
        if name not in variables:
            raise ProfileError(f"{origin}: unknown variable @{{{name}}}")
        values = [_expand(v, variables, origin, depth + 1) for v in variables[name]]
        out.append(text[index:match.start()])
        out.append(values[0] if len(values) == 1 else "{" + ",".join(values) + "}")
        index = match.end()
    out.append(text[index:])
    expanded = "".join(out)
    if len(expanded) > MAX_PATTERN:
        # Each level may double the text: 16 levels of two references each would be 2**16.
        raise ProfileError(f"{origin}: variables expand beyond {MAX_PATTERN} characters")
    return expanded


def _filter_slashes(pattern: str) -> str:
    """Collapse runs of '/' as apparmor_parser does (a leading '//' is kept)."""
    if pattern.startswith("//") and not pattern.startswith("///"):
        return "//" + re.sub(r"/{2,}", "/", pattern[2:])
    return re.sub(r"/{2,}", "/", pattern)


def _char_class(body: str, origin: str) -> str:
    negate = body.startswith("^")
    items = body[1:] if negate else body
    chars: list[str] = []
    index = 0
    while index < len(items):
        char = items[index]
        if char == "\\" and index + 1 < len(items):
            index += 1
            char = items[index]
        elif char == "-" and chars and index + 1 < len(items):
            chars.append("-")
            index += 1
            continue
        chars.append(re.escape(char))
        index += 1
    if not chars:
        raise ProfileError(f"{origin}: empty character class []")
    return "[" + ("^" if negate else "") + "".join(chars) + "]"


def glob_regex(pattern: str, origin: str = "pattern") -> re.Pattern[str]:
    """Compile an AppArmor path expression as parser_regex.c does: `*` and `?` stop at '/',
    `**` does not, and a `*` or `**` that is a whole path component matches at least one
    character (so /dir/* matches no /dir/)."""
    out: list[str] = []
    groups: list[int] = []  # alternatives seen in each open {}
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            if index + 1 >= len(pattern):
                raise ProfileError(f"{origin}: trailing '\\' in {pattern}")
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "*":
            if out and out[-1] == "/":
                after = index
                while after < len(pattern) and pattern[after] == "*":
                    after += 1
                if after == len(pattern) or pattern[after] == "/":
                    out.append("[^/]")
            if pattern.startswith("**", index):
                out.append(".*")
                index += 2
            else:
                out.append("[^/]*")
                index += 1
            continue
        if char == "?":
            out.append("[^/]")
        elif char == "[":
            end = index + 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            if end >= len(pattern):
                raise ProfileError(f"{origin}: unclosed [ in {pattern}")
            out.append(_char_class(pattern[index + 1:end], origin))
            index = end + 1
            continue
        elif char == "]":
            raise ProfileError(f"{origin}: ] without [ in {pattern}")
        elif char == "{":
            groups.append(0)
            out.append("(?:")
        elif char == "}":
            if not groups or groups.pop() == 0:
                raise ProfileError(f"{origin}: a {{}} group needs two or more alternatives "
                                   f"in {pattern}")
            out.append(")")
        elif char == "," and groups:
            groups[-1] += 1
            out.append("|")
        else:
            out.append(re.escape(char))
        index += 1
    if groups:
        raise ProfileError(f"{origin}: unclosed {{ in {pattern}")
    return re.compile("".join(out), re.DOTALL)


def _file_perms(token: str, deny: bool, origin: str) -> frozenset[str]:
    letters = set()
    rest = token
    if "x" in token:
        if deny and re.search(r"[pPcCuUi]", token):
            raise ProfileError(f"{origin}: a deny rule takes plain 'x', not {token!r}")
        execs = _EXEC_MODE.findall(token)
        if len(execs) != 1:
            raise ProfileError(f"{origin}: one exec mode expected in {token!r}")
        rest = _EXEC_MODE.sub("", token, count=1)
        letters.add("x")
    if (not rest and not letters) or not set(rest) <= _FILE_LETTERS - {"x"}:
        raise ProfileError(f"{origin}: {token!r} is not a set of file permissions")
    if "w" in rest and "a" in rest:
        raise ProfileError(f"{origin}: 'w' and 'a' cannot be combined")
    return frozenset(letters | set(rest))


def _parse_rule(words: list[str], deny: bool, line: int, text: str,
                variables: Mapping[str, tuple[str, ...]], origin: str
                ) -> FileRule | NetworkRule | CapabilityRule | OtherRule:
    kind = words[0]
    if kind == "file" and len(words) == 1:
        every = frozenset(_FILE_LETTERS)
        return FileRule("/**", every, deny, line, text, compile_glob("**"))
    if kind == "file":
        words = words[1:]
        kind = words[0]
    if kind.startswith(("/", "@", '"')):
        if len(words) != 2 or "->" in words:
            raise ProfileError(f"{origin}: expected PATH PERMISSIONS in {text!r}")
        written = _unquote(words[0], origin)
        if not written.startswith(("/", "@{")):
            raise ProfileError(f"{origin}: {words[0]} is not an absolute path")
        pattern = _filter_slashes(_expand(written, variables, origin))
        try:
            glob = compile_glob(pattern, origin)
        except GlobError as exc:
            raise ProfileError(str(exc)) from None
        return FileRule(pattern, _file_perms(words[1], deny, origin), deny, line, text, glob)
    if kind == "network":
        args = words[1:]
        family = args.pop(0) if args and args[0] not in SOCK_TYPES else ""
        sock_type = args.pop(0) if args and args[0] in SOCK_TYPES else ""
        if args or family in ("tcp", "udp", "icmp"):
            raise ProfileError(f"{origin}: expected network [FAMILY] [TYPE] in {text!r}")
        return NetworkRule(family, sock_type, deny, line, text)
    if kind == "capability":
        return CapabilityRule(frozenset(words[1:]), deny, line, text)
    if kind in _OTHER_RULES or kind.split("(", 1)[0] in _OTHER_RULES:
        return OtherRule(kind.split("(", 1)[0], deny, line, text)
    raise ProfileError(f"{origin}: cannot evaluate the rule {text!r}")


def parse(profile_text: str, origin: str = "profile") -> ParsedProfile:
    """Read back a single-profile text in the rule format `generate` writes (one rule a line).

    `#include` lines are recorded, not followed: the check sees only the rules written here.
    """
    variables: dict[str, tuple[str, ...]] = dict(TUNABLES)
    includes: list[str] = []
    name: str | None = None
    closed = False
    rules: list[FileRule | NetworkRule | CapabilityRule | OtherRule] = []
    for number, raw in enumerate(profile_text.splitlines(), start=1):
        where = f"{origin}: line {number}"
        stripped = raw.strip()
        include = re.match(r"^#?include\s+(?:if\s+exists\s+)?<([^>]+)>$", stripped)
        if include:
            includes.append(include.group(1))
            continue
        line = _strip_comment(stripped).strip()
        if not line or re.match(r"^abi\s+<[^>]+>\s*,$", line):
            continue
        assignment = re.match(r"^@\{([A-Za-z_][A-Za-z0-9_]*)\}\s*(\+?=)\s*(.*)$", line)
        if assignment:
            values = tuple(_unquote(t, where) for t in _tokens(assignment.group(3), where))
            key = assignment.group(1)
            appended = variables.get(key, ()) if assignment.group(2) == "+=" else ()
            variables[key] = appended + values
            continue
        header = re.match(r'^profile\s+("(?:[^"\\]|\\.)*"|\S+)(?:\s+flags=\([^)]*\))?\s*\{$', line)
        if header:
            if name is not None:
                raise ProfileError(f"{where}: one profile per text, and no child profiles")
            name = _unquote(header.group(1), where)
            continue
        if line == "}":
            if name is None or closed:
                raise ProfileError(f"{where}: '}}' without an open profile")
            closed = True
            continue
        if name is None or closed:
            raise ProfileError(f"{where}: a rule outside the profile block: {line!r}")
        if not line.endswith(","):
            raise ProfileError(f"{where}: a rule must end with ',' (one rule a line): {line!r}")
        words = _tokens(line[:-1], where)
        deny = False
        while words and words[0] in ("audit", "deny", "allow"):
            deny = deny or words[0] == "deny"
            words = words[1:]
        if not words:
            raise ProfileError(f"{where}: an empty rule")
        if words[0] == "owner":
            raise ProfileError(f"{where}: owner rules cannot be checked from a trace")
        rules.append(_parse_rule(words, deny, number, line, variables, where))
    if name is None or not closed:
        raise ProfileError(f"{origin}: no complete 'profile NAME {{ ... }}' block")
    return ParsedProfile(
        name=name,
        includes=tuple(includes),
        files=tuple(r for r in rules if isinstance(r, FileRule)),
        network=tuple(r for r in rules if isinstance(r, NetworkRule)),
        capabilities=tuple(r for r in rules if isinstance(r, CapabilityRule)),
        other=tuple(r for r in rules if isinstance(r, OtherRule)),
    )


def load(path: Path) -> ParsedProfile:
    text = read_text(path, what="AppArmor profile", limit=SMALL_FILE, error=ProfileError)
    return parse(text, str(path))


# --- Offline evaluation -----------------------------------------------------------------


def kernel_path(path: str) -> str:
    """The path AppArmor sees for a trace path: /proc/self and /proc/thread-self name a PID."""
    for link, target in (("/proc/self", "/proc/1"), ("/proc/thread-self", "/proc/1/task/1")):
        if path == link or path.startswith(link + "/"):
            path = target + path[len(link):]
    return _filter_slashes(path)


def _covers(granted: frozenset[str], letter: str) -> bool:
    return letter in granted or (letter == "a" and "w" in granted)


def file_verdict(profile: ParsedProfile, path: str, letter: str) -> str | None:
    """None if the profile allows `letter` on `path`, else why not; deny rules win."""
    seen = kernel_path(path)
    for rule in profile.files:
        if rule.deny and _covers(rule.perms, letter) and rule.matches(seen):
            return f"denied by line {rule.line} ({rule.text})"
    if any(not rule.deny and _covers(rule.perms, letter) and rule.matches(seen)
           for rule in profile.files):
        return None
    return "no rule allows it"


def network_verdict(profile: ParsedProfile, family: str, sock_type: str) -> str | None:
    named = _SOCK_TYPE_NUMBERS.get(sock_type, sock_type)
    for rule in profile.network:
        # An event of unknown type meets every deny of its family: the check stays sound.
        if rule.deny and rule.family in ("", family) and (
                not rule.sock_type or not named or rule.sock_type == named):
            return f"denied by line {rule.line} ({rule.text})"
    if any(not rule.deny and rule.family in ("", family) and rule.sock_type in ("", named)
           for rule in profile.network):
        return None
    return "no rule allows it"


def capability_verdict(profile: ParsedProfile, name: str) -> str | None:
    canonical = name.lower().removeprefix("cap_")
    for rule in profile.capabilities:
        if rule.deny and (not rule.names or canonical in rule.names):
            return f"denied by line {rule.line} ({rule.text})"
    if any(not rule.deny and (not rule.names or canonical in rule.names)
           for rule in profile.capabilities):
        return None
    return "no rule allows it"


def _events(profile: ParsedProfile, trace: Trace) -> Iterator[tuple[str, str | None]]:
    """Each recorded event, described, with the profile's verdict on it."""
    for path in trace.executables:
        shown = path if path.isprintable() else repr(path)
        yield f"exec {shown}", file_verdict(profile, path, "x")
    for access in trace.files:
        shown = access.path if access.path.isprintable() else repr(access.path)
        for letter in access.mode:
            yield f"file {shown} ({letter})", file_verdict(profile, access.path, letter)
    for socket in trace.sockets:
        yield (f"socket {socket.family} {socket.sock_type or '(any type)'}",
               network_verdict(profile, socket.family, socket.sock_type))
    for call in trace.network:
        where = f" {call.address}:{call.port}" if call.address or call.port else ""
        yield (f"{call.call} {call.family} {call.sock_type or '(any type)'}{where}",
               network_verdict(profile, call.family, call.sock_type))
    for capability in trace.capabilities:
        yield f"capability {capability}", capability_verdict(profile, capability)


def first_denied(profile: ParsedProfile, trace: Trace) -> str | None:
    """The first recorded event the profile would deny, as one line, or None if all pass.

    Events go in this order: programs run, file accesses (one per permission letter),
    sockets, network calls, capabilities.
    """
    for event, verdict in _events(profile, trace):
        if verdict is not None:
            return f"{event}: {verdict}"
    return None


# --- Validation by the real consumer ----------------------------------------------------


def _parser_reason(stderr: str, source: Path) -> str:
    """apparmor_parser's complaint without its notes on the cache and the temporary file."""
    lines = []
    for line in stderr.splitlines():
        if not line.strip() or line.startswith("Cache read/write disabled"):
            continue  # printed on every run on a host whose kernel lacks AppArmor
        line = re.sub(rf"^AppArmor parser error for {re.escape(str(source))} in profile \S+ "
                      r"at line (\d+):", r"line \1:", line.strip())
        lines.append(line.replace(str(source), "the profile"))
    return " | ".join(lines[-3:]) or "no reason given"


def validate(profile_text: str) -> None:
    """Compile the profile with `apparmor_parser -Q -K` (no kernel load, no cache), or raise.

    Includes resolve against the host's /etc/apparmor.d.
    """
    with tempfile.TemporaryDirectory(prefix="hardhost-apparmor-") as scratch:
        source = Path(scratch) / "profile"
        source.write_text(profile_text, encoding="utf-8")
        try:
            run(["apparmor_parser", "-Q", "-K", source], timeout=120)
        except CommandFailed as exc:
            raise ProfileError("apparmor_parser refused the profile: "
                               f"{_parser_reason(exc.stderr, source)}") from None
