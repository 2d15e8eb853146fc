"""Debian's security tracker data (https://security-tracker.debian.org/tracker/data/json),
read from a file so that a scan works offline, and read as hostile input.

The file is `{SOURCE: {ID: {"description", "debianbug", "scope", "releases": {RELEASE:
{"status", "fixed_version", "urgency", "nodsa", "nodsa_reason", "repositories"}}}}}`. Every
byte is parsed as JSON and the top level may name a source package only once. The entries of
the source packages a scan asks for are then decoded strictly (no key twice in one object,
no NaN, bounded nesting) and checked field by field; a wrong type or an unknown status or
urgency is one `FILE: KEY: problem` error. Keys the tracker may add later are ignored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from hardhost.core.errors import SpecError, TrustError, UsageError
from hardhost.core.inputs import read_bytes

log = logging.getLogger(__name__)

# The whole tracker export was about 80 MB in 2025 and grows by a few MB a year.
FEED_LIMIT = 512 << 20
# Ids are CVE-YYYY-N… or, for issues without a CVE yet, TEMP-NNNNNNN-XXXXXX.
_ID = re.compile(r"[A-Z][A-Z0-9]{1,15}-[0-9A-Za-z-]{1,48}")
# Debian source package names (Debian Policy 5.6.1): lower case, digits, + - . only.
_SOURCE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
MAX_TEXT = 4096  # a description is a paragraph; longer text is cut, never refused


class Status(StrEnum):
    RESOLVED = "resolved"  # fixed in the release (fixed_version), or never affected ("0")
    OPEN = "open"  # affected, no fix in the release yet
    UNDETERMINED = "undetermined"  # not yet known whether the release is affected


class Urgency(StrEnum):
    NOT_YET_ASSIGNED = "not yet assigned"
    UNIMPORTANT = "unimportant"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    END_OF_LIFE = "end-of-life"  # the package has no security support in the release
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Advisory:
    """One issue of one source package, as the tracker has it for one release."""

    id: str
    source: str
    status: Status
    fixed_version: str  # "" when there is none; "0" when the release was never affected
    urgency: Urgency
    nodsa: str  # why no DSA will be issued ("" when one may be)
    nodsa_reason: str  # "ignored", "postponed", or ""
    description: str
    debianbug: int | None


@dataclass(frozen=True)
class Feed:
    path: str
    sha256: str
    size: int
    date: str  # UTC, YYYY-MM-DDTHH:MM:SSZ: --feed-date, or the file's modification time
    release: str
    sources: int  # source packages the feed names, in any release
    advisories: Mapping[str, tuple[Advisory, ...]]  # source package -> its issues in release

    def of(self, source: str) -> tuple[Advisory, ...]:
        return self.advisories.get(source, ())


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_STRICT = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_refuse_constant)
# For the entries no package of the image needs: checked as JSON, not kept.
_PLAIN = json.JSONDecoder(parse_constant=_refuse_constant)


def check_sha256(value: str) -> str:
    """A pinned digest: 64 hex digits, any case."""
    lowered = value.lower().removeprefix("sha256:")
    if not _SHA256.fullmatch(lowered):
        raise UsageError(f"--feed-sha256: {value[:80]!r} is not a sha256 (64 hex digits)")
    return lowered


def read_feed(path: Path, *, release: str, wanted: Collection[str] | None = None,
              sha256: str | None = None, date: dt.datetime | None = None) -> Feed:
    """The tracker data at `path` for `release`, for the source packages in `wanted` (all
    when None). A digest other than `sha256` (when pinned) is a `TrustError`; a malformed
    file is a `UsageError` naming the file and the key."""
    data = read_bytes(path, what="security feed", limit=FEED_LIMIT)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise TrustError(f"{path}: sha256 {digest} is not the pinned {sha256}; fetch the feed "
                         "again or pin the new digest")
    when = date or dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.UTC)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: the security feed is not UTF-8 text (byte {exc.start})"
                         ) from None
    sources, raw = _top_level(text, str(path), wanted)
    advisories: dict[str, tuple[Advisory, ...]] = {}
    for source, entries in raw.items():
        found = _source_entries(source, entries, release, str(path))
        if found:
            advisories[source] = found
    log.debug("%s: %d source packages, %d with issues in %s", path, sources, len(advisories),
              release)
    return Feed(str(path), digest, len(data), when.strftime("%Y-%m-%dT%H:%M:%SZ"), release,
                sources, advisories)


def _top_level(text: str, origin: str, wanted: Collection[str] | None
               ) -> tuple[int, dict[str, Any]]:
    """Walk the top-level object one source package at a time, decoding strictly only the
    ones in `wanted`: the whole export holds some 35,000 source packages and an image some
    200, and the C decoder skips the rest far faster than a checking hook could."""
    kept: dict[str, Any] = {}
    seen: set[str] = set()
    source = ""
    try:
        index = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
        if text[index:index + 1] != "{":
            raise SpecError(origin, "(top level)", "not a JSON object of source packages")
        index = _skip(text, index + 1)
        empty = text[index:index + 1] == "}"
        if empty:
            index = _skip(text, index + 1)
        while not empty:
            key, index = _PLAIN.raw_decode(text, index)
            if not isinstance(key, str):
                raise SpecError(origin, "(top level)", f"expected a source package name at "
                                f"character {index}")
            source = key
            if not _SOURCE.fullmatch(key):
                raise SpecError(origin, _show(key), "not a Debian source package name")
            if key in seen:
                raise SpecError(origin, _show(key), "source package named twice")
            seen.add(key)
            index = _skip(text, index)
            if text[index:index + 1] != ":":
                raise SpecError(origin, _show(key), "expected ':' after the name")
            index = _skip(text, index + 1)
            if wanted is None or key in wanted:
                kept[key], index = _STRICT.raw_decode(text, index)
            else:
                _, index = _PLAIN.raw_decode(text, index)
            index = _skip(text, index)
            separator = text[index:index + 1]
            index = _skip(text, index + 1)
            if separator == "}":
                break
            if separator != ",":
                raise SpecError(origin, _show(key), "expected ',' or '}' after its entries")
        if index != len(text):
            raise SpecError(origin, "(top level)", "data after the end of the JSON object")
    except _Duplicate as exc:
        raise SpecError(origin, _show(source), f"JSON key {_quote(exc.key)} appears twice in "
                        "one object") from None
    except RecursionError:
        raise SpecError(origin, _show(source), "JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, and NaN or Infinity
        where = _show(source) if source else "(top level)"
        raise SpecError(origin, where, f"not valid JSON: {str(exc).splitlines()[0][:120]}"
                        ) from None
    return len(seen), kept


def _skip(text: str, index: int) -> int:
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]


def _show(key: str) -> str:
    """A key from the file, cut and with control characters escaped, for one error line."""
    return json.dumps(key[:60])[1:-1]


def _quote(value: str) -> str:
    """A value from the file, quoted, cut and escaped."""
    return json.dumps(value[:60])


def _source_entries(source: str, entries: Any, release: str, origin: str
                    ) -> tuple[Advisory, ...]:
    if not isinstance(entries, dict):
        raise SpecError(origin, source, "not an object of issues")
    found: list[Advisory] = []
    for issue, entry in entries.items():
        where = f"{source}.{_show(issue)}"
        if not _ID.fullmatch(issue):
            raise SpecError(origin, where, "not an issue id (CVE-YYYY-N or TEMP-N-X)")
        if not isinstance(entry, dict):
            raise SpecError(origin, where, "not an object")
        fields = _Fields(entry, origin, where)
        description = fields.text("description")
        bug = entry.get("debianbug")
        if bug is not None and (not isinstance(bug, int) or isinstance(bug, bool) or bug < 0):
            raise SpecError(origin, f"{where}.debianbug", "not a bug number")
        fields.text("scope")
        releases = entry.get("releases")
        if not isinstance(releases, dict):
            raise SpecError(origin, f"{where}.releases", "missing or not an object")
        for name, state in releases.items():
            advisory = _release_entry(state, origin, f"{where}.releases.{_show(name)}",
                                      issue, source, description, bug)
            if name == release:
                found.append(advisory)
    return tuple(found)


def _release_entry(state: Any, origin: str, where: str, issue: str, source: str,
                   description: str, bug: int | None) -> Advisory:
    if not isinstance(state, dict):
        raise SpecError(origin, where, "not an object")
    fields = _Fields(state, origin, where)
    status = fields.choice("status", Status, required=True)
    # The tracker marks urgencies it took from elsewhere (NVD) with trailing asterisks.
    urgency = fields.choice("urgency", Urgency, required=False, strip="*")
    fixed = fields.text("fixed_version")
    if fixed:
        try:
            Version(fixed)
        except ValueError:
            raise SpecError(origin, f"{where}.fixed_version",
                            f"{_quote(fixed)} is not a Debian version") from None
    if status is Status.RESOLVED and not fixed:
        raise SpecError(origin, f"{where}.fixed_version", "resolved without a fixed version")
    repositories = state.get("repositories", {})
    if not isinstance(repositories, dict) or not all(
            isinstance(v, str) for v in repositories.values()):
        raise SpecError(origin, f"{where}.repositories", "not an object of versions")
    return Advisory(issue, source, status, fixed, urgency or Urgency.NOT_YET_ASSIGNED,
                    fields.text("nodsa"), fields.text("nodsa_reason"),
                    description[:MAX_TEXT], bug)


class _Fields:
    def __init__(self, data: Mapping[str, Any], origin: str, where: str) -> None:
        self.data, self.origin, self.where = data, origin, where

    def text(self, key: str) -> str:
        """An optional string; null and absent are both ""."""
        value = self.data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise SpecError(self.origin, f"{self.where}.{key}", "not a string")
        return value

    def choice(self, key: str, kind: Callable[[str], Any], *, required: bool,
               strip: str = "") -> Any:
        value = self.text(key).rstrip(strip) if strip else self.text(key)
        if not value and not required:
            return None
        try:
            return kind(value)
        except ValueError:
            raise SpecError(self.origin, f"{self.where}.{key}",
                            f"{_quote(value)} is not one of the tracker's values") from None
