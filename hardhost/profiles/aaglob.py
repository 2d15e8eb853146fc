"""AppArmor path expressions, matched in linear time.

`profile check` reads profiles from a folder it is given, so their patterns are untrusted.
Compiled to a Python regular expression, a pattern such as `/**a**a**a**a**b` backtracks
for minutes on a path of a few hundred characters. Here a pattern is expanded into its
`{a,b}` alternatives (a bounded number) and each is matched by stepping the set of
reachable positions through its atoms: time proportional to atoms times path length.

The syntax and meaning follow `apparmor_regex.glob_regex` (and apparmor_parser's
parser_regex.c): `*` and `?` stop at '/', `**` does not, and a `*` or `**` that is a whole
path component matches at least one character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hardhost.core.errors import UsageError

# Bounds for a hostile pattern: no real profile comes near them.
MAX_ALTERNATIVES = 256
MAX_PATTERN = 8192


class GlobError(UsageError):
    """A path expression that does not parse, or expands beyond the bounds above."""


@dataclass(frozen=True)
class _Atom:
    kind: str  # "lit": the char `text`; "one": any char but '/'; "class": `cls`;
    #            "star": any run without '/'; "any": any run
    text: str = ""
    cls: re.Pattern[str] | None = None

    def accepts(self, char: str) -> bool:
        if self.kind == "lit":
            return char == self.text
        if self.kind == "one":
            return char != "/"
        assert self.cls is not None
        return self.cls.fullmatch(char) is not None


_Node = _Atom | list[list["_Node"]]  # an atom, or a {} group: its alternatives


def _char_class(body: str, origin: str) -> re.Pattern[str]:
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
        raise GlobError(f"{origin}: empty character class []")
    try:
        return re.compile("[" + ("^" if negate else "") + "".join(chars) + "]", re.DOTALL)
    except re.error as exc:
        raise GlobError(f"{origin}: bad character class [{body}]: {exc.msg}") from None


def _parse(pattern: str, origin: str) -> list[_Node]:
    groups: list[list[list[_Node]]] = []  # open {} groups, each a list of alternatives
    current: list[_Node] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            if index + 1 >= len(pattern):
                raise GlobError(f"{origin}: trailing '\\' in {pattern}")
            current.append(_Atom("lit", pattern[index + 1]))
            index += 2
            continue
        if char == "*":
            previous = current[-1] if current else None
            if isinstance(previous, _Atom) and previous.kind == "lit" and previous.text == "/":
                after = index
                while after < len(pattern) and pattern[after] == "*":
                    after += 1
                if after == len(pattern) or pattern[after] == "/":
                    current.append(_Atom("one"))
            if pattern.startswith("**", index):
                current.append(_Atom("any"))
                index += 2
            else:
                current.append(_Atom("star"))
                index += 1
            continue
        if char == "?":
            current.append(_Atom("one"))
        elif char == "[":
            end = index + 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            if end >= len(pattern):
                raise GlobError(f"{origin}: unclosed [ in {pattern}")
            current.append(_Atom("class", cls=_char_class(pattern[index + 1:end], origin)))
            index = end + 1
            continue
        elif char == "]":
            raise GlobError(f"{origin}: ] without [ in {pattern}")
        elif char == "{":
            groups.append([current])
            current = []
        elif char == "}":
            if not groups or len(groups[-1]) < 2:  # [before '{', alternatives so far...]
                raise GlobError(f"{origin}: a {{}} group needs two or more alternatives "
                                f"in {pattern}")
            alternatives = groups.pop()
            outer = alternatives[0]
            outer.append([*alternatives[1:], current])
            current = outer
        elif char == "," and groups:
            groups[-1].append(current)
            current = []
        else:
            current.append(_Atom("lit", char))
        index += 1
    if groups:
        raise GlobError(f"{origin}: unclosed {{ in {pattern}")
    return current


def _expand(nodes: list[_Node], origin: str) -> list[tuple[_Atom, ...]]:
    results: list[tuple[_Atom, ...]] = [()]
    for node in nodes:
        if isinstance(node, _Atom):
            results = [(*r, node) for r in results]
            continue
        options = [tail for alternative in node for tail in _expand(alternative, origin)]
        if len(results) * len(options) > MAX_ALTERNATIVES:
            raise GlobError(f"{origin}: more than {MAX_ALTERNATIVES} {{}} alternatives")
        results = [r + o for r in results for o in options]
    return results


@dataclass(frozen=True)
class Glob:
    pattern: str
    alternatives: tuple[tuple[_Atom, ...], ...]

    def fullmatch(self, path: str) -> bool:
        return any(_matches(atoms, path) for atoms in self.alternatives)


def compile_glob(pattern: str, origin: str = "pattern") -> Glob:
    """Parse `pattern`; raise `GlobError` for bad syntax or a pattern beyond the bounds."""
    if len(pattern) > MAX_PATTERN:
        raise GlobError(f"{origin}: path expression longer than {MAX_PATTERN} characters")
    return Glob(pattern, tuple(_expand(_parse(pattern, origin), origin)))


def _matches(atoms: tuple[_Atom, ...], path: str) -> bool:
    """Step the set of positions reachable in `path` through `atoms`; each step is linear."""
    size = len(path)
    reach = [False] * (size + 1)
    reach[0] = True
    for atom in atoms:
        following = [False] * (size + 1)
        if atom.kind == "any":
            first = reach.index(True) if True in reach else size + 1
            for position in range(first, size + 1):
                following[position] = True
        elif atom.kind == "star":
            live = False
            for position in range(size + 1):
                live = live or reach[position]
                following[position] = live
                if position < size and path[position] == "/":
                    live = False
        else:
            for position in range(size):
                if reach[position] and atom.accepts(path[position]):
                    following[position + 1] = True
        reach = following
        if True not in reach:
            return False
    return reach[size]
