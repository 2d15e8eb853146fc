"""TPM quote parsing and verification on quotes recorded from a real swtpm (see
tests/data/tpm/record.sh), and on malformed and forged variants derived from them."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hardhost.core.errors import UsageError
from hardhost.core.run import output
from hardhost.verifier.tpm_quote import (
    QUOTE_PCRS,
    ClockInfo,
    Quote,
    QuoteFormatError,
    format_handle,
    new_nonce,
    parse_attest,
    parse_pcrs,
    parse_script_output,
    parse_signature,
    validate_nonce,
    validate_predictions,
    verify_quote,
)
from hardhost.verifier.transport import HostOutputError
from hardhost.verifier.verdict import Finding

DATA = Path(__file__).resolve().parent / "data" / "tpm"
KINDS = ("rsa", "ecc")


def load(directory: Path) -> tuple[Quote, str]:
    quote = Quote((directory / "msg").read_bytes(), (directory / "sig").read_bytes(),
                  (directory / "pcrs").read_bytes())
    return quote, (directory / "nonce").read_text().strip()


def predicted() -> dict[int, str]:
    """The PCRs record.sh left: zero, except 4 and 11, each extended once from zero."""
    values = {index: "00" * 32 for index in QUOTE_PCRS}
    for line in (DATA / "extend-digests.txt").read_text().splitlines():
        index, digest = line.split()
        # Part 1 §17.6.2 (PCR extend): new = H(old || digest).
        values[int(index)] = hashlib.sha256(bytes(32) + bytes.fromhex(digest)).hexdigest()
    return values


def ak_pem(kind: str) -> bytes:
    return (DATA / kind / "ak.pem").read_bytes()


def ids(findings: tuple[Finding, ...]) -> list[str]:
    return [f.id for f in findings]


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_quote_verifies(kind: str) -> None:
    quote, nonce = load(DATA / kind)
    result = verify_quote(quote, ak_pem(kind), nonce, predicted())
    assert result.findings == ()
    assert result.attest is not None
    assert result.attest.extra_data.hex() == nonce
    assert result.clock_info is not None and result.clock_info.reset_count >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_parser_agrees_with_tpm2_print(kind: str) -> None:
    """tpm2-tools' own unmarshaller reads the same fields from the same bytes."""
    printed = yaml.safe_load(output(["tpm2_print", "-t", "TPMS_ATTEST", DATA / kind / "msg"]))
    attest = parse_attest((DATA / kind / "msg").read_bytes())
    assert attest.qualified_signer.hex() == printed["qualifiedSigner"]
    assert attest.extra_data.hex() == printed["extraData"]
    clock = printed["clockInfo"]
    assert attest.clock_info == ClockInfo(clock["clock"], clock["resetCount"],
                                          clock["restartCount"], bool(clock["safe"]))
    # tpm2_print 5.4 shows firmwareVersion as byte-reversed hex digits without "0x". The
    # big-endian value is right: swtpm's TPM_PT_FIRMWARE_VERSION_1 and _2 are 0x20191023 and
    # 0x00163636, and this reads 0x2019102300163636.
    shown = bytes.fromhex(str(printed["firmwareVersion"]).rjust(16, "0"))
    assert attest.firmware_version == int.from_bytes(shown, "little") == 0x2019102300163636
    quote = printed["attested"]["quote"]
    assert attest.pcr_digest.hex() == quote["pcrDigest"]
    assert [str(s) for s in attest.pcr_selection] == ["sha256:0,4,7,9,11,12,13"]


@pytest.mark.parametrize("kind", KINDS)
def test_signature_file_format(kind: str) -> None:
    sig = parse_signature((DATA / kind / "sig").read_bytes())
    assert sig.scheme_name == ("RSASSA" if kind == "rsa" else "ECDSA")
    assert sig.hash_alg == 0x000B
    if kind == "rsa":
        assert len(sig.value) == 256


def test_pcr_file_is_tpm2_tools_serialized_format() -> None:
    """132 bytes of TPML_PCR_SELECTION, a count, then 532-byte TPML_DIGEST blocks: the 7
    quoted PCRs fit one block, so tpm2-tools 5.4 writes 668 bytes."""
    data = (DATA / "rsa" / "pcrs").read_bytes()
    assert len(data) == 132 + 4 + 532
    pcrs = parse_pcrs(data)
    assert [(v.index, v.digest.hex()) for v in pcrs.values] == sorted(predicted().items())


