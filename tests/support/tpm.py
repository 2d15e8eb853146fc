"""A manufactured swtpm served on loopback TCP to tpm2-tools, through the VM harness's own
swtpm launcher, for tests of enrollment and quotes."""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.run import process_cmdline, run
from hardhost.vm import vtpm
from hardhost.vm.vtpm import LocalCa


def free_port_pair() -> int:
    """A loopback port P with P+1 free too: the swtpm TCTI talks to P and controls P+1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free loopback ports")


@dataclass(frozen=True)
class TcpTpm:
    """A TPM served to tpm2-tools on loopback TCP by the VM harness's swtpm launcher;
    stopping it and starting it again on the same state and port is a reboot."""

    daemon: vtpm.Swtpm

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.daemon.tcp_port}"

    def stop(self) -> None:
        """SIGTERM the daemon and wait until the process has gone (its pid file goes
        first)."""
        pid = self.daemon.pid()
        if pid is None:
            return
        cmdline = process_cmdline(pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process_cmdline(pid) == cmdline:
            if time.monotonic() > deadline:
                raise RuntimeError(f"swtpm {pid} did not stop")
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.daemon.start()

    def tool(self, *argv: str | Path) -> bytes:
        return run(list(argv), env={"TPM2TOOLS_TCTI": self.tcti}, capture=True,
                   timeout=30).stdout


def serve(state: Path) -> TcpTpm:
    """Start a swtpm on the manufactured TPM in `state`, for tpm2-tools."""
    beside = state.parent / state.name
    daemon = vtpm.Swtpm(state, beside.with_suffix(".sock"), beside.with_suffix(".pid"),
                        beside.with_suffix(".log"), tcp_port=free_port_pair())
    daemon.start()
    return TcpTpm(daemon)


@dataclass(frozen=True)
class Tpm:
    swtpm: TcpTpm
    ca: LocalCa
