"""Shared fixtures: real, disposable things (SSH keys, a loopback sshd) that tests wait on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.image.signing import keygen, load_private_key
from hardhost.verifier.transport import public_key_from_line, wait_for_host_key

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"


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


def sshd_binary() -> str:
    """OpenSSH's sshd, with the privilege-separation directory it insists on."""
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin")
    if sshd is None or os.geteuid() != 0:
        pytest.fail("sshd tests need root and openssh-server (make test provides both)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return sshd


@dataclass(frozen=True)
class SigningKeys:
    private: Path
    public: Path
    key: Ed25519PrivateKey


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    directory = tmp_path_factory.mktemp("signing")
    private, public = keygen(directory)
    return SigningKeys(private, public, load_private_key(private))


@pytest.fixture(scope="session")
def signing_key(signing_keys: SigningKeys) -> Ed25519PrivateKey:
    return signing_keys.key


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("client-key"), "id_ed25519")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LoopbackHost:
    port: int
    host_key: KeyPair
    known_hosts: Path


@dataclass
class RunningSshd:
    host: LoopbackHost
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_sshd(directory: Path, client_key: KeyPair, *, extra_config: str = "",
               user: str = "root") -> RunningSshd:
    """A real OpenSSH sshd on 127.0.0.1 with its own host key, accepting `client_key` for
    `user` only, and ready (a key exchange completed) when this returns."""
    sshd = sshd_binary()
    host_key = make_keypair(directory / "host", "ssh_host_ed25519_key")
    authorized = directory / "authorized_keys"
    authorized.write_text(f"{client_key.public_line}\n")
    port = free_port()
    config = directory / "sshd_config"
    # SetEnv keeps a login shell's interactive set-up (such as pyenv) out of each session.
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key.private}\n"
        f"PidFile {directory}/sshd.pid\nAuthorizedKeysFile {authorized}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nSetEnv SHLVL=1\n"
        f"AllowUsers {user}\n" + extra_config)
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_host_key("127.0.0.1", port, public_key_from_line(host_key.public_line),
                          timeout=30, alive=lambda: process.poll() is None)
    except BaseException:
        process.kill()
        raise
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.public_line}\n")
    return RunningSshd(LoopbackHost(port, host_key, known_hosts), process)


@pytest.fixture
def loopback_sshd(tmp_path: Path, client_key: KeyPair) -> Iterator[LoopbackHost]:
    """A real OpenSSH sshd on 127.0.0.1, with its own host key, accepting `client_key` for root."""
    running = start_sshd(tmp_path, client_key)
    try:
        yield running.host
    finally:
        running.stop()
