"""TPM attestation key (AK) enrollment by credential activation, and the registry of AKs.

The host creates an AK under its endorsement key (EK). The verifier checks the EK certificate
against trusted CA certificates, then proves with TPM2_MakeCredential and
TPM2_ActivateCredential (TPM 2.0 Part 1 §24) that the AK lives in the TPM holding the certified
EK; only then does the host persist the AK at a fixed handle, and the verifier record it.
Later quotes count only when signed by the recorded AK: any other key is a `TrustError` until
the host is re-enrolled explicitly.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from hardhost.core.errors import ToolMissing, TrustError, UsageError
from hardhost.core.inputs import LARGE_FILE, load_json, read_bytes
from hardhost.core.run import run
from hardhost.verifier.evidence import split_marked_sections
from hardhost.verifier.tpm_quote import (
    TPM_ALG_ECDSA,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    Quote,
    QuoteFormatError,
    QuoteResult,
    Reader,
    collect,
    decode_section,
    format_handle,
    host_failure,
    new_nonce,
    verify_quote,
)
from hardhost.verifier.transport import HostOutputError, Session, Target, fingerprint
from hardhost.verifier.verdict import now

log = logging.getLogger(__name__)

# The AK's persistent handle (Part 2 §7.2: 0x81xxxxxx), the one tpm2-tools' examples and most
# attestation agents use. Quotes use it across reboots: the host's root is read-only and its
# /etc and /var start empty at each boot, so the TPM is where the AK stays. TCG's EK profile
# lets makers persist an ECC EK here too: enrollment then stops rather than evict it.
AK_HANDLE = 0x81010002
# The command-line flag a caller wires to `reenroll=True`; error messages name it.
REENROLL_FLAG = "--tpm-reenroll"

# Where the TPM maker stores EK certificates (TCG EK Credential Profile 2.x, low range).
EK_CERT_INDICES = {"rsa": "0x01c00002", "ecc": "0x01c0000a"}

_ENROLL_LIMIT = 64 * 1024
_CONTEXT_LIMIT = 16 * 1024  # a tpm2-tools context file of an AK is about 1.6 KB
_SECRET_BYTES = 32  # a credential secret may be at most the EK name hash's size (sha256)
_MAX_CHAIN = 5

# The start of both host-side enrollment scripts, after each has checked its argument count:
# $1 must be a persistent handle and $2 rsa or ecc. Both work in a private folder, removed
# on exit with the TPM objects and session they loaded. Without a resource manager (swtpm in
# tests) loaded objects outlive each tool, and a TPM may have only three object slots, so
# the scripts flush after each step; with /dev/tpmrm0 flushing is a no-op.
_SCRIPT_START = r"""
case $1 in
0x81[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
*) echo "AK handle: not a persistent handle" >&2; exit 2 ;;
esac
case $2 in
rsa | ecc) ;;
*) echo "algorithm: not rsa or ecc" >&2; exit 2 ;;
esac
umask 077
dir=$(mktemp -d)
flush() { tpm2_flushcontext -t >/dev/null 2>&1 || true; }
cleanup() {
	if [ -f "$dir/session.ctx" ]; then
		tpm2_flushcontext "$dir/session.ctx" >/dev/null 2>&1 || true
	fi
	flush
	rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
"""
_HEADER = """set -eu
export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
"""

# Step 1 (arguments: HANDLE AK_ALGORITHM): read the EK certificate, create the EK and an AK
# under it, and print them with the public area of whatever already sits at the handle.
# Nothing persistent changes: the new AK exists only as a context file the verifier keeps.
_CREATE_SCRIPT = _HEADER + r"""
if [ "$#" -ne 2 ]; then echo "usage: sh -s -- HANDLE rsa|ecc" >&2; exit 2; fi
""" + _SCRIPT_START + r"""
if [ "$2" = rsa ]; then scheme=rsassa; else scheme=ecdsa; fi
if tpm2_nvreadpublic 0x01c00002 >/dev/null 2>&1; then index=0x01c00002 ekalg=rsa
elif tpm2_nvreadpublic 0x01c0000a >/dev/null 2>&1; then index=0x01c0000a ekalg=ecc
else echo "no EK certificate at NV index 0x01c00002 (RSA) or 0x01c0000a (ECC)" >&2; exit 3
fi
tpm2_nvread -Q -o ek.crt "$index"
tpm2_createek -Q -c ek.ctx -G "$ekalg"
flush
tpm2_createak -Q -C ek.ctx -c ak.ctx -G "$2" -g sha256 -s "$scheme" -u ak.pub -n ak.name
flush
tpm2_readpublic -Q -c "$1" -o held.pub >/dev/null 2>&1 || : > held.pub
section() { printf '\n@@hardhost:%s@@\n' "$1"; }
section ek_index; printf '%s' "$index"
for file in ek.crt ak.pub ak.name ak.ctx held.pub; do
	section "$(echo "$file" | tr . _)"
	base64 -w0 "$file"
done
section end
"""
_CREATE_SECTIONS = ("ek_index", "ek_crt", "ak_pub", "ak_name", "ak_ctx", "held_pub", "end")

# Step 2 (arguments: HANDLE EK_ALGORITHM CREDENTIAL AK_CONTEXT): activate the credential with
# the EK's policy (PolicySecret on the endorsement hierarchy, the TCG default EK template's
# policy), and only then persist the AK at its handle, evicting the former AK there (step 1
# showed the verifier what it was).
_ACTIVATE_SCRIPT = _HEADER + r"""
if [ "$#" -ne 4 ]; then echo "usage: sh -s -- HANDLE rsa|ecc CREDENTIAL AK_CONTEXT" >&2; exit 2; fi
""" + _SCRIPT_START + r"""
printf '%s' "$3" | base64 -d > cred.bin
printf '%s' "$4" | base64 -d > ak.ctx
tpm2_createek -Q -c ek.ctx -G "$2"
flush
tpm2_startauthsession -Q --policy-session -S session.ctx
tpm2_policysecret -Q -S session.ctx -c e
tpm2_activatecredential -Q -c ak.ctx -C ek.ctx -i cred.bin -o secret.bin -P session:session.ctx
tpm2_flushcontext session.ctx >/dev/null
rm session.ctx
flush
if tpm2_readpublic -Q -c "$1" >/dev/null 2>&1; then tpm2_evictcontrol -Q -C o -c "$1"; fi
tpm2_evictcontrol -Q -C o -c ak.ctx "$1"
flush
printf '\n@@hardhost:secret@@\n'
base64 -w0 secret.bin
printf '\n@@hardhost:end@@\n'
"""
_ACTIVATE_SECTIONS = ("secret", "end")


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


def _ek_key(cert: x509.Certificate, index: str,
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


def _check_replaceable(held: bytes, handle: str, where: str) -> None:
    """Enrollment replaces the object at the AK's handle; refuse unless that object is a
    restricted signing key, a former AK. Some makers persist an ECC EK at 0x81010002, and
    evicting an EK or a storage key would break whatever relies on it."""
    try:
        public = parse_public(held)
    except QuoteFormatError as exc:
        reason = str(exc).removeprefix("AK public area: ")
    else:
        needed = _REQUIRED_ATTRIBUTES["restricted"] | _REQUIRED_ATTRIBUTES["sign"]
        if public.attributes & needed == needed and not public.attributes & _DECRYPT:
            return
        reason = "not a restricted signing key"
    raise UsageError(f"{where}: handle {handle} holds an object that is not an attestation key "
                     f"({reason}); enrollment will not evict it. Pass another persistent "
                     f"handle for the AK")


def _run_script(session: Session, script: str, args: Sequence[str], what: str,
                timeout: float | None) -> bytes:
    result = session.run(["/bin/sh", "-s", "--", *args], stdin=script.encode(),
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
    raw = _run_script(session, _CREATE_SCRIPT, [handle_text, algorithm.value], "AK creation",
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
    ek_alg, ek_public = _ek_key(ek_cert, index, where)
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
        raw = _run_script(session, _ACTIVATE_SCRIPT, args, "credential activation", timeout)
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
