"""e2e fixtures: a real container-host build and a qemu instance booted from it (the helpers
behind them are in tests/support/vms.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hardhost.builder.build import build
from hardhost.builder.spec import load_spec, with_authorized_keys
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES
from tests.support.vms import BootedHost, BuiltImage, boot


@pytest.fixture(scope="session")
def container_host(tmp_path_factory: pytest.TempPathFactory, client_key: KeyPair,
                   signing_keys: SigningKeys) -> BuiltImage:
    spec = load_spec(IMAGES / "container-host.toml")
    spec = with_authorized_keys(spec, (client_key.public_line,), "test")
    out = tmp_path_factory.mktemp("images")
    return BuiltImage(spec, build(spec, out, key=signing_keys.key), signing_keys.public)


@pytest.fixture(scope="module")
def booted(container_host: BuiltImage, client_key: KeyPair) -> Iterator[BootedHost]:
    yield from boot(container_host, "e2e-main", client_key.private)
