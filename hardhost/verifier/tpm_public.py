"""TPM2B_PUBLIC: the public area of a TPM key, parsed strictly, and the checks that make it a
usable attestation key (AK).

Section numbers cite TPM 2.0 Library Part 2 (Structures), revision 1.59. The public area is
host output: every length is checked against what is left and nothing may trail.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hardhost.verifier.tpm_quote import (
    TPM_ALG_ECDSA,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    QuoteFormatError,
    Reader,
)


class AkAlgorithm(enum.StrEnum):
    RSA = "rsa"  # RSA 2048, RSASSA-PKCS1v1.5 with SHA-256
    ECC = "ecc"  # NIST P-256, ECDSA with SHA-256


# TPMA_OBJECT bits (Part 2 §8.3.2) an AK must have, and one it must not.
_REQUIRED_ATTRIBUTES = {"fixedTPM": 1 << 1, "fixedParent": 1 << 4,
                        "sensitiveDataOrigin": 1 << 5, "restricted": 1 << 16, "sign": 1 << 18}
_DECRYPT = 1 << 17
_TPM_ALG_RSA, _TPM_ALG_ECC, _TPM_ALG_NULL = 0x0001, 0x0023, 0x0010
_TPM_ALG_RSAES, _TPM_ALG_ECDAA = 0x0015, 0x001A
_TPM_ECC_NIST_P256 = 0x0003


@dataclass(frozen=True)
class AkPublic:
    """A parsed TPM2B_PUBLIC (Part 2 §12.2.5) of an RSA or NIST P-256 key, with its name."""

    type: int
    name_alg: int
    attributes: int
    symmetric: int
    scheme: int
    scheme_hash: int
    curve: int  # 0 for RSA
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    name: bytes  # nameAlg || H(TPMT_PUBLIC), Part 1 §16

    def public_pem(self) -> str:
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    @property
    def is_restricted_signing_key(self) -> bool:
        """Restricted, signing and not decrypting: what an AK is, and what no EK or storage
        key is."""
        needed = _REQUIRED_ATTRIBUTES["restricted"] | _REQUIRED_ATTRIBUTES["sign"]
        return self.attributes & needed == needed and not self.attributes & _DECRYPT


def _scheme_details(r: Reader, scheme: int) -> int:
    """The hash of a TPMT_RSA_SCHEME or TPMT_ECC_SCHEME (Part 2 §11.2.4.2, §11.2.5.6):
    none for NULL and RSAES, and ECDAA adds a count."""
    if scheme in (_TPM_ALG_NULL, _TPM_ALG_RSAES):
        return 0
    hash_alg = r.u16("scheme.hashAlg")
    if scheme == _TPM_ALG_ECDAA:
        r.u16("scheme.count")
    return hash_alg


def parse_public(data: bytes) -> AkPublic:
    """Parse the file `tpm2_createak -u` writes: a marshalled TPM2B_PUBLIC."""
    outer = Reader(data, "AK public area")
    area = outer.tpm2b("size", 1024)
    outer.finish()
    r = Reader(area, "AK public area")
    kind = r.u16("type")
    name_alg = r.u16("nameAlg")
    attributes = r.u32("objectAttributes")
    r.tpm2b("authPolicy", 64)
    symmetric = r.u16("symmetric.algorithm")  # TPMT_SYM_DEF_OBJECT (§11.1.7)
    if symmetric != _TPM_ALG_NULL:
        r.take(4, "symmetric.keyBits and mode")
    scheme = r.u16("scheme.scheme")
    scheme_hash = _scheme_details(r, scheme)
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if kind == _TPM_ALG_RSA:  # TPMS_RSA_PARMS (§12.2.3.5)
        bits = r.u16("keyBits")
        # An exponent of zero means the default, 2^16 + 1.
        exponent = r.u32("exponent") or 65537
        modulus = r.tpm2b("unique.rsa", 512)
        if len(modulus) * 8 != bits:
            raise QuoteFormatError(f"AK public area: a {len(modulus) * 8}-bit modulus for "
                                   f"keyBits {bits}")
        try:
            key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        except ValueError as exc:
            raise QuoteFormatError(f"AK public area: not an RSA key: {exc}") from None
        curve = 0
    elif kind == _TPM_ALG_ECC:  # TPMS_ECC_PARMS (§12.2.3.6)
        curve = r.u16("curveID")
        kdf = r.u16("kdf.scheme")
        if kdf != _TPM_ALG_NULL:
            r.u16("kdf.hashAlg")
        x = r.tpm2b("unique.x", 66)
        y = r.tpm2b("unique.y", 66)
        if curve != _TPM_ECC_NIST_P256:
            raise QuoteFormatError(f"AK public area: curve 0x{curve:04x} is not NIST P-256")
        if len(x) > 32 or len(y) > 32:
            raise QuoteFormatError("AK public area: a P-256 coordinate longer than 32 bytes")
        point = b"\x04" + x.rjust(32, b"\0") + y.rjust(32, b"\0")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError as exc:
            raise QuoteFormatError(f"AK public area: not a P-256 point: {exc}") from None
    else:
        raise QuoteFormatError(f"AK public area: type 0x{kind:04x} is neither RSA nor ECC")
    r.finish()
    if name_alg != TPM_ALG_SHA256:
        raise QuoteFormatError(f"AK public area: nameAlg 0x{name_alg:04x} is not sha256")
    name = name_alg.to_bytes(2, "big") + hashlib.sha256(area).digest()
    return AkPublic(kind, name_alg, attributes, symmetric, scheme, scheme_hash, curve, key, name)


def ak_problems(ak: AkPublic, algorithm: AkAlgorithm) -> list[str]:
    """Why `ak` is not a restricted signing key of the kind asked for; empty when it is."""
    problems = [f"{name} is clear" for name, bit in _REQUIRED_ATTRIBUTES.items()
                if not ak.attributes & bit]
    if ak.attributes & _DECRYPT:
        problems.append("decrypt is set")
    if ak.symmetric != _TPM_ALG_NULL:
        problems.append(f"symmetric algorithm 0x{ak.symmetric:04x} is not NULL")
    want = ((_TPM_ALG_RSA, TPM_ALG_RSASSA) if algorithm is AkAlgorithm.RSA
            else (_TPM_ALG_ECC, TPM_ALG_ECDSA))
    if (ak.type, ak.scheme, ak.scheme_hash) != (*want, TPM_ALG_SHA256):
        problems.append(f"type 0x{ak.type:04x} with scheme 0x{ak.scheme:04x} and hash "
                        f"0x{ak.scheme_hash:04x} is not {algorithm.value} with "
                        f"{'RSASSA' if algorithm is AkAlgorithm.RSA else 'ECDSA'}/sha256")
    if isinstance(ak.key, rsa.RSAPublicKey) and ak.key.key_size < 2048:
        problems.append(f"an RSA key of {ak.key.key_size} bits")
    return problems
