"""Client keys: identity files (passphrases from the environment or a terminal) and ssh-agent."""

from __future__ import annotations

import getpass
import io
import logging
import os
import sys
import threading
from pathlib import Path

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hardhost.core.errors import UsageError
from hardhost.core.inputs import file_version, read_bytes

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "HARDHOST_IDENTITY_PASSPHRASE"
WHAT = "identity file"

_lock = threading.Lock()
_loaded: dict[tuple[str, int, int, int, int], paramiko.PKey] = {}


def load_identity(path: Path) -> paramiko.PKey:
    """The private key at `path`, decrypted if need be. A fleet's threads share one load per
    key file version, so a passphrase is asked for once, not once per host."""
    version = file_version(path, what=WHAT)
    with _lock:
        if version not in _loaded:
            _loaded[version] = _decode(path, read_bytes(path, what=WHAT))
        return _loaded[version]


def _decode(path: Path, data: bytes) -> paramiko.PKey:
    try:
        key = _load(data, None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        key = _decrypt(path, data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{path}: not a private key hardhost can use ({_first_line(exc)})"
                         ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
                      | rsa.RSAPrivateKey):
        raise UsageError(f"{path}: {type(key).__name__} keys are not supported; use an "
                         "Ed25519, ECDSA or RSA key")
    # paramiko builds its key classes from text: hand it the decrypted key, in memory only.
    text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()
    key_class: type[paramiko.PKey] = (
        paramiko.Ed25519Key if isinstance(key, ed25519.Ed25519PrivateKey)
        else paramiko.ECDSAKey if isinstance(key, ec.EllipticCurvePrivateKey)
        else paramiko.RSAKey)
    try:
        return key_class.from_private_key(io.StringIO(text))
    except (paramiko.SSHException, ValueError) as exc:
        raise UsageError(f"{path}: cannot load the private key: {_first_line(exc)}") from None


def _load(data: bytes, password: bytes | None) -> object:
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        return serialization.load_ssh_private_key(data, password)
    return serialization.load_pem_private_key(data, password)


def _decrypt(path: Path, data: bytes) -> object:
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise UsageError(f"{path}: the key is encrypted and there is no terminal to ask "
                             f"for its passphrase. Fix with: ssh-add {path}, or set "
                             f"{PASSPHRASE_ENV}")
        passphrase = getpass.getpass(f"Passphrase for {path}: ")
    try:
        return _load(data, passphrase.encode())
    except (ValueError, TypeError):
        source = PASSPHRASE_ENV if PASSPHRASE_ENV in os.environ else "the passphrase typed"
        raise UsageError(f"{path}: wrong passphrase ({source}). Fix with: ssh-add {path}, or "
                         f"set {PASSPHRASE_ENV} to its passphrase") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


class Agent:
    """The keys of the ssh-agent at $SSH_AUTH_SOCK, if one is set and answers; none otherwise.

    A key's signatures are made by the agent, so the agent stays open until `close`."""

    def __init__(self) -> None:
        self._agent: paramiko.Agent | None = None
        self.keys: tuple[paramiko.PKey, ...] = ()
        if not os.environ.get("SSH_AUTH_SOCK"):
            return
        try:
            self._agent = paramiko.Agent()
            self.keys = tuple(self._agent.get_keys())
        except (paramiko.SSHException, OSError) as exc:
            log.warning("ssh-agent at $SSH_AUTH_SOCK does not answer (%s); not using it",
                        _first_line(exc))
            self.close()

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None
