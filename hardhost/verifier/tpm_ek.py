"""The EK certificate: read from the TPM's NV index, and checked to chain to a trusted CA.

A TPM's maker certifies its endorsement key (EK); trusting the EK certificate's CA is what
lets enrollment trust a TPM it has never seen. EK certificates fit no web PKI profile (an
empty subject, a critical subjectAltName with TPM attributes), so the chain check here is a
deliberate, small one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from hardhost.core.errors import TrustError, UsageError
from hardhost.core.inputs import read_bytes

# Where the TPM maker stores EK certificates (TCG EK Credential Profile 2.x, low range).
EK_CERT_INDICES = {"rsa": "0x01c00002", "ecc": "0x01c0000a"}

_MAX_CHAIN = 5

# Critical extensions this module understands and checks, or that carry no constraint a
# verifier must enforce on an EK: TCG puts the TPM's maker, model and version in a critical
# subjectAltName directoryName, which RFC 5280 allows.
_UNDERSTOOD_CRITICAL = {ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.BASIC_CONSTRAINTS,
                        ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
                        ExtensionOID.CERTIFICATE_POLICIES}


def load_ca_bundle(path: Path) -> tuple[x509.Certificate, ...]:
    """Read the trusted CA certificates for EK certificates from a PEM file."""
    data = read_bytes(path, what="EK CA bundle")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise UsageError(f"{path}: not a PEM certificate bundle: {exc}") from None
    return tuple(certs)


def _der_length(data: bytes) -> int:
    """The length of the DER element at the start of `data`, header included."""
    if len(data) < 2 or data[0] != 0x30:
        raise TrustError("EK certificate: not a DER SEQUENCE")
    if data[1] < 0x80:
        return 2 + data[1]
    octets = data[1] & 0x7F
    if not 1 <= octets <= 3 or len(data) < 2 + octets:
        raise TrustError("EK certificate: bad DER length")
    return 2 + octets + int.from_bytes(data[2:2 + octets], "big")


def trim_nv_padding(data: bytes) -> bytes:
    """The certificate in an EK NV index. Some TPMs size the index larger than the
    certificate and fill the rest with 0x00 or 0xff; anything else after it is refused."""
    length = _der_length(data)
    if length > len(data):
        raise TrustError(f"EK certificate: truncated ({len(data)} of {length} bytes)")
    rest = data[length:]
    if rest.strip(b"\0") and rest.strip(b"\xff"):
        raise TrustError(f"EK certificate: {len(rest)} bytes of data after the certificate")
    return data[:length]


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _check_certificate(cert: x509.Certificate, role: str, when: dt.datetime, *,
                       ca: bool) -> None:
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise TrustError(f"{role} {_describe(cert)}: valid only from "
                         f"{cert.not_valid_before_utc:%Y-%m-%d} to "
                         f"{cert.not_valid_after_utc:%Y-%m-%d}")
    try:
        extensions = list(cert.extensions)
    except ValueError as exc:
        raise TrustError(f"{role} {_describe(cert)}: unreadable extensions: {exc}") from None
    for ext in extensions:
        if ext.critical and ext.oid not in _UNDERSTOOD_CRITICAL:
            raise TrustError(f"{role} {_describe(cert)}: unrecognised critical extension "
                             f"{ext.oid.dotted_string}")
    if ca:
        constraints = [e.value for e in extensions if isinstance(e.value, x509.BasicConstraints)]
        if not constraints or not constraints[0].ca:
            raise TrustError(f"{role} {_describe(cert)}: not a CA certificate")
        usage = [e.value for e in extensions if isinstance(e.value, x509.KeyUsage)]
        if usage and not usage[0].key_cert_sign:
            raise TrustError(f"{role} {_describe(cert)}: its key usage excludes certificates")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_ek_certificate(data: bytes, trusted: Sequence[x509.Certificate], *,
                          when: dt.datetime | None = None) -> x509.Certificate:
    """Check that the EK certificate read from NV chains, through certificates in `trusted`,
    to a self-signed certificate in `trusted`; return it. Raises `TrustError`.

    This is a deliberate, small path check (names, signatures, validity, CA flags, and no
    critical extension left unread), because EK certificates fit no web PKI profile: they
    have an empty subject and a critical subjectAltName with TPM attributes.
    """
    try:
        cert = x509.load_der_x509_certificate(trim_nv_padding(data))
    except ValueError as exc:
        raise TrustError(f"EK certificate: not an X.509 certificate: {exc}") from None
    moment = when or dt.datetime.now(dt.UTC)
    _check_certificate(cert, "EK certificate", moment, ca=False)
    current = cert
    for _ in range(_MAX_CHAIN):
        issuers = [c for c in trusted if _issued_by(current, c)]
        if not issuers:
            what = "EK certificate" if current is cert else f"CA certificate {_describe(current)}"
            raise TrustError(f"{what}: its issuer {current.issuer.rfc4514_string()} is not "
                             f"among the {len(trusted)} trusted CA certificates, or did not "
                             f"sign it; add the issuing CA's certificate to the bundle")
        issuer = issuers[0]
        _check_certificate(issuer, "CA certificate", moment, ca=True)
        if issuer.subject == issuer.issuer and _issued_by(issuer, issuer):
            return cert
        current = issuer
    raise TrustError(f"EK certificate: no self-signed CA within {_MAX_CHAIN} certificates")


def ek_key(cert: x509.Certificate, index: str,
           host: str) -> tuple[str, rsa.RSAPublicKey | ec.EllipticCurvePublicKey]:
    """The EK's public key, and its algorithm as tpm2_createek and tpm2_makecredential name
    it (both use TCG's default EK templates: RSA 2048 and NIST P-256)."""
    key = cert.public_key()
    ek: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048:
        alg, ek = "rsa", key
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        alg, ek = "ecc", key
    else:
        raise TrustError(f"{host}: the EK certificate's key is neither RSA 2048 nor NIST P-256")
    if EK_CERT_INDICES[alg] != index:
        raise TrustError(f"{host}: an {alg} EK certificate at NV index {index}")
    return alg, ek

