"""The small-image path: minimal.toml builds a squashfs (xz) root that boots verified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hardhost.builder.build import build
from hardhost.builder.spec import load_spec, with_authorized_keys
from hardhost.verifier.evidence import collect
from hardhost.verifier.transport import connect
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES
from tests.support.vms import BootedHost, BuiltImage, boot

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def minimal(tmp_path_factory: pytest.TempPathFactory, client_key: KeyPair,
            signing_keys: SigningKeys) -> Iterator[BootedHost]:
    spec = with_authorized_keys(load_spec(IMAGES / "minimal.toml"), (client_key.public_line,),
                                "test")
    image = BuiltImage(spec, build(spec, tmp_path_factory.mktemp("minimal"),
                                   key=signing_keys.key), signing_keys.public)
    yield from boot(image, "e2e-minimal", client_key.private)


def test_minimal_boots_a_verified_squashfs_root(minimal: BootedHost) -> None:
    with connect(minimal.target, known_hosts=minimal.known_hosts, identity=minimal.identity,
                 timeout=30) as session:
        ev = collect(session, timeout=60)
        docker = session.run(["sh", "-c", "command -v dockerd || echo absent"])
        apt = session.run(["sh", "-c", "command -v apt-get || echo absent"])
    root = ev.mount("/")
    assert root is not None and root.fstype == "squashfs" and root.read_only
    assert ev.verity["status"] == "verified"
    assert ev.verity["root hash"] == minimal.image.record["root_hash"]
    assert minimal.image.record["compression"] == "xz"
    assert docker.stdout.strip() == b"absent"
    assert apt.stdout.strip() == b"absent", "the package manager should be pruned"


def test_minimal_is_smaller_than_container_host(minimal: BootedHost,
                                                container_host: BuiltImage) -> None:
    def root_size(record: dict[str, object]) -> int:
        artifacts = record["artifacts"]
        assert isinstance(artifacts, dict)
        return int(artifacts["root.img"]["size"])

    assert root_size(minimal.image.record) < root_size(container_host.record)
