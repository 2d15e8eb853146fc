"""Level-2 attestation: a TPM quote over a fresh nonce, checked against the PCRs the signed
manifest predicts, by an AK enrolled on first contact through credential activation.

The quote travels over the same SSH session as the evidence; no agent runs on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hardhost.core.errors import UsageError
from hardhost.image.manifest import HostManifest
from hardhost.verifier.tpm_ak_quote import quote
from hardhost.verifier.tpm_ak_quote import verify as verify_under_ak
from hardhost.verifier.tpm_ek import load_ca_bundle
from hardhost.verifier.tpm_enroll import enroll
from hardhost.verifier.tpm_quote import ClockInfo, QuoteResult, new_nonce
from hardhost.verifier.tpm_registry import AkRegistry, HostId
from hardhost.verifier.transport import Session, Target
from hardhost.verifier.verdict import Finding, Severity

log = logging.getLogger(__name__)


def default_registry() -> Path:
    return Path.home() / ".local/state/hardhost/aks.json"


@dataclass(frozen=True)
class TpmPolicy:
    """How a TPM quote is obtained and judged: the enrolled AKs, the CA the EK certificates
    must chain to (needed to enroll), and whether to replace an enrolled AK."""

    registry: Path
    ca_bundle: Path | None = None
    reenroll: bool = False

    def ca_certs(self) -> tuple[x509.Certificate, ...]:
        if self.ca_bundle is None:
            raise UsageError(f"enrolling a TPM attestation key needs the CA its EK certificate "
                             f"chains to: pass --tpm-ca FILE (for a hardhost vm, the path "
                             f"`hardhost vm start --tpm` printed); the AK registry is "
                             f"{self.registry}")
        return load_ca_bundle(self.ca_bundle)


@dataclass(frozen=True)
class TpmResult:
    findings: tuple[Finding, ...]
    clock: ClockInfo | None  # from a quote whose signature verified, else None


def predictions(manifest: HostManifest, origin: str) -> list[dict[int, str]]:
    """The PCR values a quote may show: the image's own (4, 9, 11, 12, 13) with each recorded
    firmware's 0 and 7. One of them must match entirely."""
    if manifest.boot != "uki" or not manifest.pcrs:
        raise UsageError(f"{origin}: the manifest predicts no PCRs (image {manifest.name} "
                         f"boots {manifest.boot}); --tpm needs an image built by a "
                         "hardhost that boots a UKI, and every current build does: rebuild it")
    image = {int(index): value for index, value in manifest.pcrs.items()}
    firmware = [{int(i): v for i, v in golden.items()} for golden in
                manifest.firmware_pcrs.values()]
    return [image | golden for golden in firmware] or [image]


def _best(results: Sequence[QuoteResult]) -> QuoteResult:
    return min(results, key=lambda result: len(result.findings))


def attest_tpm(session: Session, target: Target, known_hosts: Path, manifest: HostManifest,
               origin: str, policy: TpmPolicy, *, timeout: float) -> TpmResult:
    """Enroll the host's AK if this is the first contact (or re-enrollment was asked for),
    then quote over a fresh nonce and judge the quote against the manifest.

    Raises `TrustError` (exit 4) for an EK outside the trusted CA, a failed credential
    activation, or a quote not signed by the enrolled AK.
    """
    candidates = predictions(manifest, origin)
    registry = AkRegistry(policy.registry)
    host = HostId.from_known_hosts(target, known_hosts)
    ak = registry.get(host)
    if ak is None or policy.reenroll:
        log.info("%s: enrolling the TPM attestation key (credential activation)", target)
        ak = enroll(session, policy.ca_certs(), registry, host, reenroll=policy.reenroll,
                    timeout=timeout)
    nonce = new_nonce()
    quoted = quote(session, ak, nonce, timeout=timeout)
    # The same quote against each recorded firmware's PCR 0 and 7: the firmware the host
    # runs is not something the host may tell us.
    result = _best([verify_under_ak(quoted, ak, nonce, predicted) for predicted in candidates])
    findings = result.findings
    if len(candidates) > 1 and any(f.id in ("tpm.pcr.0", "tpm.pcr.7") for f in findings):
        findings += (Finding("tpm.firmware", Severity.CRITICAL,
                             f"one of {len(candidates)} recorded firmware builds",
                             "PCR 0 or 7 of none of them"),)
    return TpmResult(findings, result.attest.clock_info if result.attest else None)


def reboot_findings(before: ClockInfo | None, after: ClockInfo | None) -> tuple[Finding, ...]:
    """After a reset, the TPM itself must show a reboot: its resetCount advances."""
    if before is None or after is None:
        return (Finding("tpm.reboot", Severity.CRITICAL, "two verified quotes around the reset",
                        "no verified quote to compare"),)
    if not after.rebooted_since(before):
        return (Finding("tpm.reboot", Severity.CRITICAL,
                        f"resetCount above {before.reset_count}",
                        f"resetCount {after.reset_count}"),)
    return ()

