"""Image versions: numbers joined by dots, ordered number by number.

An update refuses to move a host to an older image, so the order must be the one people
mean: 1.10 comes after 1.9, and 2 equals 2.0.
"""

from __future__ import annotations

import re

# At most eight numbers of at most nine digits: a version is a label, not data.
IMAGE_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,7}")


class VersionError(ValueError):
    """Text that is not an image version."""


def version_key(version: str) -> tuple[int, ...]:
    """A sort key for `version`: its numbers, trailing zeros dropped (2 == 2.0)."""
    if not IMAGE_VERSION_RE.fullmatch(version):
        raise VersionError(f"{version[:40]!r} is not an image version (numbers joined by dots)")
    numbers = [int(part) for part in version.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def is_older(version: str, than: str) -> bool:
    return version_key(version) < version_key(than)