# Each case derives a broken quote from the recorded one and names the words its finding
# must carry.
Mutation = Callable[[Quote], Quote]


def _put(data: bytes, offset: int, chunk: bytes) -> bytes:
    return data[:offset] + chunk + data[offset + len(chunk):]


def message_at(offset: int, chunk: bytes) -> Mutation:
    return lambda q: replace(q, message=_put(q.message, offset, chunk))


def message_cut(end: int) -> Mutation:
    return lambda q: replace(q, message=q.message[:end])


# Offsets in the recorded TPMS_ATTEST: magic 0, type 4, qualifiedSigner 6 (2 + 34 bytes),
# extraData 42 (2 + 32), clockInfo 76 (17), firmwareVersion 93 (8), pcrSelect 101 (10),
# pcrDigest 111 (2 + 32), end 145. In the PCR file: the digest block count at 132, the
# first block's count at 136 and its first digest's size at 140.
MALFORMED: list[tuple[str, Mutation, str]] = [
    ("truncated at clockInfo", message_cut(80), "quote message: truncated at clockInfo"),
    ("truncated at magic", message_cut(3), "truncated at magic"),
    ("truncated at pcrDigest", message_cut(-1), "truncated at pcrDigest"),
    ("empty message", message_cut(0), "truncated at magic"),
    ("truncated in the signer", message_cut(40), "truncated at qualifiedSigner"),
    ("wrong magic", message_at(0, b"\xff\x54\x43\x48"),
     "magic 0xff544348 is not TPM_GENERATED_VALUE"),
    ("certify, not quote", message_at(4, b"\x80\x17"), "type 0x8017 is not TPM_ST_ATTEST_QUOTE"),
    ("signer size beyond TPM2B_NAME", message_at(6, b"\x01\x00"),
     "qualifiedSigner size 256 exceeds 66"),
    ("extraData size beyond TPM2B_DATA", message_at(42, b"\xff\xff"),
     "extraData size 65535 exceeds 66"),
    ("pcrDigest size one too big", message_at(111, b"\x00\x21"), "truncated at pcrDigest"),
    ("pcrDigest size one too small", message_at(111, b"\x00\x1f"),
     "quote message: 1 trailing bytes"),
    ("too many banks", message_at(101, b"\x00\x00\x01\x00"), "256 PCR banks"),
    ("sizeofSelect too big", message_at(107, b"\x05"), "sizeofSelect 5 exceeds 4"),
    ("safe is not a boolean", message_at(92, b"\x02"), "clockInfo.safe is 2, not 0 or 1"),
    ("trailing bytes", lambda q: replace(q, message=q.message + b"\x00"),
     "quote message: 1 trailing bytes after the structure"),
    ("signature truncated", lambda q: replace(q, signature=q.signature[:-1]),
     "quote signature: truncated at"),
    ("signature trailing", lambda q: replace(q, signature=q.signature + b"\x00"),
     "quote signature: 1 trailing bytes"),
    ("signature of HMAC", lambda q: replace(q, signature=_put(q.signature, 0, b"\x00\x05")),
     "sigAlg 0x0005 is neither RSASSA"),
    ("PCR file truncated", lambda q: replace(q, pcrs=q.pcrs[:-1]),
     "PCR file: truncated at digest block 0"),
    ("PCR file trailing", lambda q: replace(q, pcrs=q.pcrs + b"\x00"),
     "PCR file: 1 trailing bytes"),
    ("PCR file short a value", lambda q: replace(q, pcrs=_put(q.pcrs, 136, struct.pack("<I", 6))),
     "PCR file: 6 values for 7 selected PCRs"),
    ("PCR value of the wrong size", lambda q: replace(q, pcrs=_put(q.pcrs, 140,
                                                                   struct.pack("<H", 20))),
     "PCR 0 value has 20 bytes, its bank needs 32"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("mutate", "reason"), [(m, r) for _, m, r in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_quote_is_one_finding(kind: str, mutate: Mutation, reason: str) -> None:
    quote, nonce = load(DATA / kind)
    result = verify_quote(mutate(quote), ak_pem(kind), nonce, predicted())
    assert ids(result.findings) == ["tpm.quote.malformed"]
    assert reason in result.findings[0].observed
    assert result.attest is None


@pytest.mark.parametrize("kind", KINDS)
def test_replayed_quote_fails_on_the_nonce(kind: str) -> None:
    quote, old = load(DATA / kind)
    fresh = new_nonce()
    result = verify_quote(quote, ak_pem(kind), fresh, predicted())
    assert ids(result.findings) == ["tpm.nonce"]
    assert result.findings[0].expected == fresh
    assert result.findings[0].observed == old


def _other_key(kind: str) -> bytes:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(65537, 2048) if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1()))
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("kind", KINDS)
def test_quote_signed_by_another_key_is_refused(kind: str) -> None:
    quote, nonce = load(DATA / kind)
    result = verify_quote(quote, _other_key(kind), nonce, predicted())
    assert ids(result.findings) == ["tpm.quote.signature"]
    assert "does not verify with this AK" in result.findings[0].observed
    assert result.attest is None  # nothing from an unauthenticated quote leaks out


@pytest.mark.parametrize("kind", KINDS)
def test_any_changed_signed_byte_breaks_the_signature(kind: str) -> None:
    """The clock is parsed but not checked against anything: only the signature catches a
    host that edits it (to fake a reboot, say)."""
    quote, nonce = load(DATA / kind)
    clock = bytearray(quote.message)
    clock[83] ^= 0x01
    result = verify_quote(replace(quote, message=bytes(clock)), ak_pem(kind), nonce,
                          predicted())
    assert ids(result.findings) == ["tpm.quote.signature"]


def test_ecdsa_halves_swapped_do_not_verify() -> None:
    quote, nonce = load(DATA / "ecc")
    sig = quote.signature
    r_size = int.from_bytes(sig[4:6], "big")
    r_field = sig[4:6 + r_size]
    s_field = sig[6 + r_size:]
    swapped = replace(quote, signature=sig[:4] + s_field + r_field)
    assert ids(verify_quote(swapped, ak_pem("ecc"), nonce, predicted()).findings) == [
        "tpm.quote.signature"]


def test_signature_of_the_wrong_kind_is_named() -> None:
    quote, nonce = load(DATA / "ecc")
    result = verify_quote(quote, ak_pem("rsa"), nonce, predicted())
    assert result.findings[0].observed == "an ECDSA signature, but the AK is an RSA key"


def _pcr_offset(position: int) -> int:
    """Where the value of the `position`-th quoted PCR sits in the PCR file."""
    return 132 + 4 + 4 + position * 66 + 2


@pytest.mark.parametrize("kind", KINDS)
def test_altered_pcr_value_breaks_the_digest(kind: str) -> None:
    """The host reports PCR 11 as predicted, but the TPM signed the real value's digest."""
    quote, nonce = load(DATA / kind)
    forged = _put(quote.pcrs, _pcr_offset(QUOTE_PCRS.index(11)), b"\x42" * 32)
    result = verify_quote(replace(quote, pcrs=forged), ak_pem(kind), nonce,
                          predicted() | {11: "42" * 32})
    assert ids(result.findings) == ["tpm.quote.pcr_digest"]
    assert result.findings[0].expected == parse_attest(quote.message).pcr_digest.hex()


def test_pcr_digest_follows_selection_order() -> None:
    """Reported values swapped between PCR 4 and 11 hash differently: the order counts."""
    quote, nonce = load(DATA / "rsa")
    four, eleven = _pcr_offset(QUOTE_PCRS.index(4)), _pcr_offset(QUOTE_PCRS.index(11))
    pcrs = _put(quote.pcrs, four, quote.pcrs[eleven:eleven + 32])
    pcrs = _put(pcrs, eleven, quote.pcrs[four:four + 32])
    result = verify_quote(replace(quote, pcrs=pcrs), ak_pem("rsa"), nonce, predicted())
    assert ids(result.findings) == ["tpm.quote.pcr_digest"]


@pytest.mark.parametrize("kind", KINDS)
def test_pcr_not_matching_prediction(kind: str) -> None:
    quote, nonce = load(DATA / kind)
    expected = "ab" * 32
    result = verify_quote(quote, ak_pem(kind), nonce, predicted() | {11: expected})
    assert ids(result.findings) == ["tpm.pcr.11"]
    finding = result.findings[0]
    assert finding.expected == expected
    assert finding.observed == predicted()[11]
    assert finding.counts()


def test_quote_over_too_few_pcrs_fails_on_the_selection() -> None:
    """A real quote by the enrolled AK, but over sha256:0,4,7 only: PCRs 9-13 (kernel, UKI,
    command line) would go unchecked."""
    quote, nonce = load(DATA / "rsa" / "narrow")
    result = verify_quote(quote, ak_pem("rsa"), nonce, predicted())
    assert ids(result.findings) == ["tpm.quote.selection", "tpm.pcr.9", "tpm.pcr.11",
                                    "tpm.pcr.12", "tpm.pcr.13"]
    assert result.findings[0].expected == "sha256:0,4,7,9,11,12,13"
    assert result.findings[0].observed == "sha256:0,4,7"
    assert result.findings[2].observed == "not quoted"


def test_nonces() -> None:
    first, second = new_nonce(), new_nonce()
    assert first != second
    assert validate_nonce(first) == first and len(first) == 64
    for bad in ("", "ab", first.upper(), first[:-1] + "g", first + "00", " " + first[1:]):
        with pytest.raises(UsageError, match="64 lowercase hex digits"):
            validate_nonce(bad)
    quote, _ = load(DATA / "rsa")
    with pytest.raises(UsageError):
        verify_quote(quote, ak_pem("rsa"), "not hex", predicted())


def test_arguments_are_checked() -> None:
    assert format_handle(0x81010002) == "0x81010002"
    for bad in (0x01C00002, 0x80000000, 0x82000000):
        with pytest.raises(UsageError, match="not a persistent handle"):
            format_handle(bad)
    with pytest.raises(UsageError, match="predicted PCR 8 is not quoted"):
        validate_predictions({8: "00" * 32})
    with pytest.raises(UsageError, match="64 lowercase hex"):
        validate_predictions({11: "AB" * 32})
    quote, nonce = load(DATA / "rsa")
    with pytest.raises(UsageError, match="not a PEM public key"):
        verify_quote(quote, b"garbage", nonce, {})


def test_clock_info_proves_a_reboot() -> None:
    before = ClockInfo(1000, 3, 0, True)
    assert ClockInfo(500, 4, 0, True).rebooted_since(before)
    assert not ClockInfo(2000, 3, 1, True).rebooted_since(before)  # a resume is no reboot


def script_output(quote: Quote) -> bytes:
    parts = [("msg", quote.message), ("sig", quote.signature), ("pcrs", quote.pcrs)]
    text = "".join(f"\n@@hardhost:{name}@@\n{base64.b64encode(data).decode()}"
                   for name, data in parts)
    return (text + "\n@@hardhost:end@@\n").encode()


def test_script_output_round_trips() -> None:
    quote, _ = load(DATA / "ecc")
    assert parse_script_output(script_output(quote), "h") == quote


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda raw: b"banner\n" + raw, "missing, repeated or out of order"),
    (lambda raw: raw.replace(b"@@hardhost:sig@@", b"@@hardhost:pcrs@@"), "out of order"),
    (lambda raw: raw.replace(b"@@hardhost:end@@\n", b"@@hardhost:end@@\nmore"),
     "data after its end marker"),
    (lambda raw: raw.replace(b"@@hardhost:sig@@\n", b"@@hardhost:sig@@\n!"), "not base64"),
    (lambda raw: raw.replace(b"@@hardhost:pcrs@@\n", b"@@hardhost:pcrs@@\n" + b"A" * 8000),
     "section pcrs exceeds 4096 bytes"),
    (lambda raw: raw + b"\xff", "not UTF-8"),
])
def test_script_output_is_parsed_strictly(edit: Callable[[bytes], bytes], reason: str) -> None:
    quote, _ = load(DATA / "rsa")
    with pytest.raises(HostOutputError, match=reason):
        parse_script_output(edit(script_output(quote)), "h")


def test_format_error_is_typed() -> None:
    with pytest.raises(QuoteFormatError, match="magic 0x00000000"):
        parse_attest(bytes(145))
