"""Hostile SSH peers: each misbehaviour must end as a `HardhostError` within the deadline.

The peer is a named fake: OpenSSH's sshd cannot be made to refuse an exec request, starve a
window or stall an authentication on cue. Everything else (the client, the sockets, the SSH
protocol on the wire) is real paramiko over loopback TCP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from hardhost.core.errors import HardhostError, TrustError, Unreachable
from hardhost.verifier.transport import (
    HostOutputError,
    Target,
    connect,
    offered_host_key,
    wait_for_host_key,
)
from tests.support.keys import KeyPair, make_keypair

pytestmark = pytest.mark.e2e

TIMEOUT = 3.0
SLACK = 2.5  # seconds past the deadline a call may take to return: thread wake-ups, closes


class FakeHostilePeer(paramiko.ServerInterface):
    """FAKE sshd: authenticates anyone by public key, then misbehaves as `behaviour` says."""

    def __init__(self, behaviour: str, stop: threading.Event) -> None:
        self.behaviour = behaviour
        self.stop = stop

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if self.behaviour == "stall-auth":
            self.stop.wait()  # holds the transport thread: no answer ever comes
        if self.behaviour == "refuse-auth":
            return paramiko.common.AUTH_FAILED
        return paramiko.common.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if self.behaviour == "refuse-channel":
            return paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return paramiko.common.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.behaviour == "refuse-exec":
            return False
        if self.behaviour == "stall-exec":
            self.stop.wait()
            return False
        threading.Thread(target=self._act, args=(channel,), daemon=True).start()
        return True

    def _act(self, channel: paramiko.Channel) -> None:
        try:
            if self.behaviour == "close-midway":
                channel.sendall(b"partial evidence\n")
                time.sleep(0.2)
                channel.get_transport().close()
            elif self.behaviour == "no-exit-status":
                channel.sendall(b"all output\n")
                channel.shutdown_write()  # EOF, then neither a status nor a close
            elif self.behaviour == "flood-stderr":
                while not self.stop.is_set():
                    channel.sendall_stderr(b"E" * 32768)
            # "starve": never read stdin, so the window the client may send into stays shut
        except (OSError, EOFError, paramiko.SSHException):
            pass


@dataclass(frozen=True)
class Peer:
    port: int
    known_hosts: Path
    target: Target


@pytest.fixture
def hostile_peer(tmp_path: Path) -> Iterator[Callable[[str], Peer]]:
    """Start a FAKE hostile sshd on loopback with the given behaviour; its key is known."""
    host_key = make_keypair(tmp_path / "fake-host", "key")
    key = paramiko.Ed25519Key.from_private_key_file(str(host_key.private))
    stop = threading.Event()
    servers: list[socket.socket] = []
    transports: list[paramiko.Transport] = []

    def start(behaviour: str) -> Peer:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        servers.append(server)
        port = int(server.getsockname()[1])

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                if behaviour == "silent":
                    transports_socks.append(conn)  # accepted, and never a byte sent
                    continue
                # A small window: the script the client sends does not fit.
                transport = paramiko.Transport(conn, default_window_size=32768)
                transport.add_server_key(key)
                transports.append(transport)
                transport.start_server(server=FakeHostilePeer(behaviour, stop))

        transports_socks: list[socket.socket] = []
        threading.Thread(target=serve, daemon=True).start()
        known = tmp_path / f"known_hosts-{behaviour}"
        known.write_text(f"[127.0.0.1]:{port} {host_key.public_line}\n")
        return Peer(port, known, Target("root", "127.0.0.1", port))

    yield start
    stop.set()
    for server in servers:
        server.close()
    for transport in transports:
        transport.close()


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        call()
    except BaseException as exc:  # the test asserts on what was raised
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def run_on(peer: Peer, client_key: KeyPair, **kwargs: object) -> Callable[[], object]:
    def call() -> object:
        with connect(peer.target, known_hosts=peer.known_hosts, identity=client_key.private,
                     timeout=TIMEOUT) as session:
            if kwargs.get("script"):
                return session.run_script("x" * 1_000_000)
            return session.run(["cat", "/proc/self/status"])
    return call


@pytest.mark.parametrize("behaviour", ["refuse-channel", "refuse-exec", "stall-exec",
                                       "close-midway", "no-exit-status"])
def test_a_misbehaving_channel_is_unreachable_in_time(
        hostile_peer: Callable[[str], Peer], client_key: KeyPair, behaviour: str) -> None:
    exc, elapsed = timed(run_on(hostile_peer(behaviour), client_key))
    assert isinstance(exc, Unreachable), repr(exc)
    assert elapsed < TIMEOUT + SLACK


def test_a_starved_window_ends_sending_at_the_deadline(
        hostile_peer: Callable[[str], Peer], client_key: KeyPair) -> None:
    """The host never reads stdin: sendall() of a large script would wait for ever."""
    exc, elapsed = timed(run_on(hostile_peer("starve"), client_key, script=True))
    assert isinstance(exc, Unreachable), repr(exc)
    assert "did not finish within 3s" in str(exc)
    assert TIMEOUT - 0.5 < elapsed < TIMEOUT + SLACK


def test_a_stderr_flood_is_capped(hostile_peer: Callable[[str], Peer],
                                  client_key: KeyPair) -> None:
    exc, elapsed = timed(run_on(hostile_peer("flood-stderr"), client_key))
    assert isinstance(exc, HostOutputError), repr(exc)
    assert elapsed < TIMEOUT + SLACK


def test_a_stalled_authentication_is_a_timeout_not_a_refusal(
        hostile_peer: Callable[[str], Peer], client_key: KeyPair) -> None:
    exc, elapsed = timed(run_on(hostile_peer("stall-auth"), client_key))
    assert isinstance(exc, Unreachable) and exc.exit_code == 3, repr(exc)
    assert "authentication did not finish" in str(exc)
    assert elapsed < TIMEOUT + SLACK


def test_a_refused_authentication_is_a_trust_failure(
        hostile_peer: Callable[[str], Peer], client_key: KeyPair) -> None:
    exc, _ = timed(run_on(hostile_peer("refuse-auth"), client_key))
    assert isinstance(exc, TrustError) and exc.exit_code == 4, repr(exc)


def test_a_silent_peer_ends_every_call_in_time(hostile_peer: Callable[[str], Peer],
                                               client_key: KeyPair) -> None:
    """Accepts TCP and never speaks: connect, offered_host_key and wait_for_host_key end."""
    peer = hostile_peer("silent")
    key = paramiko.Ed25519Key.from_private_key_file(str(client_key.private))
    for call in (run_on(peer, client_key),
                 lambda: offered_host_key("127.0.0.1", peer.port, TIMEOUT),
                 lambda: wait_for_host_key("127.0.0.1", peer.port, key, timeout=TIMEOUT)):
        exc, elapsed = timed(call)
        assert isinstance(exc, Unreachable), repr(exc)
        assert elapsed < TIMEOUT + SLACK


def test_every_failure_is_a_hardhost_error(hostile_peer: Callable[[str], Peer],
                                           client_key: KeyPair) -> None:
    """One session, many bad answers in turn: nothing but HardhostError ever escapes."""
    for behaviour in ("refuse-channel", "refuse-exec", "close-midway", "flood-stderr"):
        exc, _ = timed(run_on(hostile_peer(behaviour), client_key))
        assert isinstance(exc, HardhostError), f"{behaviour}: {exc!r}"
