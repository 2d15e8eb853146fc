"""Ed25519 signing keys and DSSE envelopes (PAE signing), through pyca/cryptography.

Verification returns the verified payload or raises `TrustError`: there is no boolean for a
caller to forget.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from builder.errors import TrustError, UsageError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
MAX_ENVELOPE_BYTES = 16 * 2**20


class KeyPermissionError(UsageError):
    """A private key that others can read is refused, with the chmod that fixes it."""


def key_id(public: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, in hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def keygen(directory: Path) -> tuple[Path, Path]:
    """Write DIR/signing.key (PEM, 0600) and DIR/signing.pub (PEM). Never overwrites."""
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path}: already exists; refusing to overwrite a key")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(f"{path}: private key is readable by others "
                                 f"(mode {stat.S_IMODE(mode):04o}). Fix with: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


def _load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path}: not an Ed25519 public key")
    return key


def load_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by key id, from one PEM file or every *.pub in a directory."""
    if path.is_dir():
        files = sorted(path.glob("*.pub"))
        if not files:
            raise UsageError(f"{path}: no *.pub trusted keys in this directory")
    elif path.exists():
        files = [path]
    else:
        raise UsageError(f"{path}: trusted key not found")
    keys = [_load_public_key(f) for f in files]
    return {key_id(k): k for k in keys}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign(payload: bytes, key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope, as canonical JSON bytes."""
    signature = key.sign(pae(payload_type, payload))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": key_id(key.public_key()),
                        "sig": base64.b64encode(signature).decode()}],
    }
    return json.dumps(envelope, indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Verified:
    payload: bytes
    key_id: str


def _b64(value: object, what: str, origin: str) -> bytes:
    if not isinstance(value, str):
        raise TrustError(f"{origin}: {what} is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TrustError(f"{origin}: {what} is not valid base64") from None


def verify(data: bytes, trusted: dict[str, Ed25519PublicKey], origin: str,
           payload_type: str = PAYLOAD_TYPE) -> Verified:
    """Return the payload of envelope `data` if a trusted key signed it; raise `TrustError`."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise TrustError(f"{origin}: envelope larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TrustError(f"{origin}: not a JSON DSSE envelope (truncated or corrupt)") from None
    if not isinstance(envelope, dict):
        raise TrustError(f"{origin}: not a DSSE envelope")
    if envelope.get("payloadType") != payload_type:
        raise TrustError(f"{origin}: payloadType is {envelope.get('payloadType')!r}, "
                         f"expected {payload_type!r}")
    payload = _b64(envelope.get("payload"), "payload", origin)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise TrustError(f"{origin}: the envelope carries no signature")
    signed = pae(payload_type, payload)
    seen: list[str] = []
    for entry in signatures:
        if not isinstance(entry, dict):
            raise TrustError(f"{origin}: malformed signature entry")
        sig = _b64(entry.get("sig"), "signature", origin)
        keyid = entry.get("keyid")
        candidates = ([(keyid, trusted[keyid])] if isinstance(keyid, str) and keyid in trusted
                      else list(trusted.items()))
        for candidate_id, public in candidates:
            try:
                public.verify(sig, signed)
            except InvalidSignature:
                continue
            return Verified(payload, candidate_id)
        seen.append(str(keyid)[:16])
    if all(k not in trusted for k in (e.get("keyid") for e in signatures
                                      if isinstance(e, dict))):
        raise TrustError(f"{origin}: signed by an untrusted key ({', '.join(seen)})")
    raise TrustError(f"{origin}: bad signature: the envelope was changed after signing")
