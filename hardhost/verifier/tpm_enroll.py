"""TPM attestation key (AK) enrollment by credential activation.

The host creates an AK under its endorsement key (EK). The verifier checks the EK certificate
against trusted CA certificates (`tpm_ek`), then proves with TPM2_MakeCredential and
TPM2_ActivateCredential (TPM 2.0 Part 1 §24) that the AK lives in the TPM holding the certified
EK; only then does the host persist the AK at a fixed handle, and the verifier record it in
the AK registry (`tpm_registry`). The host's two steps are the fixed scripts
`tpm_enroll_create.sh` and `tpm_enroll_activate.sh`, each sent after `tpm_enroll_common.sh`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hardhost.core.errors import ToolMissing, TrustError, UsageError
from hardhost.core.run import run
from hardhost.verifier.evidence import split_marked_sections
from hardhost.verifier.tpm_ek import EK_CERT_INDICES, ek_key, verify_ek_certificate
from hardhost.verifier.tpm_public import AkAlgorithm, ak_problems, parse_public
from hardhost.verifier.tpm_quote import (
    QuoteFormatError,
    decode_section,
    format_handle,
    host_failure,
)
from hardhost.verifier.tpm_registry import REENROLL_FLAG, AkRegistry, EnrolledAK, HostId
from hardhost.verifier.transport import HostOutputError, Session
from hardhost.verifier.verdict import now

log = logging.getLogger(__name__)

# The AK's persistent handle (Part 2 §7.2: 0x81xxxxxx), the one tpm2-tools' examples and most
# attestation agents use. Quotes use it across reboots: the host's root is read-only and its
# /etc and /var start empty at each boot, so the TPM is where the AK stays. TCG's EK profile
# lets makers persist an ECC EK here too: enrollment then stops rather than evict it.
AK_HANDLE = 0x81010002

_ENROLL_LIMIT = 64 * 1024
_CONTEXT_LIMIT = 16 * 1024  # a tpm2-tools context file of an AK is about 1.6 KB
_SECRET_BYTES = 32  # a credential secret may be at most the EK name hash's size (sha256)

_CREATE_SECTIONS = ("ek_index", "ek_crt", "ak_pub", "ak_name", "ak_ctx", "held_pub", "end")
_ACTIVATE_SECTIONS = ("secret", "end")


def script(step: Literal["create", "activate"]) -> str:
    """The host-side script of enrollment step `step` ("create" or "activate"): the shared
    start, then the step's own text."""
    folder = resources.files("hardhost.verifier")
    return (folder.joinpath("tpm_enroll_common.sh").read_text()
            + folder.joinpath(f"tpm_enroll_{step}.sh").read_text())


