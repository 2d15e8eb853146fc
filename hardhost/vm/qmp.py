"""The QMP commands hardhost sends to its own qemu: the handshake, the power button, reset.

QMP is qemu's JSON control protocol on a Unix socket: a greeting, then one JSON object per
line in each direction, with asynchronous events mixed among the replies.
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

from hardhost.core.errors import HardhostError

_LINE_LIMIT = 64 * 1024  # qemu's replies here are a few hundred bytes


class QmpError(HardhostError):
    """qemu's control socket did not answer as QMP does."""


def power_down(path: Path, *, timeout: float) -> None:
    """Press the guest's ACPI power button: the guest then shuts down as on real hardware."""
    execute(path, "system_powerdown", timeout=timeout)


def reset(path: Path, *, timeout: float) -> None:
    """Press the machine's reset button: the firmware starts again, the guest is not asked."""
    execute(path, "system_reset", timeout=timeout)


def execute(path: Path, command: str, *, timeout: float) -> None:
    """Connect, shake hands, and run one argument-less `command`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        if "QMP" not in _message(stream, path):
            raise QmpError(f"{path}: no QMP greeting")
        for step in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": step}).encode() + b"\n")
            stream.flush()
            _reply(stream, path, step)


def _reply(stream: io.BufferedIOBase, path: Path, command: str) -> None:
    while True:
        message = _message(stream, path)
        if "error" in message:
            raise QmpError(f"{path}: {command}: {message['error']}")
        if "return" in message:
            return
        # Anything else is an event (such as POWERDOWN itself): not the reply.


def _message(stream: io.BufferedIOBase, path: Path) -> dict[str, Any]:
    line = stream.readline(_LINE_LIMIT)
    if not line.endswith(b"\n"):
        raise QmpError(f"{path}: the QMP connection ended or sent an overlong line")
    try:
        message = json.loads(line)
    except ValueError:
        raise QmpError(f"{path}: not a QMP message: {line[:60]!r}") from None
    if not isinstance(message, dict):
        raise QmpError(f"{path}: not a QMP message: {line[:60]!r}")
    return message
