"""Reading an AppArmor profile back: one profile in the rule format `apparmor.generate`
writes (one rule a line), as typed rules with their line numbers, for the offline check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hardhost.core.inputs import SMALL_FILE, read_text
from hardhost.profiles.aaglob import Glob, GlobError, compile_glob
from hardhost.profiles.apparmor_rules import SOCK_TYPES, ProfileError
from hardhost.profiles.apparmor_syntax import (
    expand,
    filter_slashes,
    split_tokens,
    strip_comment,
    unquote,
)

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
        written = unquote(words[0], origin)
        if not written.startswith(("/", "@{")):
            raise ProfileError(f"{origin}: {words[0]} is not an absolute path")
        pattern = filter_slashes(expand(written, variables, origin))
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
        line = strip_comment(stripped).strip()
        if not line or re.match(r"^abi\s+<[^>]+>\s*,$", line):
            continue
        assignment = re.match(r"^@\{([A-Za-z_][A-Za-z0-9_]*)\}\s*(\+?=)\s*(.*)$", line)
        if assignment:
            values = tuple(unquote(t, where) for t in split_tokens(assignment.group(3), where))
            key = assignment.group(1)
            appended = variables.get(key, ()) if assignment.group(2) == "+=" else ()
            variables[key] = appended + values
            continue
        header = re.match(r'^profile\s+("(?:[^"\\]|\\.)*"|\S+)(?:\s+flags=\([^)]*\))?\s*\{$', line)
        if header:
            if name is not None:
                raise ProfileError(f"{where}: one profile per text, and no child profiles")
            name = unquote(header.group(1), where)
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
        words = split_tokens(line[:-1], where)
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