def make_credential(ek_public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, ek_alg: str,
                    ak_name: bytes, secret: bytes) -> bytes:
    """TPM2_MakeCredential without a TPM (`tpm2_makecredential -T none`): `secret`, wrapped
    so that only the TPM holding the EK can unwrap it, and only for the object named
    `ak_name`."""
    with tempfile.TemporaryDirectory(prefix="hardhost-credential-") as tmp:
        work = Path(tmp)
        (work / "ek.pem").write_bytes(ek_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (work / "secret.bin").write_bytes(secret)
        try:
            run(["tpm2_makecredential", "-T", "none", "-Q", "-u", work / "ek.pem", "-G", ek_alg,
                 "-s", work / "secret.bin", "-n", ak_name.hex(), "-o", work / "cred.bin"],
                timeout=60)
        except ToolMissing:
            raise ToolMissing("tpm2_makecredential", "tpm2-tools") from None
        return (work / "cred.bin").read_bytes()


def _check_replaceable(held: bytes, handle: str, where: str) -> None:
    """Enrollment replaces the object at the AK's handle; refuse unless that object is a
    restricted signing key, a former AK. Some makers persist an ECC EK at 0x81010002, and
    evicting an EK or a storage key would break whatever relies on it."""
    try:
        public = parse_public(held)
    except QuoteFormatError as exc:
        reason = str(exc).removeprefix("AK public area: ")
    else:
        if public.is_restricted_signing_key:
            return
        reason = "not a restricted signing key"
    raise UsageError(f"{where}: handle {handle} holds an object that is not an attestation key "
                     f"({reason}); enrollment will not evict it. Pass another persistent "
                     f"handle for the AK")


def _run_script(session: Session, text: str, args: Sequence[str], what: str,
                timeout: float | None) -> bytes:
    result = session.run(["/bin/sh", "-s", "--", *args], stdin=text.encode(),
                         timeout=timeout, limit=_ENROLL_LIMIT)
    if result.exit_status != 0:
        raise host_failure(str(session.target), what, result.exit_status, result.stderr)
    return result.stdout


def enroll(session: Session, ca_certs: Sequence[x509.Certificate], registry: AkRegistry,
           host: HostId, *, reenroll: bool = False, algorithm: AkAlgorithm = AkAlgorithm.RSA,
           handle: int = AK_HANDLE, timeout: float | None = None) -> EnrolledAK:
    """Create an AK on the host, prove by credential activation that it is in the TPM of
    the EK certified by `ca_certs`, persist it at `handle`, and record it in `registry`.

    A host already in the registry is re-enrolled only with `reenroll`. Raises `TrustError`
    when any proof fails, and `HostOutputError` for host output that does not parse.
    """
    where = str(session.target)
    if not ca_certs:
        raise UsageError("no trusted CA certificate for EK certificates was given")
    existing = registry.get(host)
    if existing is not None and not reenroll:
        raise UsageError(f"{host.address}: a TPM AK is already enrolled ({existing.name[:16]}…, "
                         f"{existing.enrolled_at}); to replace it, re-enroll explicitly with "
                         f"{REENROLL_FLAG}")
    handle_text = format_handle(handle)
    raw = _run_script(session, script("create"), [handle_text, algorithm.value], "AK creation",
                      timeout)
    sections = split_marked_sections(raw, where, _CREATE_SECTIONS, "TPM enrollment output")
    index = sections["ek_index"].strip()
    if index not in EK_CERT_INDICES.values() or sections["end"].strip():
        raise HostOutputError(f"{where}: malformed TPM enrollment output")
    ek_data = decode_section(sections["ek_crt"], "ek_crt", where)
    ak_pub = decode_section(sections["ak_pub"], "ak_pub", where)
    reported_name = decode_section(sections["ak_name"], "ak_name", where)
    ak_context = decode_section(sections["ak_ctx"], "ak_ctx", where, _CONTEXT_LIMIT)
    held = decode_section(sections["held_pub"], "held_pub", where)
    if held:
        _check_replaceable(held, handle_text, where)
    try:
        ek_cert = verify_ek_certificate(ek_data, ca_certs)
    except TrustError as exc:
        raise TrustError(f"{where}: {exc}") from None
    ek_alg, ek_public = ek_key(ek_cert, index, where)
    try:
        ak = parse_public(ak_pub)
    except QuoteFormatError as exc:
        raise HostOutputError(f"{where}: {exc}") from None
    if not hmac.compare_digest(ak.name, reported_name):
        raise TrustError(f"{where}: the AK name the TPM reported ({reported_name.hex()[:20]}…) "
                         f"is not the name of the AK public area ({ak.name.hex()[:20]}…)")
    problems = ak_problems(ak, algorithm)
    if problems:
        raise TrustError(f"{where}: not a usable attestation key: {'; '.join(problems)}")
    secret = secrets.token_bytes(_SECRET_BYTES)
    # The credential names the AK by the name computed here, not the one the host sent.
    blob = make_credential(ek_public, ek_alg, ak.name, secret)
    # Both blobs are safe in a command line other users may see: the credential opens only
    # inside the TPM, and a context blob is sealed by the TPM's context key (Part 1 §30).
    args = [handle_text, ek_alg, base64.b64encode(blob).decode(),
            base64.b64encode(ak_context).decode()]
    try:
        raw = _run_script(session, script("activate"), args, "credential activation", timeout)
    except HostOutputError as exc:
        raise TrustError(f"{exc}; the AK is not proven to be in the TPM of the certified EK") \
            from None
    sections = split_marked_sections(raw, where, _ACTIVATE_SECTIONS, "credential activation")
    returned = decode_section(sections["secret"], "secret", where)
    if sections["end"].strip() or not hmac.compare_digest(returned, secret):
        raise TrustError(f"{where}: credential activation returned another secret; the AK is "
                         f"not proven to be in the TPM of the certified EK")
    enrolled = EnrolledAK(host, handle, ak.name.hex(), ak.public_pem(),
                          hashlib.sha256(ek_cert.public_bytes(serialization.Encoding.DER))
                          .hexdigest(), now())
    registry.put(enrolled)
    log.info("%s: enrolled TPM AK %s at handle %s", host.address, enrolled.name, handle_text)
    return enrolled

