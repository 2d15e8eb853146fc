"""SSH and signing key pairs made afresh for a test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public_line: str


def make_keypair(directory: Path, name: str) -> KeyPair:
    """An Ed25519 key pair in OpenSSH format, the private half mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = directory / name
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    (directory / f"{name}.pub").write_text(f"{public} hardhost-test\n")
    return KeyPair(private, public)


@dataclass(frozen=True)
class SigningKeys:
    private: Path
    public: Path
    key: Ed25519PrivateKey
