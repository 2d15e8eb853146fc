"""A real OpenSSH sshd on loopback, made and waited on (the `loopback_sshd` fixture's maker,
and bench/fleet.py's hosts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hardhost.verifier.transport import public_key_from_line, wait_for_host_key
from tests.support.keys import KeyPair, make_keypair
from tests.support.net import free_port


def sshd_binary() -> str:
    """OpenSSH's sshd, with the privilege-separation directory it insists on."""
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin")
    if sshd is None or os.geteuid() != 0:
        raise RuntimeError("sshd tests need root and openssh-server (make test provides both)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return sshd


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
