"""Attest one host: verify the manifest, collect evidence over SSH, compare, and on drift
optionally reset by reboot and attest again."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.inputs import read_bytes
from hardhost.image.manifest import HostManifest
from hardhost.verifier import reset
from hardhost.verifier.comparison import Check, Examination, compare, examine
from hardhost.verifier.evidence import Evidence, collect
from hardhost.verifier.tpm_attest import TpmPolicy, TpmResult, attest_tpm, reboot_findings
from hardhost.verifier.tpm_quote import ClockInfo
from hardhost.verifier.transport import HostOutputError, Session, Target, connect
from hardhost.verifier.verdict import Finding, Severity, Verdict, now

log = logging.getLogger(__name__)

# tpm2_quote over SSH takes 3-5 s on a TCG guest; enrolling (two key creations) more.
TPM_TIMEOUT = 120.0


@dataclass(frozen=True)
class Connection:
    known_hosts: Path
    identity: Path | None  # None: the ssh_config's IdentityFile, ~/.ssh/id_ed25519, ssh-agent
    timeout: float = 30.0
    trust_on_first_use: bool = False
    tpm: TpmPolicy | None = None  # also quote the TPM and check the predicted PCRs
    ssh_config: Path | None = None  # HostName, Port, User, IdentityFile and ProxyJump


def manifest_digest(path: Path) -> str:
    # Bounded and never blocking, like the read that verified it.
    return hashlib.sha256(read_bytes(path, what="manifest")).hexdigest()


@contextmanager
def session_for(target: Target, conn: Connection) -> Iterator[Session]:
    """An SSH session to `target` with the connection options of `conn`."""
    with connect(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=conn.timeout, trust_on_first_use=conn.trust_on_first_use,
                 ssh_config=conn.ssh_config) as session:
        yield session


def _collect(session: Session, manifest: HostManifest, conn: Connection) -> Evidence:
    return collect(session, timeout=conn.timeout, mutable_paths=dict(manifest.mutable_paths))


def _malformed(exc: HostOutputError) -> Finding:
    return Finding("evidence.invalid", Severity.CRITICAL, "well-formed evidence", str(exc))


def examine_host(target: Target, manifest: HostManifest, conn: Connection) -> Examination:
    """Every check `attest` makes of `target`, passing ones too, on the same evidence
    (without the TPM quote). Raises `Unreachable` or `TrustError`; malformed evidence is the
    one failed check `evidence.invalid`."""
    with session_for(target, conn) as session:
        try:
            evidence = _collect(session, manifest, conn)
        except HostOutputError as exc:
            return Examination("", (Check("evidence", "invalid", (_malformed(exc),)),))
    return examine(manifest, evidence)


def attest(target: Target, manifest: HostManifest, digest: str, conn: Connection) -> Verdict:
    """Attest `target`. Raises `Unreachable` or `TrustError`; garbage from the host is a
    finding, not an exception."""
    return _attest(target, manifest, digest, conn)[0]


def _attest(target: Target, manifest: HostManifest, digest: str,
            conn: Connection) -> tuple[Verdict, ClockInfo | None]:
    with session_for(target, conn) as session:
        try:
            evidence = _collect(session, manifest, conn)
        except HostOutputError as exc:
            return Verdict(str(target), "", now(), digest, (_malformed(exc),)), None
        return judge(session, target, manifest, digest, evidence, conn)


def judge(session: Session, target: Target, manifest: HostManifest, digest: str,
          evidence: Evidence, conn: Connection) -> tuple[Verdict, ClockInfo | None]:
    """The verdict on `evidence` (collected over `session`) against `manifest`, with the TPM
    quote over the same session when `conn` asks for one."""
    findings = compare(manifest, evidence)
    clock = None
    if conn.tpm is not None:
        try:
            tpm = attest_tpm(session, target, conn.known_hosts, manifest, "the manifest",
                             conn.tpm, timeout=max(conn.timeout, TPM_TIMEOUT))
        except HostOutputError as exc:
            tpm = TpmResult((Finding("tpm.quote.malformed", Severity.CRITICAL,
                                     "a TPM quote", str(exc)),), None)
        findings, clock = (*findings, *tpm.findings), tpm.clock
    return Verdict(str(target), evidence.boot_id, now(), digest, tuple(findings),
                   image_version=manifest.version), clock


def attest_and_reset(target: Target, manifest: HostManifest, digest: str, conn: Connection,
                     reset_timeout: float) -> tuple[Verdict, Verdict | None]:
    """Attest; on drift, reboot, wait for a new boot_id, and attest again. Returns the
    verdict before and, when the host was reset, the one after. With a TPM policy, the
    quote after must also show the reboot (`tpm.reboot`: resetCount advanced).

    The one reset of hardhost: `attest --reset`, the fleet's reset and the Ansible reset
    all come here. Raises `Unreachable` when the host does not answer, refuses the reboot
    or is not back with a new boot_id within `reset_timeout` seconds; `TrustError`."""
    before, clock = _attest(target, manifest, digest, conn)
    if before.status == "pass":
        return before, None
    log.info("%s: drift found; resetting by reboot", target)
    reset.reboot(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=reset_timeout, connect_timeout=min(conn.timeout, reset.RECONNECT_TIMEOUT),
                 ssh_config=conn.ssh_config)
    after, clock_after = _attest(target, manifest, digest, conn)
    if conn.tpm is not None:
        after = dataclasses.replace(after, findings=(*after.findings,
                                                     *reboot_findings(clock, clock_after)))
    return before, after
