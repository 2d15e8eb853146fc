"""The AK registry: which attestation key (AK) each host enrolled, in one JSON file of public
data, keyed by the host's SSH address and the host key known_hosts pins for it.

A host's entry is replaced only by an explicit re-enrollment (`REENROLL_FLAG`): a quote by
any other key is a `TrustError`, never a reason to trust the new key.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from hardhost.core.errors import UsageError
from hardhost.core.inputs import LARGE_FILE, load_json
from hardhost.verifier.transport import Target, fingerprint

# The command-line flag a caller wires to `reenroll=True`; error messages name it.
REENROLL_FLAG = "--tpm-reenroll"


@dataclass(frozen=True)
class HostId:
    """Who an AK belongs to: the SSH address and the host key known_hosts pins for it."""

    address: str  # "host:port"
    ssh_host_key: str  # "SHA256:…", several joined by "," when known_hosts has several

    @property
    def key(self) -> str:
        return f"{self.address} {self.ssh_host_key}"

    @classmethod
    def from_known_hosts(cls, target: Target, known_hosts: Path) -> HostId:
        try:
            keys = paramiko.HostKeys(str(known_hosts)).lookup(target.known_hosts_name)
        except (OSError, paramiko.SSHException) as exc:
            raise UsageError(f"{known_hosts}: cannot read: {exc}") from None
        if not keys:
            raise UsageError(f"{known_hosts}: no host key for {target.known_hosts_name}")
        host = f"[{target.host}]" if ":" in target.host else target.host
        prints = sorted(fingerprint(keys[kind]) for kind in keys)
        return cls(f"{host}:{target.port}", ",".join(prints))


@dataclass(frozen=True)
class EnrolledAK:
    host: HostId
    handle: int
    name: str  # hex of nameAlg || sha256(TPMT_PUBLIC)
    public_pem: str
    ek_certificate_sha256: str
    enrolled_at: str

    def to_dict(self) -> dict[str, str]:
        return {"address": self.host.address, "ssh_host_key": self.host.ssh_host_key,
                "ak_handle": f"0x{self.handle:08x}", "ak_name": self.name,
                "ak_public_pem": self.public_pem,
                "ek_certificate_sha256": self.ek_certificate_sha256,
                "enrolled_at": self.enrolled_at}


_REGISTRY_FORMAT = "hardhost-ak-registry/1"
_FINGERPRINT = r"SHA256:[A-Za-z0-9+/]{43}"
_ENTRY_FIELDS = {"address": re.compile(r"^\S+:\d{1,5}$"),
                 "ssh_host_key": re.compile(rf"^{_FINGERPRINT}(,{_FINGERPRINT})*$"),
                 "ak_handle": re.compile(r"^0x81[0-9a-f]{6}$"),
                 "ak_name": re.compile(r"^000b[0-9a-f]{64}$"),
                 "ak_public_pem": re.compile(r"^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+"
                                             r"-----END PUBLIC KEY-----\n$"),
                 "ek_certificate_sha256": re.compile(r"^[0-9a-f]{64}$"),
                 "enrolled_at": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")}


class AkRegistry:
    """The enrolled AK of each host, in one JSON file of public data. Updates hold an
    exclusive lock and replace the file by rename, so concurrent enrollments keep each
    other's entries and a crash never leaves half a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, host: HostId) -> EnrolledAK | None:
        return self._read().get(host.key)

    def put(self, ak: EnrolledAK) -> None:
        with self._locked():
            entries = self._read()
            entries[ak.host.key] = ak
            self._write(entries)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        if lock_path.is_symlink() or (lock_path.exists() and not lock_path.is_file()):
            raise UsageError(f"{lock_path}: the AK registry's lock is not a regular file")
        try:
            # Not open(..., "a"): a FIFO planted at the lock's name would block forever.
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"{lock_path}: cannot lock the AK registry: {exc.strerror}") \
                from None
        with os.fdopen(fd, "w") as lock:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"{lock_path}: the AK registry's lock is not a regular file")
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _bad(self, where: str, problem: str) -> UsageError:
        return UsageError(f"{self.path}: {where}: {problem}")

    def _read(self) -> dict[str, EnrolledAK]:
        if not os.path.lexists(self.path):
            return {}  # nothing enrolled yet
        # Bounded and never blocking: the registry is a path a user may give, and about
        # 700 bytes a host leave room for a fleet of some 90,000 hosts.
        data = load_json(self.path, what="AK registry", limit=LARGE_FILE)
        if not isinstance(data, dict) or data.get("format") != _REGISTRY_FORMAT:
            raise self._bad("format", f"expected {_REGISTRY_FORMAT!r}")
        hosts = data.get("hosts")
        if not isinstance(hosts, dict) or set(data) != {"format", "hosts"}:
            raise self._bad("hosts", "expected an object of hosts and nothing else")
        return {key: self._entry(key, value) for key, value in hosts.items()}

    def _entry(self, key: str, value: Any) -> EnrolledAK:
        if not isinstance(value, dict) or set(value) != set(_ENTRY_FIELDS):
            raise self._bad(f"hosts.{key[:80]}", f"expected exactly the keys "
                                            f"{', '.join(sorted(_ENTRY_FIELDS))}")
        for name, pattern in _ENTRY_FIELDS.items():
            if not isinstance(value[name], str) or not pattern.match(value[name]):
                raise self._bad(f"hosts.{key[:80]}.{name}",
                                f"malformed value {value[name]!r:.80}")
        host = HostId(value["address"], value["ssh_host_key"])
        if host.key != key:
            raise self._bad(f"hosts.{key[:80]}", f"recorded for {host.key!r:.80}")
        return EnrolledAK(host, int(value["ak_handle"], 16), value["ak_name"],
                          value["ak_public_pem"], value["ek_certificate_sha256"],
                          value["enrolled_at"])

    def _write(self, entries: Mapping[str, EnrolledAK]) -> None:
        data = {"format": _REGISTRY_FORMAT,
                "hosts": {key: entries[key].to_dict() for key in sorted(entries)}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # public keys and names only
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
