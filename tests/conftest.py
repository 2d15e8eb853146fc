"""Shared fixtures: real, disposable things (SSH keys, a loopback sshd) that tests wait on.
Their makers and the other helpers tests share live in tests/support/.

Markers and folders agree, and collection checks it: every test under tests/e2e/ is marked
`e2e` (it builds or boots an image); an `e2e` test elsewhere in tests/ needs root and real
local daemons (a loopback sshd, runc, swtpm, a paused qemu, a tmpfs mount) but builds and
boots nothing, and is given the `system` marker here so that it can be run apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.image.signing import keygen, load_private_key
from hardhost.vm.vtpm import make_local_ca, manufacture
from tests.support.keys import KeyPair, SigningKeys, make_keypair
from tests.support.net import silent_tcp_server
from tests.support.paths import REPO
from tests.support.sshd import LoopbackHost, start_sshd
from tests.support.tpm import Tpm, serve

E2E_FOLDER = REPO / "tests" / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = []
    for item in items:
        in_e2e_folder = E2E_FOLDER in item.path.parents
        marked = item.get_closest_marker("e2e") is not None
        if in_e2e_folder and not marked:
            unmarked.append(item.nodeid)
        elif not in_e2e_folder and (marked or "tpm" in getattr(item, "fixturenames", ())):
            # A test on a real swtpm needs the daemon and its tools, like sshd and runc.
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.system)
    if unmarked:
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) under tests/e2e/ lack the e2e marker, first "
            f"{unmarked[0]}; add `pytestmark = pytest.mark.e2e` to the module, or move a test "
            "that builds and boots nothing out of tests/e2e/")


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


@pytest.fixture
def loopback_sshd(tmp_path: Path, client_key: KeyPair) -> Iterator[LoopbackHost]:
    """A real OpenSSH sshd on 127.0.0.1, with its own host key, accepting `client_key` for root."""
    running = start_sshd(tmp_path, client_key)
    try:
        yield running.host
    finally:
        running.stop()


@pytest.fixture
def silent_server() -> Iterator[int]:
    with silent_tcp_server() as port:
        yield port


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tpm]:
    base = tmp_path_factory.mktemp("tpm")
    ca = make_local_ca(base / "ca")
    manufacture(base / "state", ca)
    swtpm = serve(base / "state")
    try:
        yield Tpm(swtpm, ca)
    finally:
        swtpm.stop()


@pytest.fixture(scope="module")
def tpm_host(tpm: Tpm, tmp_path_factory: pytest.TempPathFactory,
             client_key: KeyPair) -> Iterator[LoopbackHost]:
    """A loopback sshd whose sessions reach the swtpm. sshd keeps only the first SetEnv it
    reads, and start_sshd already sets one, so this one sits in a Match block, which
    replaces it: both variables go there."""
    running = start_sshd(tmp_path_factory.mktemp("tpm-sshd"), client_key, extra_config=(
        f"Match all\n    SetEnv SHLVL=1 TPM2TOOLS_TCTI={tpm.swtpm.tcti}\n"))
    try:
        yield running.host
    finally:
        running.stop()
