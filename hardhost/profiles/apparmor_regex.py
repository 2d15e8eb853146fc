"""AppArmor path expressions as Python regular expressions, compiled as apparmor_parser's
parser_regex.c does. This is the reference the linear-time matcher (`aaglob`) is tested
against; it is never used on a profile read back, whose patterns may be hostile (a regex of
one can backtrack for hours).
"""

from __future__ import annotations

import re

from hardhost.profiles.apparmor_rules import ProfileError


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
