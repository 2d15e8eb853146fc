"""known_hosts as OpenSSH writes it, read strictly (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").

Each line is `[@marker] PATTERNS KEYTYPE BASE64 [comment]`. PATTERNS is a comma-separated
list of names with `*`, `?` and `!` negation, `[host]:port` for a port other than 22, or one
hashed name `|1|SALT|HMAC-SHA1`. paramiko's `HostKeys` drops marker lines, so a revoked key
would be trusted through another line: this parser honours `@revoked` wherever it appears,
and gives `@cert-authority` lines no trust at all (hardhost accepts no host certificates).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import functools
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.pkey import UnknownKeyType

from hardhost.core.errors import TrustError, UsageError
from hardhost.core.inputs import LARGE_FILE, file_version, read_text

log = logging.getLogger(__name__)

WHAT = "known_hosts file"
_HASHED = re.compile(r"^\|1\|(?P<salt>[A-Za-z0-9+/=]+)\|(?P<digest>[A-Za-z0-9+/=]+)$")
_SHA1 = 20  # bytes of an HMAC-SHA1, and of the salt OpenSSH draws for it


@dataclass(frozen=True)
class _Line:
    """A line whose names need matching: wildcards, negations, or a hashed name."""

    number: int
    allow: tuple[re.Pattern[str], ...]
    deny: tuple[re.Pattern[str], ...]
    hashed: tuple[bytes, bytes] | None  # (salt, HMAC-SHA1 of the name)
    key: paramiko.PKey

    def matches(self, name: str) -> bool:
        if self.hashed is not None:
            salt, digest = self.hashed
            return hmac.compare_digest(
                hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
        if any(p.fullmatch(name) for p in self.deny):
            return False
        return any(p.fullmatch(name) for p in self.allow)


@dataclass(frozen=True)
class KnownHosts:
    """One parsed version of a known_hosts file."""

    path: Path
    exact: Mapping[str, tuple[paramiko.PKey, ...]]  # plain names, looked up in O(1)
    patterned: tuple[_Line, ...]
    revoked: frozenset[bytes]  # key blobs of every @revoked line

    def keys_for(self, name: str) -> list[paramiko.PKey]:
        """The trusted keys of `name` (`host`, or `[host]:port` for a port other than 22)."""
        name = name.lower()
        keys = list(self.exact.get(name, ()))
        keys.extend(line.key for line in self.patterned if line.matches(name))
        return keys

    def check(self, name: str, key: paramiko.PKey, who: str) -> bool:
        """True if `key` is trusted for `name`, False if `name` has no key here. A revoked
        key, or a key other than the one recorded, is a `TrustError`."""
        blob = key.asbytes()
        if blob in self.revoked:
            # sshd(8): a revoked key "must not ever be accepted", whatever other line lists it.
            raise TrustError(f"{who}: host key {key.get_name()} {fingerprint(key)} is marked "
                             f"@revoked in {self.path}; refusing to connect")
        known = self.keys_for(name)
        if any(k.asbytes() == blob for k in known):
            return True
        if known:
            raise TrustError(f"{who}: host key changed: offered {key.get_name()} "
                             f"{fingerprint(key)}, {self.path} has "
                             f"{', '.join(fingerprint(k) for k in known)}")
        return False

    def key_types(self, name: str) -> set[str]:
        return {k.get_name() for k in self.keys_for(name)}


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load(path: Path) -> KnownHosts:
    """The parsed file at `path`. A fleet connects to every host of one large file: it is
    parsed once per file version (device, inode, mtime, size), not once per connection."""
    return _parse_version(*file_version(path, what=WHAT))


@functools.lru_cache(maxsize=8)
def _parse_version(path: str, dev: int, ino: int, mtime_ns: int, size: int) -> KnownHosts:
    return parse(read_text(Path(path), what=WHAT, limit=LARGE_FILE), Path(path))


_warned_ca: set[str] = set()


def parse(text: str, path: Path) -> KnownHosts:
    """Parse known_hosts text; a malformed line is a `UsageError` naming `path` and line."""
    exact: dict[str, list[paramiko.PKey]] = {}
    patterned: list[_Line] = []
    revoked: set[bytes] = set()
    authorities = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if marker not in (None, "@revoked", "@cert-authority"):
            raise _malformed(path, number, f"unknown marker {marker[:40]!r}")
        if len(fields) < 3:
            raise _malformed(path, number, "expected HOSTS KEYTYPE BASE64")
        names, key_type, key_text = fields[:3]
        hashed, allow, deny = _patterns(path, number, names)
        key = _key(path, number, key_type, key_text)
        if key is None:
            continue
        if marker == "@revoked":
            revoked.add(key.asbytes())
            continue
        if marker == "@cert-authority":
            authorities += 1
            continue
        if hashed is None and not deny and all(_plain(p) for p in allow):
            for name in allow:
                exact.setdefault(name, []).append(key)
        else:
            patterned.append(_Line(number, tuple(_compile(p) for p in allow),
                                   tuple(_compile(p) for p in deny), hashed, key))
    if authorities and str(path) not in _warned_ca:
        _warned_ca.add(str(path))
        log.warning("%s: %d @cert-authority lines grant no trust: hardhost checks host keys, "
                    "not host certificates", path, authorities)
    return KnownHosts(path, {k: tuple(v) for k, v in exact.items()}, tuple(patterned),
                      frozenset(revoked))


def _malformed(path: Path, number: int, problem: str) -> UsageError:
    return UsageError(f"{path}: line {number}: malformed known_hosts line: {problem}. Fix with: "
                      f"ssh-keygen -R HOST -f {path}, or delete the line")


def _key(path: Path, number: int, key_type: str, key_text: str) -> paramiko.PKey | None:
    try:
        blob = base64.b64decode(key_text, validate=True)
    except binascii.Error:
        raise _malformed(path, number, "the key is not base64") from None
    try:
        return paramiko.PKey.from_type_string(key_type, blob)
    except UnknownKeyType:
        # OpenSSH knows types paramiko does not (security keys, say): no host can offer such
        # a key to paramiko, so the line can neither grant nor revoke anything here.
        log.debug("%s: line %d: key type %s is not supported; line skipped", path, number,
                  key_type[:40])
        return None
    except (paramiko.SSHException, ValueError, TypeError, IndexError) as exc:
        raise _malformed(path, number, f"the {key_type[:40]} key does not parse ({exc})"
                         ) from None


def _patterns(path: Path, number: int, names: str
              ) -> tuple[tuple[bytes, bytes] | None, list[str], list[str]]:
    if names.startswith("|"):
        match = _HASHED.match(names)
        if not match:
            raise _malformed(path, number, "a hashed name must be |1|SALT|HASH")
        try:
            salt = base64.b64decode(match["salt"], validate=True)
            digest = base64.b64decode(match["digest"], validate=True)
        except binascii.Error:
            raise _malformed(path, number, "the hashed name is not base64") from None
        if len(salt) != _SHA1 or len(digest) != _SHA1:
            raise _malformed(path, number, "the hashed name's salt or hash is not 20 bytes")
        return (salt, digest), [], []
    allow, deny = [], []
    for pattern in names.lower().split(","):
        if pattern.startswith("!"):
            deny.append(pattern[1:])
        else:
            allow.append(pattern)
    if not all(allow + deny):
        raise _malformed(path, number, "an empty host name")
    return None, allow, deny


def _plain(pattern: str) -> bool:
    return "*" not in pattern and "?" not in pattern


def _compile(pattern: str) -> re.Pattern[str]:
    # OpenSSH's match_pattern knows only `*` and `?`; `[` is literal (as in `[host]:port`).
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in pattern))


_record_lock = threading.Lock()


def record(path: Path, name: str, key: paramiko.PKey, who: str) -> None:
    """Trust on first use: append `name`'s key to `path` unless it is there already.

    Threads of one fleet serialise on a lock, and processes on flock(2); under both the file is
    read again, so ten inventory hosts behind one address:port record one line, and a host
    whose key another writer recorded meanwhile is checked against that key.
    """
    with _record_lock:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NONBLOCK | os.O_NOCTTY, 0o644)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write the {WHAT}: {exc.strerror}") from None
        with os.fdopen(fd, "ab") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"{path}: the {WHAT} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = read_text(path, what=WHAT, limit=LARGE_FILE)
            current = parse(text, path)
            if current.check(name, key, who):
                return
            log.warning("%s: trusting host key %s %s on first use; recorded in %s", who,
                        key.get_name(), fingerprint(key), path)
            # What ssh(1) writes with HashKnownHosts off: the name, the type, the key.
            line = f"{name.lower()} {key.get_name()} {key.get_base64()}\n"
            f.write((b"\n" if text and not text.endswith("\n") else b"") + line.encode())
            f.flush()
            os.fsync(fd)
