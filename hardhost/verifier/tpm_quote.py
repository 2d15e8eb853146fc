"""TPM 2.0 quotes: strict parsers for the files `tpm2_quote` writes, and verification as findings.

Verification is pure Python with `cryptography`; no tool runs on the verifier to check a quote.
Section numbers cite TPM 2.0 Library Part 2 (Structures), revision 1.59. Everything here is
host output, so every length is checked against what is left and nothing may trail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hardhost.core.errors import HardhostError, UsageError
from hardhost.verifier.evidence import split_marked_sections
from hardhost.verifier.transport import HostOutputError, Session
from hardhost.verifier.verdict import Finding, Severity

TPM_GENERATED_VALUE = 0xFF544347  # §6.2: only the TPM itself writes this into a TPMS_ATTEST
TPM_ST_ATTEST_QUOTE = 0x8018  # §6.9
TPM_ALG_SHA256 = 0x000B  # §6.3
TPM_ALG_RSASSA = 0x0014
TPM_ALG_ECDSA = 0x0018
_HASH_NAMES = {0x0004: "sha1", TPM_ALG_SHA256: "sha256", 0x000C: "sha384", 0x000D: "sha512",
               0x0012: "sm3_256"}
_HASH_SIZES = {0x0004: 20, TPM_ALG_SHA256: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}

# The PCRs every quote must cover: firmware (0), boot loader (4), Secure Boot policy (7),
# and what systemd-stub and the kernel measure (9, 11, 12, 13).
QUOTE_PCRS = (0, 4, 7, 9, 11, 12, 13)
QUOTE_SELECTION = "sha256:" + ",".join(str(i) for i in QUOTE_PCRS)

NONCE_BYTES = 32
_NONCE = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_HEX = re.compile(r"^[0-9a-f]{64}$")
_PERSISTENT = range(0x81000000, 0x82000000)  # §7.2: TPM_HT_PERSISTENT handles are 0x81xxxxxx

OUTPUT_LIMIT = 64 * 1024  # the script prints about 1.5 KB; anything near this is not a quote
_FILE_LIMIT = 4096  # bytes of any one decoded file (the PCR file is 668 bytes)
SCRIPT_SECTIONS = ("msg", "sig", "pcrs", "end")


class QuoteFormatError(HardhostError):
    """A TPM structure from the host (quote, signature, PCR file, public area) that does not
    parse; the message is the reason."""

    exit_code = 1


class TpmHostError(HostOutputError):
    """A TPM command on the host failed; the message carries its last error line."""


class Reader:
    """Reads of marshalled TPM structures (big-endian, §4.17 packed) that name the field
    being read when the buffer runs out."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int, field: str) -> bytes:
        if size > len(self.data) - self.offset:
            raise QuoteFormatError(f"{self.what}: truncated at {field}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def tpm2b(self, field: str, limit: int) -> bytes:
        """A TPM2B: a 16-bit size, then that many bytes (§10.4.1), at most `limit`."""
        size = self.u16(field)
        if size > limit:
            raise QuoteFormatError(f"{self.what}: {field} size {size} exceeds {limit}")
        return self.take(size, field)

    def finish(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise QuoteFormatError(f"{self.what}: {left} trailing bytes after the structure")


@dataclass(frozen=True)
class PcrSelection:
    """TPMS_PCR_SELECTION (§10.6.2): one bank and the PCR indices selected in it."""

    hash_alg: int
    indices: tuple[int, ...]

    def __str__(self) -> str:
        bank = _HASH_NAMES.get(self.hash_alg, f"0x{self.hash_alg:04x}")
        return f"{bank}:{','.join(str(i) for i in self.indices)}"


def format_selection(selection: tuple[PcrSelection, ...]) -> str:
    return "+".join(str(s) for s in selection) or "none"


def _selection(r: Reader, count_field: str) -> tuple[PcrSelection, ...]:
    """TPML_PCR_SELECTION (§10.9.7), marshalled big-endian as the TPM signs it."""
    count = r.u32(count_field)
    if count > 16:  # HASH_COUNT: no TPM has more banks than hash algorithms
        raise QuoteFormatError(f"{r.what}: {count} PCR banks in the selection")
    banks = []
    for _ in range(count):
        hash_alg = r.u16("pcrSelect.hash")
        size = r.u8("pcrSelect.sizeofSelect")
        if size > 4:  # PCR_SELECT_MAX for 32 PCRs; tpm2-tools has room for no more
            raise QuoteFormatError(f"{r.what}: sizeofSelect {size} exceeds 4")
        bitmap = r.take(size, "pcrSelect.pcrSelect")
        banks.append(PcrSelection(hash_alg, _indices(bitmap)))
    return tuple(banks)


def _indices(bitmap: bytes) -> tuple[int, ...]:
    # §10.6.1: bit n of octet k selects PCR 8k+n.
    return tuple(8 * k + n for k, octet in enumerate(bitmap) for n in range(8)
                 if octet & (1 << n))


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO (§10.11.1). resetCount grows on every TPM Reset (a reboot), and
    restartCount counts TPM Restarts and Resumes since the last Reset."""

    clock: int  # milliseconds the TPM has been powered, kept across reboots
    reset_count: int
    restart_count: int
    safe: bool

    def rebooted_since(self, earlier: ClockInfo) -> bool:
        """Whether a TPM Reset, that is a reboot, happened between `earlier` and this."""
        return self.reset_count > earlier.reset_count


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST (§10.12.12) of type TPM_ST_ATTEST_QUOTE, with its
    TPMS_QUOTE_INFO (§10.12.4)."""

    qualified_signer: bytes
    extra_data: bytes  # the verifier's nonce, as the TPM received it
    clock_info: ClockInfo
    firmware_version: int
    pcr_selection: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_attest(data: bytes) -> Attest:
    """Parse the message file `tpm2_quote -m` writes: a marshalled TPMS_ATTEST."""
    r = Reader(data, "quote message")
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise QuoteFormatError(f"quote message: magic 0x{magic:08x} is not "
                               f"TPM_GENERATED_VALUE (0x{TPM_GENERATED_VALUE:08x})")
    kind = r.u16("type")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise QuoteFormatError(f"quote message: type 0x{kind:04x} is not "
                               f"TPM_ST_ATTEST_QUOTE (0x{TPM_ST_ATTEST_QUOTE:04x})")
    # TPM2B_NAME (§10.5.3) holds at most a TPMT_HA; TPM2B_DATA (§10.4.3) the same.
    signer = r.tpm2b("qualifiedSigner", 2 + 64)
    extra = r.tpm2b("extraData", 2 + 64)
    clock, resets, restarts, safe = struct.unpack(">QIIB", r.take(17, "clockInfo"))
    if safe > 1:  # TPMI_YES_NO
        raise QuoteFormatError(f"quote message: clockInfo.safe is {safe}, not 0 or 1")
    firmware = r.u64("firmwareVersion")
    selection = _selection(r, "pcrSelect")
    digest = r.tpm2b("pcrDigest", 64)
    r.finish()
    return Attest(signer, extra, ClockInfo(clock, resets, restarts, bool(safe)), firmware,
                  selection, digest)


@dataclass(frozen=True)
class Signature:
    """A TPMT_SIGNATURE (§11.3.4) for RSASSA or ECDSA. For ECDSA, `value` is the (r, s)
    pair DER-encoded, as `cryptography` verifies it."""

    scheme: int
    hash_alg: int
    value: bytes

    @property
    def scheme_name(self) -> str:
        return "RSASSA" if self.scheme == TPM_ALG_RSASSA else "ECDSA"


def parse_signature(data: bytes) -> Signature:
    """Parse the file `tpm2_quote -s` writes by default (`-f tss`): a marshalled
    TPMT_SIGNATURE."""
    r = Reader(data, "quote signature")
    scheme = r.u16("sigAlg")
    if scheme == TPM_ALG_RSASSA:
        hash_alg = r.u16("hash")
        value = r.tpm2b("sig", 512)  # TPM2B_PUBLIC_KEY_RSA, up to RSA 4096 (§11.2.4.5)
        if not value:
            raise QuoteFormatError("quote signature: the RSA signature is empty")
    elif scheme == TPM_ALG_ECDSA:
        hash_alg = r.u16("hash")
        # TPMS_SIGNATURE_ECC (§11.3.2): two TPM2B_ECC_PARAMETERs, up to P-521's 66 bytes.
        sig_r = r.tpm2b("signatureR", 66)
        sig_s = r.tpm2b("signatureS", 66)
        if not sig_r or not sig_s:
            raise QuoteFormatError("quote signature: an ECDSA signature half is empty")
        value = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
    else:
        raise QuoteFormatError(f"quote signature: sigAlg 0x{scheme:04x} is neither RSASSA "
                               f"(0x{TPM_ALG_RSASSA:04x}) nor ECDSA (0x{TPM_ALG_ECDSA:04x})")
    r.finish()
    return Signature(scheme, hash_alg, value)


@dataclass(frozen=True)
class PcrValue:
    hash_alg: int
    index: int
    digest: bytes


@dataclass(frozen=True)
class PcrValues:
    """The PCR file: the selection tpm2-tools read and each value, in selection order."""

    selection: tuple[PcrSelection, ...]
    values: tuple[PcrValue, ...]

    def get(self, hash_alg: int, index: int) -> bytes | None:
        for value in self.values:
            if value.hash_alg == hash_alg and value.index == index:
                return value.digest
        return None


# tpm2-tools 5.4 writes `-o FILE` in its default "serialized" format (lib/pcr.c,
# pcr_fwrite_serialized): its in-memory C structures, little-endian, padding included.
#   TPML_PCR_SELECTION  u32 count, then 16 slots of {u16 hash, u8 sizeofSelect,
#                       u8 pcrSelect[4], one pad byte}                      = 132 bytes
#   u32 n               the number of TPML_DIGEST blocks (one per PCR_Read, 8 values each)
#   n TPML_DIGEST       u32 count, then 8 slots of {u16 size, u8 buffer[64]} = 532 bytes
# Slots beyond each count, pad bytes, and buffer bytes beyond each size carry no data.
_SELECTION_SLOTS, _SELECTION_SLOT = 16, 8
_DIGEST_SLOTS, _DIGEST_SLOT = 8, 66
_SELECTION_BYTES = 4 + _SELECTION_SLOTS * _SELECTION_SLOT
_BLOCK_BYTES = 4 + _DIGEST_SLOTS * _DIGEST_SLOT
_MAX_BLOCKS = 32  # tpm2_pcrs holds TPM2_MAX_PCRS blocks


def parse_pcrs(data: bytes) -> PcrValues:
    """Parse the PCR file `tpm2_quote -o` writes (tpm2-tools 5.4, default format)."""
    what = "PCR file"
    if len(data) < _SELECTION_BYTES + 4:
        raise QuoteFormatError(f"{what}: truncated at the PCR selection ({len(data)} bytes)")
    (count,) = struct.unpack_from("<I", data, 0)
    if count > _SELECTION_SLOTS:
        raise QuoteFormatError(f"{what}: {count} PCR banks in the selection")
    selection = []
    for slot in range(count):
        hash_alg, size = struct.unpack_from("<HB", data, 4 + slot * _SELECTION_SLOT)
        if size > 4:
            raise QuoteFormatError(f"{what}: sizeofSelect {size} exceeds 4")
        start = 4 + slot * _SELECTION_SLOT + 3
        selection.append(PcrSelection(hash_alg, _indices(data[start:start + size])))
    (blocks,) = struct.unpack_from("<I", data, _SELECTION_BYTES)
    if blocks > _MAX_BLOCKS:
        raise QuoteFormatError(f"{what}: {blocks} digest blocks exceed {_MAX_BLOCKS}")
    expected = _SELECTION_BYTES + 4 + blocks * _BLOCK_BYTES
    if len(data) < expected:
        raise QuoteFormatError(f"{what}: truncated at digest block "
                               f"{(len(data) - _SELECTION_BYTES - 4) // _BLOCK_BYTES}")
    if len(data) > expected:
        raise QuoteFormatError(f"{what}: {len(data) - expected} trailing bytes after "
                               f"{blocks} digest blocks")
    digests: list[bytes] = []
    for block in range(blocks):
        base = _SELECTION_BYTES + 4 + block * _BLOCK_BYTES
        (in_block,) = struct.unpack_from("<I", data, base)
        if in_block > _DIGEST_SLOTS:
            raise QuoteFormatError(f"{what}: {in_block} digests in block {block}, at most 8")
        for slot in range(in_block):
            at = base + 4 + slot * _DIGEST_SLOT
            (size,) = struct.unpack_from("<H", data, at)
            if size > 64:
                raise QuoteFormatError(f"{what}: digest size {size} exceeds 64")
            digests.append(data[at + 2:at + 2 + size])
    wanted = [(bank.hash_alg, i) for bank in selection for i in bank.indices]
    if len(digests) != len(wanted):
        raise QuoteFormatError(f"{what}: {len(digests)} values for {len(wanted)} selected PCRs")
    values = []
    for (hash_alg, index), digest in zip(wanted, digests, strict=True):
        size = _HASH_SIZES.get(hash_alg)
        if size is None:
            raise QuoteFormatError(f"{what}: unknown PCR bank 0x{hash_alg:04x}")
        if len(digest) != size:
            raise QuoteFormatError(f"{what}: PCR {index} value has {len(digest)} bytes, "
                                   f"its bank needs {size}")
        values.append(PcrValue(hash_alg, index, digest))
    return PcrValues(tuple(selection), tuple(values))


@dataclass(frozen=True)
class Quote:
    """The three files of one `tpm2_quote` run, as the host sent them: unparsed, untrusted."""

    message: bytes  # -m: TPMS_ATTEST
    signature: bytes  # -s: TPMT_SIGNATURE
    pcrs: bytes  # -o: the PCR values, tpm2-tools serialized format


@dataclass(frozen=True)
class QuoteResult:
    findings: tuple[Finding, ...]
    # Set only when the signature verified, so nothing unauthenticated can be read from it.
    attest: Attest | None

    @property
    def clock_info(self) -> ClockInfo | None:
        return self.attest.clock_info if self.attest else None


def new_nonce() -> str:
    """A fresh nonce for one quote: 32 random bytes, as 64 lowercase hex digits."""
    return secrets.token_hex(NONCE_BYTES)


def validate_nonce(nonce: str) -> str:
    if not _NONCE.match(nonce):
        raise UsageError(f"nonce {nonce[:80]!r}: expected {2 * NONCE_BYTES} lowercase hex "
                         f"digits ({NONCE_BYTES} bytes)")
    return nonce


def format_handle(handle: int) -> str:
    """`handle` as tpm2-tools takes it, after checking it is a persistent handle."""
    if handle not in _PERSISTENT:
        raise UsageError(f"TPM handle 0x{handle:08x} is not a persistent handle "
                         f"(0x81000000-0x81ffffff)")
    return f"0x{handle:08x}"


def validate_predictions(predicted: Mapping[int, str]) -> dict[int, str]:
    """PCR index -> 64 lowercase hex digits, only for PCRs the quote covers."""
    checked = {}
    for index, value in predicted.items():
        if index not in QUOTE_PCRS:
            raise UsageError(f"predicted PCR {index} is not quoted ({QUOTE_SELECTION})")
        if not _DIGEST_HEX.match(value):
            raise UsageError(f"predicted PCR {index} value {value[:80]!r}: expected 64 "
                             f"lowercase hex digits (sha256)")
        checked[index] = value
    return checked


def load_ak_public_key(pem: bytes | str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The AK public key from PEM, as `tpm2_createak -f pem` or `tpm2_readpublic -f pem`
    write it."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise UsageError(f"AK public key: not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise UsageError(f"AK public key: {type(key).__name__} is neither RSA nor EC")
    return key


def key_fingerprint(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _signature_problem(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, sig: Signature,
                       message: bytes) -> str:
    """Why `sig` is not the AK's signature over `message`, or "" when it is."""
    if sig.hash_alg != TPM_ALG_SHA256:
        return f"{sig.scheme_name} signature uses hash 0x{sig.hash_alg:04x}, not sha256"
    try:
        if sig.scheme == TPM_ALG_RSASSA:
            if not isinstance(key, rsa.RSAPublicKey):
                return "an RSASSA signature, but the AK is an EC key"
            key.verify(sig.value, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return "an ECDSA signature, but the AK is an RSA key"
            if not isinstance(key.curve, ec.SECP256R1):
                return f"the AK's curve {key.curve.name} is not P-256"
            key.verify(sig.value, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return f"the {sig.scheme_name} signature does not verify with this AK"
    return ""


def verify_quote(quote: Quote, ak_public_pem: bytes | str, nonce: str,
                 predicted: Mapping[int, str]) -> QuoteResult:
    """Check `quote` against the AK, the nonce sent for it, and the predicted sha256 PCRs.

    Returns findings, none when the quote holds. A quote that does not parse or whose
    signature fails yields only that finding: nothing else in it can be believed.
    """
    key = load_ak_public_key(ak_public_pem)
    expected_nonce = validate_nonce(nonce)
    predictions = validate_predictions(predicted)
    crit = Severity.CRITICAL
    try:
        attest = parse_attest(quote.message)
        signature = parse_signature(quote.signature)
        pcrs = parse_pcrs(quote.pcrs)
    except QuoteFormatError as exc:
        return QuoteResult((Finding("tpm.quote.malformed", crit,
                                    "well-formed tpm2_quote message, signature and PCR files",
                                    str(exc)),), None)
    problem = _signature_problem(key, signature, quote.message)
    if problem:
        return QuoteResult((Finding("tpm.quote.signature", crit,
                                    f"a signature by the AK {key_fingerprint(key)}",
                                    problem),), None)
    findings: list[Finding] = []
    if not secrets.compare_digest(attest.extra_data, bytes.fromhex(expected_nonce)):
        # A stale nonce is a replayed quote: it proves nothing about the host now.
        findings.append(Finding("tpm.nonce", crit, expected_nonce,
                                attest.extra_data.hex() or "empty"))
    quoted = format_selection(attest.pcr_selection)
    if quoted != QUOTE_SELECTION:
        findings.append(Finding("tpm.quote.selection", crit, QUOTE_SELECTION, quoted))
    # TPM2_Quote (Part 3 §18.4) hashes the selected PCR values, concatenated in selection
    # order, with the signing scheme's hash: sha256, checked above.
    reported = format_selection(pcrs.selection)
    computed = hashlib.sha256(b"".join(v.digest for v in pcrs.values)).hexdigest()
    if reported != quoted:
        findings.append(Finding("tpm.quote.pcr_digest", crit,
                                f"PCR values for the quoted selection {quoted}",
                                f"PCR values for {reported}"))
    elif computed != attest.pcr_digest.hex():
        findings.append(Finding("tpm.quote.pcr_digest", crit, attest.pcr_digest.hex(),
                                f"{computed} (sha256 of the reported PCR values)"))
    else:
        # The reported values are now bound to the signed digest: compare them one by one.
        for index, value in sorted(predictions.items()):
            observed = pcrs.get(TPM_ALG_SHA256, index)
            shown = observed.hex() if observed is not None else "not quoted"
            if shown != value:
                findings.append(Finding(f"tpm.pcr.{index}", crit, value, shown))
    return QuoteResult(tuple(findings), attest)


def script() -> str:
    return resources.files("hardhost.verifier").joinpath("tpm_script.sh").read_text()


def _printable(text: str, width: int = 300) -> str:
    flat = " ".join("".join(c if c.isprintable() else "?" for c in text).split())
    return flat[:width]


def host_failure(host: str, what: str, exit_status: int, stderr: bytes) -> TpmHostError:
    """The one-line error for a failed host-side TPM script: the last lines tpm2-tools or
    the script printed, without the TSS library's own trace lines."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()
             if line.strip() and not line.startswith(("WARNING:esys", "ERROR:esys"))]
    detail = _printable(" | ".join(lines[-3:])) if lines else "no error output"
    return TpmHostError(f"{host}: {what} failed (exit {exit_status}): {detail}")


def decode_section(text: str, name: str, host: str, limit: int = _FILE_LIMIT) -> bytes:
    """One base64 section of a host script's output, strictly: no stray characters, and at
    most `limit` bytes once decoded."""
    body = text.strip()
    if len(body) > 4 * ((limit + 2) // 3):
        raise HostOutputError(f"{host}: section {name} exceeds {limit} bytes")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise HostOutputError(f"{host}: section {name} is not base64") from None


def parse_script_output(raw: bytes, host: str) -> Quote:
    sections = split_marked_sections(raw, host, SCRIPT_SECTIONS, "TPM quote output")
    if sections["end"].strip():
        raise HostOutputError(f"{host}: TPM quote output has data after its end marker")
    return Quote(decode_section(sections["msg"], "msg", host),
                 decode_section(sections["sig"], "sig", host),
                 decode_section(sections["pcrs"], "pcrs", host))


def collect(session: Session, nonce: str, handle: int, *,
            timeout: float | None = None) -> Quote:
    """Run the fixed quote script on the host with `nonce` and the AK at `handle`."""
    argv = ["/bin/sh", "-s", "--", validate_nonce(nonce), format_handle(handle)]
    result = session.run(argv, stdin=script().encode(), timeout=timeout, limit=OUTPUT_LIMIT)
    host = str(session.target)
    if result.exit_status != 0:
        raise host_failure(host, "tpm2_quote", result.exit_status, result.stderr)
    return parse_script_output(result.stdout, host)
