"""The SSH port check before `vm start`: a port in use is refused, a port that only has
closed connections lingering from the last qemu on it is not."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hardhost.core.errors import UsageError
from hardhost.vm import harness as vm


@contextmanager
def listener() -> Iterator[tuple[socket.socket, int]]:
    """A loopback listener bound as qemu's user-net forward binds (SO_REUSEADDR)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server, server.getsockname()[1]


def test_a_port_something_listens_on_is_refused_by_number() -> None:
    with listener() as (_, port), pytest.raises(UsageError, match=f"port {port} on 127.0.0.1"):
        vm._check_port_free(port)


def test_a_port_whose_last_qemu_closed_its_connections_is_free() -> None:
    # A stopped guest's forward closed its side first, so the connection lingers in
    # TIME_WAIT on the forwarded port: a restart on the same port must not call it taken.
    with listener() as (server, port):
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.close()
    lingering = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "06"]
    assert lingering, "the closed connection should linger in TIME_WAIT"
    vm._check_port_free(port)
