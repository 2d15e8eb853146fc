"""A real registry on loopback: Debian's docker-registry (distribution 2.8), plain HTTP,
its storage in a temporary folder."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port

REGISTRY = shutil.which("docker-registry", path="/usr/bin:/bin")


@dataclass
class LoopbackRegistry:
    address: str  # 127.0.0.1:PORT, a registry name as image references and policies give it
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(directory: Path) -> LoopbackRegistry:
    assert REGISTRY is not None, "docker-registry is not installed"
    port = free_port()
    (directory / "storage").mkdir(parents=True, exist_ok=True)
    config = directory / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {directory / 'storage'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    log = directory / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    registry = LoopbackRegistry(f"127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"docker-registry exited: {log.read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"http://{registry.address}/v2/", timeout=2):
                return registry
        except OSError:  # refused, reset or timed out: not up yet
            time.sleep(0.1)
    registry.stop()
    raise AssertionError(f"docker-registry did not answer on {registry.address}")
