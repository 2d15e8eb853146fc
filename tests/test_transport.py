"""The SSH transport against a real sshd on loopback, plus one named fake for garbage."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.core.errors import TrustError, Unreachable, UsageError
from hardhost.verifier.evidence import collect
from hardhost.verifier.transport import HostOutputError, Target, connect
from tests.support.keys import KeyPair, make_keypair
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.sshd import LoopbackHost

pytestmark = pytest.mark.e2e


def target(host: LoopbackHost) -> Target:
    return Target("root", "127.0.0.1", host.port)


def test_target_parsing() -> None:
    assert Target.parse("root@10.0.0.1:2222") == Target("root", "10.0.0.1", 2222)
    assert Target.parse("admin@host") == Target("admin", "host", 22)
    assert Target.parse("root@[::1]:22").host == "::1"
    # Without a user or port, ssh_config's User and Port may apply; the defaults stand in.
    bare = Target.parse("host")
    assert (bare, bare.user_given, bare.port_given) == (Target("root", "host", 22), False, False)
    assert Target.parse("admin@host:22").port_given
    for bad in ("root@", "root@host:99999", "root@host:x", "ro ot@host"):
        with pytest.raises(UsageError):
            Target.parse(bad)


def test_arguments_are_quoted_not_interpreted(loopback_sshd: LoopbackHost,
                                              client_key: KeyPair) -> None:
    with connect(target(loopback_sshd), known_hosts=loopback_sshd.known_hosts,
                 identity=client_key.private, timeout=20) as session:
        result = session.run(["printf", "%s", "a b; echo injected $(id)"])
    assert result.exit_status == 0
    assert result.stdout == b"a b; echo injected $(id)"


def test_unknown_host_key_is_refused(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                     tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(TrustError, match="is not in"), connect(
            target(loopback_sshd), known_hosts=empty, identity=client_key.private, timeout=20):
        pass


def test_changed_host_key_is_refused(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                     tmp_path: Path) -> None:
    other = make_keypair(tmp_path / "other", "key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{loopback_sshd.port} {other.public_line}\n")
    with pytest.raises(TrustError, match="host key changed"), connect(
            target(loopback_sshd), known_hosts=known, identity=client_key.private, timeout=20):
        pass


def test_wrong_client_key_is_refused(loopback_sshd: LoopbackHost, tmp_path: Path) -> None:
    stranger = make_keypair(tmp_path / "stranger", "id")
    with pytest.raises(TrustError, match="refused the key"), connect(
            target(loopback_sshd), known_hosts=loopback_sshd.known_hosts,
            identity=stranger.private, timeout=20):
        pass


def test_closed_port_is_unreachable(client_key: KeyPair, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(Unreachable, match="cannot connect"), connect(
            Target("root", "127.0.0.1", free_port()), known_hosts=known,
            identity=client_key.private, timeout=5):
        pass


def test_output_is_capped(loopback_sshd: LoopbackHost, client_key: KeyPair) -> None:
    with connect(target(loopback_sshd), known_hosts=loopback_sshd.known_hosts,
                 identity=client_key.private, timeout=20) as session, \
            pytest.raises(HostOutputError, match="exceeds 4096 bytes"):
        session.run(["head", "-c", "1000000", "/dev/zero"], limit=4096)


def test_output_arrives_whole_after_a_quick_exit(loopback_sshd: LoopbackHost,
                                                client_key: KeyPair) -> None:
    """sshd can send the exit status before the last output: reading stops only at EOF."""
    with connect(target(loopback_sshd), known_hosts=loopback_sshd.known_hosts,
                 identity=client_key.private, timeout=20) as session:
        for _ in range(5):
            result = session.run(["head", "-c", "3000000", "/dev/urandom"])
            assert len(result.stdout) == 3000000


def test_slow_command_times_out(loopback_sshd: LoopbackHost, client_key: KeyPair) -> None:
    with connect(target(loopback_sshd), known_hosts=loopback_sshd.known_hosts,
                 identity=client_key.private, timeout=20) as session, \
            pytest.raises(Unreachable, match="did not finish within 2s"):
        session.run(["sleep", "30"], timeout=2)


def test_evidence_from_a_real_host_parses(loopback_sshd: LoopbackHost,
                                          client_key: KeyPair) -> None:
    """This machine is not a hardhost image, but its real /proc output must parse."""
    with connect(target(loopback_sshd), known_hosts=loopback_sshd.known_hosts,
                 identity=client_key.private, timeout=20) as session:
        evidence = collect(session, timeout=30)
    assert evidence.mount("/") is not None
    assert evidence.sysctls["kernel.ostype"] == "Linux"
    assert evidence.overlay_changes == {"etc": None, "var": None}


@pytest.fixture
def garbage_host() -> Iterator[int]:
    """FAKE host: answers every connection with bytes that are not SSH."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"\x00\xffHTTP/1.1 400 garbage\r\n" * 50)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    server.close()


def test_garbage_host_is_unreachable_not_a_crash(garbage_host: int, client_key: KeyPair,
                                                 tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(Unreachable), connect(Target("root", "127.0.0.1", garbage_host),
                                             known_hosts=known, identity=client_key.private,
                                             timeout=5):
        pass


# A library caller with no logging set up, as the Ansible action plugins are: a peer that
# accepts and hangs up before its banner, as a booting guest's port forward does.
_HANG_UP_BEFORE_BANNER = """
import socket, threading
from hardhost.core.errors import Unreachable
from hardhost.verifier.transport import offered_host_key
server = socket.create_server(("127.0.0.1", 0))
def hang_up():
    while True:
        server.accept()[0].close()
threading.Thread(target=hang_up, daemon=True).start()
try:
    offered_host_key("127.0.0.1", server.getsockname()[1], 5)
except Unreachable as exc:
    print(exc)
"""


def test_a_failed_handshake_prints_nothing_of_paramiko_to_a_library_caller() -> None:
    result = subprocess.run([sys.executable, "-c", _HANG_UP_BEFORE_BANNER], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert "no SSH key exchange" in result.stdout
    assert result.stderr == ""  # paramiko's thread would print its traceback here
