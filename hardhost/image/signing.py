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

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hardhost.core.errors import TrustError, UsageError
from hardhost.core.inputs import decode_json, read_bytes
from hardhost.core.outputs import printable

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
MAX_ENVELOPE_BYTES = 16 * 2**20
MAX_KEY_BYTES = 64 * 1024  # a PEM Ed25519 key is about 120 bytes
MAX_SIGNATURES = 16  # each is tried against the trusted keys: keep that work small
MAX_TRUSTED_KEYS = 1024


class KeyPermissionError(UsageError):
    """A private key that others can read is refused, with the chmod that fixes it."""


def key_id(public: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, in hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def keygen(directory: Path) -> tuple[Path, Path]:
    """Write DIR/signing.key (PEM, 0600) and DIR/signing.pub (PEM). Never overwrites.

    DIR is made (mode 0700) if its parent exists. Both files are created afresh, never
    through a link: a link planted at signing.pub would otherwise put the trust anchor
    wherever it points. A folder that group or others may write is refused, because anyone
    who can write there can swap the public key that others will trust.
    """
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not directory.parent.is_dir():
            raise UsageError(f"{directory}: its parent folder {directory.parent} does not "
                             f"exist; create it first (mkdir -p -m 0700 {directory.parent})"
                             ) from None
        raise UsageError(f"{directory}: cannot make the key folder: {exc.strerror}") from None
    try:
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise UsageError(f"{directory}: not a folder; --out names the folder that receives "
                         f"{PRIVATE_NAME} and {PUBLIC_NAME}") from None
    except OSError as exc:
        raise UsageError(f"{directory}: cannot open the key folder: {exc.strerror}") from None
    try:
        mode = os.fstat(folder).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UsageError(f"{directory}: the key folder is writable by group or others "
                             f"(mode {stat.S_IMODE(mode):04o}). Fix with: chmod go-w "
                             f"{directory}")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        _create(folder, directory, PRIVATE_NAME, pem, 0o600)
        try:
            _create(folder, directory, PUBLIC_NAME, public, 0o644)
        except BaseException:
            # Half a pair is no key: remove the private half made a moment ago.
            os.unlink(PRIVATE_NAME, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return directory / PRIVATE_NAME, directory / PUBLIC_NAME


def _create(folder: int, directory: Path, name: str, data: bytes, mode: int) -> None:
    """Create `name` in `folder` with `data`: never an existing file, never through a link."""
    path = directory / name
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=folder)
    except FileExistsError:
        kind = " as a symbolic link" if os.path.islink(path) else ""
        raise UsageError(f"{path}: already exists{kind}; refusing to overwrite a key") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot create the key: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may only have narrowed it; be exact
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        os.unlink(name, dir_fd=folder)
        raise UsageError(f"{path}: cannot write the key: {exc.strerror}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: signing key not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(f"{path}: private key is readable by others "
                                 f"(mode {stat.S_IMODE(mode):04o}). Fix with: chmod 600 {path}")
    data = read_bytes(path, what="signing key", limit=MAX_KEY_BYTES)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


def _load_public_key(path: Path) -> Ed25519PublicKey:
    data = read_bytes(path, what="trusted key", limit=MAX_KEY_BYTES)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"{path}: not a PEM public key; a trusted key is the signing.pub "
                         "that hardhost keygen wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path}: not an Ed25519 public key")
    return key


def load_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by key id, from one PEM file or every *.pub in a directory.

    Every file is read bounded and must be a regular file holding an Ed25519 PEM public
    key; the first that is not is a `UsageError` naming it.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{path}: trusted key not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the trusted key: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        try:
            files = sorted(path.glob("*.pub"))
        except OSError as exc:
            raise UsageError(f"{path}: cannot list the trusted keys: {exc.strerror}") from None
        if not files:
            raise UsageError(f"{path}: no *.pub trusted keys in this directory")
        if len(files) > MAX_TRUSTED_KEYS:
            raise UsageError(f"{path}: more than {MAX_TRUSTED_KEYS} *.pub trusted keys")
    else:
        files = [path]
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
    """Return the payload of envelope `data` if a trusted key signed it; raise `TrustError`.

    Every field is type-checked before use: the envelope is hostile until a signature over
    it verifies.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise TrustError(f"{origin}: envelope larger than {MAX_ENVELOPE_BYTES} bytes")
    envelope = decode_json(data, origin=f"{origin}: DSSE envelope (truncated or corrupt?)",
                           error=TrustError)
    if not isinstance(envelope, dict):
        raise TrustError(f"{origin}: not a DSSE envelope (not a JSON object)")
    kind = envelope.get("payloadType")
    if kind != payload_type:
        shown = (repr(kind[:80]) if isinstance(kind, str)
                 else f"not a string ({type(kind).__name__})")
        raise TrustError(f"{origin}: payloadType is {shown}, expected {payload_type!r}")
    payload = _b64(envelope.get("payload"), "payload", origin)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise TrustError(f"{origin}: the envelope carries no signature")
    if len(signatures) > MAX_SIGNATURES:
        raise TrustError(f"{origin}: more than {MAX_SIGNATURES} signatures")
    entries: list[tuple[str, bytes]] = []
    for index, entry in enumerate(signatures):
        if not isinstance(entry, dict):
            raise TrustError(f"{origin}: signatures[{index}] is not an object")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str):
            raise TrustError(f"{origin}: signatures[{index}].keyid is not a string")
        entries.append((keyid, _b64(entry.get("sig"), f"signatures[{index}].sig", origin)))
    signed = pae(payload_type, payload)
    for keyid, sig in entries:
        # keyid is a hint, not signed: try its key first, and every trusted key if the hint
        # is empty or unknown (DSSE makes it optional).
        candidates = ([(keyid, trusted[keyid])] if keyid in trusted
                      else list(trusted.items()))
        for candidate_id, public in candidates:
            try:
                public.verify(sig, signed)
            except InvalidSignature:
                continue
            return Verified(payload, candidate_id)
    if not any(keyid in trusted for keyid, _ in entries):
        named = ", ".join(printable(k[:16]) or "(no keyid)" for k, _ in entries)
        raise TrustError(f"{origin}: signed by an untrusted key ({named})")
    raise TrustError(f"{origin}: bad signature: the envelope was changed after signing")
