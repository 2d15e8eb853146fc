"""The QMP power and reset buttons, against a real qemu (paused before its firmware runs, so nothing
boots); and against a fake for the one fault a real qemu does not make: garbage."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.vm.qmp import QmpError, power_down, reset


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qmp.sock"
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults",
         "-display", "none", "-S", "-qmp", f"unix:{path},server=on,wait=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if path.exists():
                break
            threading.Event().wait(0.05)
        yield path
    finally:
        process.kill()
        process.wait()


@pytest.mark.e2e  # a real qemu (qemu-system-x86)
def test_the_power_button_is_pressed_through_qemus_own_socket(qemu: Path) -> None:
    power_down(qemu, timeout=10)  # qemu answers each command with {"return": {}}
    reset(qemu, timeout=10)


def test_no_socket_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        power_down(tmp_path / "absent.sock", timeout=1)


def _fake_qmp(path: Path, greeting: bytes) -> threading.Thread:
    """FAKE: a socket that answers with `greeting`, which no qemu sends."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(greeting)
                connection.shutdown(socket.SHUT_WR)
                connection.settimeout(5)
                while connection.recv(4096):  # until the client hangs up
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("greeting", "reason"), [
    (b"not json\n", "not a QMP message"),
    (b'["a list"]\n', "not a QMP message"),
    (b'{"hello": 1}\n', "no QMP greeting"),
    (b'{"QMP": {}}', "ended or sent an overlong line"),
    (b'{"QMP": {}}\n{"error": {"class": "GenericError"}}\n', "qmp_capabilities: "),
])
def test_garbage_on_the_socket_is_a_qmp_error(tmp_path: Path, greeting: bytes,
                                              reason: str) -> None:
    path = tmp_path / "fake.sock"
    thread = _fake_qmp(path, greeting)
    with pytest.raises(QmpError, match=reason):
        power_down(path, timeout=5)
    thread.join(5)
