"""Attest one host: verify the manifest, collect evidence over SSH, compare, and on drift
optionally reset by reboot and attest again."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from builder.manifest import HostManifest
from verifier import reset
from verifier.compare import compare
from verifier.evidence import collect
from verifier.transport import HostOutputError, Target, connect
from verifier.verdict import Finding, Severity, Verdict, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Connection:
    known_hosts: Path
    identity: Path
    timeout: float = 30.0
    trust_on_first_use: bool = False


def manifest_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def attest(target: Target, manifest: HostManifest, digest: str, conn: Connection) -> Verdict:
    """Attest `target`. Raises `Unreachable` or `TrustError`; garbage from the host is a
    finding, not an exception."""
    with connect(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=conn.timeout, trust_on_first_use=conn.trust_on_first_use) as session:
        try:
            evidence = collect(session, timeout=conn.timeout)
        except HostOutputError as exc:
            return Verdict(str(target), "", now(), digest, (
                Finding("evidence.invalid", Severity.CRITICAL, "well-formed evidence",
                        str(exc)),))
    return Verdict(str(target), evidence.boot_id, now(), digest, compare(manifest, evidence))


def attest_and_reset(target: Target, manifest: HostManifest, digest: str, conn: Connection,
                     reset_timeout: float) -> tuple[Verdict, Verdict | None]:
    """Attest; on drift, reboot, wait for a new boot_id, and attest again."""
    first = attest(target, manifest, digest, conn)
    if first.status == "pass":
        return first, None
    log.info("%s: drift found; resetting by reboot", target)
    reset.reboot(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=reset_timeout, connect_timeout=min(conn.timeout, 15.0))
    return first, attest(target, manifest, digest, conn)
