"""A real registry on loopback: Debian's docker-registry (distribution 2.8), plain HTTP,
its storage in a temporary folder."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port

BUSYBOX = Path("/bin/busybox")  # busybox-static: runs in an image of its own
# The signer's and the builder's own policy: they write images, the host decides.
OPEN_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
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


def start_registry(directory: Path, port: int = 0) -> LoopbackRegistry:
    """A registry on 127.0.0.1:`port` (a free one by default)."""
    assert REGISTRY is not None, "docker-registry is not installed"
    port = port or free_port()
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


def skopeo(base: Path, *args: str) -> None:
    subprocess.run(["skopeo", "--policy", str(base / "open.json"), *args], check=True,
                   capture_output=True, timeout=180, stdin=subprocess.DEVNULL)


def build_images(base: Path, layout: Path) -> None:
    """Two tiny images offline: busybox alone, told apart by a label."""
    buildah = ["buildah", "--root", str(base / "buildah"), "--runroot",
               str(base / "buildah-run"), "--storage-driver", "vfs"]
    policy = ["--signature-policy", str(base / "open.json")]

    def step(*args: str) -> str:
        return subprocess.run([*buildah, *args], check=True, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL).stdout.strip()

    for name in ("one", "two"):
        container = step("from", *policy, "scratch")
        step("copy", container, str(BUSYBOX), "/bin/busybox")
        step("config", "--label", f"hardhost.test={name}", "--cmd", "/bin/busybox echo hi",
             container)
        step("commit", *policy, container, f"oci:{layout}:{name}")
        step("rm", container)


@contextlib.contextmanager
def serve_folder(directory: Path, port: int = 0) -> Iterator[int]:
    """`directory` over plain HTTP on 127.0.0.1 (a lookaside signature store), in a thread;
    yields the port."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
