"""A virtual TPM 2.0 for a VM: swtpm, manufactured like a real one, with its own local CA.

Manufacturing (`swtpm_setup --create-ek-cert --create-platform-cert`) creates the EKs and
writes the RSA EK's certificate to NV index 0x01c00002, signed by a CA that
`swtpm_localca` makes on first use in the instance's own folder. That CA's issuing
certificate and self-signed root, as one PEM bundle, are what a verifier trusts
(`verifier.tpm_ek.load_ca_bundle`): an EK certificate from any other CA is refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from socket import create_connection

from hardhost.core.errors import CommandFailed, HardhostError
from hardhost.core.run import process_cmdline, run, which

# Files swtpm_localca writes in its state folder (swtpm 0.7, samples/swtpm_localca.c).
_SIGNING_KEY = "signkey.pem"
_ISSUER_CERT = "issuercert.pem"
_ROOT_KEY = "swtpm-localca-rootca-privkey.pem"
_ROOT_CERT = "swtpm-localca-rootca-cert.pem"
# The kernel's sun_path holds 108 bytes with its NUL (unix(7)).
_SOCKET_PATH_MAX = 107


class VtpmError(HardhostError):
    """A vTPM that cannot be made or is not running."""


@dataclass(frozen=True)
class LocalCa:
    """A swtpm_localca CA in `directory` and the swtpm_setup configuration that uses it."""

    directory: Path

    @property
    def setup_config(self) -> Path:
        return self.directory / "swtpm_setup.conf"

    @property
    def private_keys(self) -> tuple[Path, ...]:
        return self.directory / _SIGNING_KEY, self.directory / _ROOT_KEY

    @property
    def bundle(self) -> Path:
        """The issuing certificate and its self-signed root: the EK trust anchor."""
        return self.directory / "bundle.pem"


def make_local_ca(directory: Path) -> LocalCa:
    """Write the configuration of a CA in `directory`, a new folder; swtpm_localca creates
    the CA's keys when the first TPM is manufactured with it."""
    directory.mkdir(mode=0o700, parents=True)
    conf = directory / "localca.conf"
    conf.write_text(f"statedir = {directory}\nsigningkey = {directory / _SIGNING_KEY}\n"
                    f"issuercert = {directory / _ISSUER_CERT}\n"
                    f"certserial = {directory / 'certserial'}\n")
    options = directory / "localca.options"
    options.write_text("--platform-manufacturer hardhost\n--platform-version 2.1\n"
                       "--platform-model swtpm\n")
    # Only the sha256 bank: the PCR predictions and quotes are sha256 (builder.pcr.BANK).
    LocalCa(directory).setup_config.write_text(
        f"create_certs_tool = {which('swtpm_localca')}\ncreate_certs_tool_config = {conf}\n"
        f"create_certs_tool_options = {options}\nactive_pcr_banks = sha256\n")
    return LocalCa(directory)


def manufacture(state: Path, ca: LocalCa) -> None:
    """A new TPM in `state`, a new folder: EKs created, the RSA EK's certificate (NV
    0x01c00002) and a platform certificate signed by `ca`, whose bundle is then written."""
    which("swtpm")  # swtpm_setup runs it; name the package before swtpm_setup fails
    state.mkdir(mode=0o700, parents=True)
    run([which("swtpm_setup"), "--tpm2", "--tpmstate", state, "--create-ek-cert",
         "--create-platform-cert", "--config", ca.setup_config, "--overwrite"], timeout=120)
    # swtpm_localca creates the CA's keys under whatever umask it inherits: whatever that
    # was, the keys stay their owner's alone.
    for key in ca.private_keys:
        key.chmod(0o600)
    partial = ca.bundle.with_name(f".{ca.bundle.name}.partial")
    partial.write_bytes((ca.directory / _ISSUER_CERT).read_bytes()
                        + (ca.directory / _ROOT_CERT).read_bytes())
    partial.chmod(0o644)
    partial.replace(ca.bundle)


def running_pid(pid_file: Path, *marks: bytes) -> int | None:
    """The pid in `pid_file`, if that process still runs with each of `marks` in its
    command line: a pid file outlives a killed process, and its pid may be reused."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = process_cmdline(pid)
    return pid if cmdline and all(mark in cmdline for mark in marks) else None


@dataclass(frozen=True)
class Swtpm:
    """A swtpm daemon serving the TPM in `state` to qemu over a unix control socket.

    With `tcp_port`, it serves tpm2-tools instead, with no qemu or firmware between: TPM
    commands on that loopback port and the control channel on the next one (the swtpm
    TCTI's `swtpm:host=127.0.0.1,port=P`), and `socket` is not made.
    """

    state: Path
    socket: Path
    pid_file: Path
    log_file: Path
    tcp_port: int | None = None

    def argv(self) -> list[str]:
        if self.tcp_port is None:
            # No --flags startup-*: the firmware sends TPM2_Startup itself, as on a real
            # machine, and the golden PCR 0 and 7 in builder.pcr were recorded from boots
            # made that way. No --terminate: a qemu that exits cleanly sends CMD_SHUTDOWN,
            # which ends swtpm, and a guest reboot keeps the connection, so the TPM is reset
            # (resetCount grows) but keeps running with its state.
            serve = ["--ctrl", f"type=unixio,path={self.socket},mode=0600"]
        else:
            # tpm2-tss 3.2's swtpm TCTI sets the locality over the control port, the command
            # port plus one. No firmware starts this TPM, so swtpm does: each start is a TPM
            # Reset (TPM2_Startup(CLEAR), resetCount grows), as a reboot would be.
            serve = ["--server", f"type=tcp,port={self.tcp_port},bindaddr=127.0.0.1",
                     "--ctrl", f"type=tcp,port={self.tcp_port + 1},bindaddr=127.0.0.1",
                     "--flags", "not-need-init,startup-clear"]
        return [which("swtpm"), "socket", "--tpm2",
                "--tpmstate", f"dir={self.state},mode=0600", *serve,
                "--pid", f"file={self.pid_file}",
                "--log", f"file={self.log_file},level=1", "--daemon"]

    def pid(self) -> int | None:
        """The daemon's pid, if that process is still a swtpm serving this state."""
        return running_pid(self.pid_file, b"swtpm", os.fsencode(self.state))

    def _ready(self) -> bool:
        if self.tcp_port is None:
            return self.socket.exists()
        try:
            create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
        except OSError:
            return False
        return True

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon and return once it accepts qemu (or, with `tcp_port`, tools)."""
        if self.tcp_port is None and len(os.fsencode(self.socket)) > _SOCKET_PATH_MAX:
            raise VtpmError(f"{self.socket}: longer than a unix socket path may be "
                            f"({_SOCKET_PATH_MAX} bytes); use a shorter $XDG_STATE_HOME")
        self.socket.unlink(missing_ok=True)
        self.log_file.unlink(missing_ok=True)
        try:
            run(self.argv(), timeout=timeout)
        except CommandFailed as exc:
            # With --log file=, swtpm writes its reason there, not to stderr.
            raise VtpmError(f"swtpm did not start ({exc.detail}); see its log "
                            f"{self.log_file}") from None
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.pid() is None or time.monotonic() > deadline:
                raise VtpmError(f"swtpm for {self.state} did not start; see its log "
                                f"{self.log_file}")
            time.sleep(0.05)
