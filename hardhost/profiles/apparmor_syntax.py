"""How apparmor_parser reads the text of a rule (parser lib.c, parser_misc.c in AppArmor
3.0): comments, tokens, quoting and escapes, `@{variable}` expansion and runs of slashes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from hardhost.profiles.aaglob import MAX_PATTERN
from hardhost.profiles.apparmor_rules import ProfileError


def strip_comment(line: str) -> str:
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


def split_tokens(text: str, origin: str) -> list[str]:
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


def unquote(token: str, origin: str) -> str:
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


def expand(text: str, variables: Mapping[str, tuple[str, ...]], origin: str,
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
        values = [expand(v, variables, origin, depth + 1) for v in variables[name]]
        out.append(text[index:match.start()])
        out.append(values[0] if len(values) == 1 else "{" + ",".join(values) + "}")
        index = match.end()
    out.append(text[index:])
    expanded = "".join(out)
    if len(expanded) > MAX_PATTERN:
        # Each level may double the text: 16 levels of two references each would be 2**16.
        raise ProfileError(f"{origin}: variables expand beyond {MAX_PATTERN} characters")
    return expanded


def filter_slashes(pattern: str) -> str:
    """Collapse runs of '/' as apparmor_parser does (a leading '//' is kept)."""
    if pattern.startswith("//") and not pattern.startswith("///"):
        return "//" + re.sub(r"/{2,}", "/", pattern[2:])
    return re.sub(r"/{2,}", "/", pattern)
