"""e2e fixtures: a real container-host build and a qemu instance booted from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder import vm
from builder.build import build
from builder.spec import Spec, load_spec, with_authorized_keys
from tests.conftest import IMAGES, KeyPair, free_port
from verifier.transport import Target

BOOT_TIMEOUT = 400  # seconds; TCG boots take about 30 s, a loaded CI machine much longer


@dataclass(frozen=True)
class BuiltImage:
    spec: Spec
    directory: Path

    @property
    def record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.directory / "build.json").read_text())
        return data


@dataclass(frozen=True)
class BootedHost:
    image: BuiltImage
    instance: vm.Instance
    target: Target
    identity: Path

    @property
    def known_hosts(self) -> Path:
        return self.instance.known_hosts


@pytest.fixture(scope="session")
def container_host(tmp_path_factory: pytest.TempPathFactory, client_key: KeyPair,
                   signing_key: Ed25519PrivateKey) -> BuiltImage:
    spec = load_spec(IMAGES / "container-host.toml")
    spec = with_authorized_keys(spec, (client_key.public_line,), "test")
    out = tmp_path_factory.mktemp("images")
    return BuiltImage(spec, build(spec, out, key=signing_key))


def boot(image: BuiltImage, name: str, identity: Path) -> Iterator[BootedHost]:
    port = free_port()
    vm.stop(name, purge=True)
    instance = vm.start(image.directory, name=name, ssh_port=port, timeout=BOOT_TIMEOUT)
    try:
        yield BootedHost(image, instance, Target("root", "127.0.0.1", port), identity)
    finally:
        vm.stop(name, purge=True)


@pytest.fixture(scope="module")
def booted(container_host: BuiltImage, client_key: KeyPair) -> Iterator[BootedHost]:
    yield from boot(container_host, "e2e-main", client_key.private)
