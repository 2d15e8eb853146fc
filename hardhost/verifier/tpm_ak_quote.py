"""Quotes by an enrolled attestation key (AK): the host quotes with the AK at the handle the
registry recorded, and a quote that AK did not sign is a `TrustError`, not a finding.
"""

from __future__ import annotations

from collections.abc import Mapping

from hardhost.core.errors import TrustError
from hardhost.verifier.tpm_quote import Quote, QuoteResult, collect, new_nonce, verify_quote
from hardhost.verifier.tpm_registry import REENROLL_FLAG, AkRegistry, EnrolledAK, HostId
from hardhost.verifier.transport import Session


def quote(session: Session, ak: EnrolledAK, nonce: str, *,
          timeout: float | None = None) -> Quote:
    """A quote of the host's PCRs by the AK at its enrolled handle, over `nonce`."""
    return collect(session, nonce, ak.handle, timeout=timeout)


def verify(quote: Quote, ak: EnrolledAK, nonce: str,
           predicted: Mapping[int, str]) -> QuoteResult:
    """Verify `quote` as `verify_quote` does, under the enrolled AK. A signature that does
    not verify under that AK is a `TrustError`, not a finding: the host is answering with a
    key nobody enrolled."""
    result = verify_quote(quote, ak.public_pem, nonce, predicted)
    if any(f.id == "tpm.quote.signature" for f in result.findings):
        raise TrustError(f"{ak.host.address}: the TPM quote is not signed by the AK enrolled "
                         f"on {ak.enrolled_at} ({ak.name[:16]}…); if the TPM was cleared or "
                         f"replaced, re-enroll the host explicitly with {REENROLL_FLAG}")
    return result


def attest_tpm(session: Session, registry: AkRegistry, host: HostId,
               predicted: Mapping[int, str], *, timeout: float | None = None) -> QuoteResult:
    """Quote the host over a fresh nonce and verify it under its enrolled AK."""
    ak = registry.get(host)
    if ak is None:
        raise TrustError(f"{host.address}: no TPM AK is enrolled for this host (SSH key "
                         f"{host.ssh_host_key}) in {registry.path}; enroll it first")
    nonce = new_nonce()
    return verify(quote(session, ak, nonce, timeout=timeout), ak, nonce, predicted)
