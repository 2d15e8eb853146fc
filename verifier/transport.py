"""The one SSH transport: paramiko with strict host keys, bounded time and capped output.

Host keys come only from a known_hosts file; an unknown or changed key is a `TrustError`
raised before any credential is sent. Commands are argument lists joined with `shlex.join`,
or a fixed script fed on stdin: host data is never pasted into a shell string.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import select
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from builder.errors import HardhostError, TrustError, Unreachable, UsageError

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_LIMIT = 4 * 2**20  # bytes; host output beyond this is refused, not buffered

_TARGET = re.compile(r"^(?P<user>[a-z_][a-z0-9_\-]*)@(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:@\[\]]+)"
                     r"(?::(?P<port>\d{1,5}))?$")


class HostOutputError(HardhostError):
    """The host answered with more output than allowed, or with output that does not parse."""

    exit_code = 1


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> Target:
        match = _TARGET.match(text)
        if not match:
            raise UsageError(f"{text!r}: expected a target like user@host or user@host:port")
        port = int(match.group("port") or 22)
        if not 1 <= port <= 65535:
            raise UsageError(f"{text!r}: port {port} is out of range")
        return cls(match.group("user"), match.group("host").strip("[]"), port)

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


@dataclass(frozen=True)
class ExecResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


def public_key_from_line(line: str) -> paramiko.PKey:
    """Parse an OpenSSH public key line (`TYPE BASE64 [comment]`)."""
    parts = line.split()
    if len(parts) < 2:
        raise UsageError(f"{line[:40]!r} is not an OpenSSH public key line")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1],
                                                                          validate=True))
    except (ValueError, paramiko.SSHException) as exc:
        raise UsageError(f"{line[:40]!r} is not an OpenSSH public key line: {exc}") from None


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, naming the key that was offered."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise TrustError(f"{hostname}: host key {key.get_name()} {fingerprint(key)} is not in "
                         f"{self.known_hosts}; refusing to connect")


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Asked for explicitly: accept an unknown host's key and record it in known_hosts. A
    changed key is still refused (paramiko raises BadHostKeyException before this runs)."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        log.warning("%s: trusting host key %s %s on first use; recorded in %s", hostname,
                    key.get_name(), fingerprint(key), self.known_hosts)
        with self.known_hosts.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class Session:
    """A connected, authenticated SSH session."""

    def __init__(self, client: paramiko.SSHClient, target: Target, timeout: float) -> None:
        self._client = client
        self.target = target
        self.timeout = timeout

    def run(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float | None = None,
            limit: int = DEFAULT_OUTPUT_LIMIT) -> ExecResult:
        """Run `argv` (each item quoted) and return its status and capped output."""
        return self._exec(shlex.join(argv), stdin, timeout or self.timeout, limit)

    def _exec(self, command: str, stdin: bytes, timeout: float, limit: int) -> ExecResult:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise Unreachable(f"{self.target}: the SSH connection was closed")
        deadline = time.monotonic() + timeout
        try:
            channel = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise Unreachable(f"{self.target}: cannot open a channel: {exc}") from None
        with channel:
            channel.settimeout(1.0)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            # Wait on the channel's pipe, which paramiko sets on output, stderr, EOF and
            # close: a fleet has dozens of channels open, and polling them costs CPU that
            # the hosts' key exchanges need.
            while channel.recv_ready() or channel.recv_stderr_ready() \
                    or not (channel.eof_received or channel.closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._too_slow(timeout)
                select.select([channel], [], [], remaining)
                if channel.recv_ready():
                    out += channel.recv(65536)
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if len(out) + len(err) > limit:
                    raise HostOutputError(f"{self.target}: output exceeds {limit} bytes")
            # The end of output is EOF, not the exit status: sshd may send the status just
            # before or after it.
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise self._too_slow(timeout)
            return ExecResult(channel.recv_exit_status(), bytes(out), bytes(err))

    def _too_slow(self, timeout: float) -> Unreachable:
        return Unreachable(f"{self.target}: command did not finish within {timeout:.0f}s")

    def run_script(self, script: str, *, timeout: float | None = None,
                   limit: int = DEFAULT_OUTPUT_LIMIT, args: Sequence[str] = ()) -> ExecResult:
        """Feed a fixed script to `/bin/sh -s` over one exec channel; `args` (each quoted)
        become its positional parameters."""
        command = shlex.join(["/bin/sh", "-s", "--", *args]) if args else "/bin/sh -s"
        return self._exec(command, script.encode(), timeout or self.timeout, limit)

    def close(self) -> None:
        self._client.close()


def _load_identity(identity: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(identity)
    except FileNotFoundError:
        raise UsageError(f"{identity}: identity file not found") from None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise UsageError(f"{identity}: cannot load the private key: {exc}") from None


def open_client(target: Target, *, known_hosts: Path, identity: Path, timeout: float = 30.0,
                trust_on_first_use: bool = False) -> paramiko.SSHClient:
    """A connected, authenticated paramiko client whose host key was checked strictly
    against `known_hosts` (recorded there first only with `trust_on_first_use`)."""
    if trust_on_first_use and not known_hosts.exists():
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        known_hosts.touch(mode=0o644)
    if not known_hosts.is_file():
        raise UsageError(f"{known_hosts}: known_hosts file not found")
    pkey = _load_identity(identity)
    client = paramiko.SSHClient()
    known = client.get_host_keys()
    entries = _known_hosts(known_hosts).lookup(target.known_hosts_name)
    for key_type, key in (entries or {}).items():
        known.add(target.known_hosts_name, key_type, key)
    client.set_missing_host_key_policy(_TrustOnFirstUse(known_hosts) if trust_on_first_use
                                       else _RejectUnknown(known_hosts))
    try:
        client.connect(target.host, port=target.port, username=target.user, pkey=pkey,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       channel_timeout=timeout, allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise TrustError(f"{target}: host key changed: offered {fingerprint(exc.key)}, "
                         f"{known_hosts} has {fingerprint(exc.expected_key)}") from None
    except paramiko.AuthenticationException:
        client.close()
        raise TrustError(f"{target}: the server refused the key {identity}") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        client.close()
        reason = str(exc) or type(exc).__name__
        raise Unreachable(f"{target}: cannot connect: {reason}") from None
    except BaseException:
        client.close()
        raise
    return client


def _known_hosts(path: Path) -> paramiko.HostKeys:
    """The parsed known_hosts file. A fleet run connects to every host in one large file:
    parsing it once per file version, not once per connection, keeps the cost linear."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    return _parse_known_hosts(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _parse_known_hosts(path: str, mtime_ns: int, size: int) -> paramiko.HostKeys:
    try:
        return paramiko.HostKeys(path)
    except (OSError, paramiko.SSHException) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None


@contextmanager
def connect(target: Target, *, known_hosts: Path, identity: Path, timeout: float = 30.0,
            trust_on_first_use: bool = False) -> Iterator[Session]:
    """Open an authenticated session; host key checked strictly against `known_hosts`.

    Only with `trust_on_first_use` is an unknown host accepted, and its key recorded.
    """
    client = open_client(target, known_hosts=known_hosts, identity=identity, timeout=timeout,
                         trust_on_first_use=trust_on_first_use)
    session = Session(client, target, timeout)
    try:
        yield session
    finally:
        session.close()


def offered_host_key(host: str, port: int, timeout: float) -> paramiko.PKey:
    """Complete the key exchange only, and return the key the server proved it holds."""
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def wait_for_host_key(host: str, port: int, expected: paramiko.PKey, *, timeout: float,
                      alive: Callable[[], bool] = lambda: True) -> float:
    """Wait until sshd on host:port completes a key exchange with `expected`.

    Returns the seconds waited. Raises `TrustError` for a different key, and `Unreachable`
    when `timeout` passes or `alive()` turns false.
    """
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise Unreachable(f"{host}:{port}: SSH did not answer within {timeout:.0f}s")
        if not alive():
            raise Unreachable(f"{host}:{port}: the host stopped before SSH answered")
        try:
            key = offered_host_key(host, port, timeout=min(10.0, timeout))
        except (OSError, paramiko.SSHException, EOFError):
            time.sleep(1.0)
            continue
        if key.asbytes() != expected.asbytes():
            raise TrustError(f"{host}:{port}: offered host key {fingerprint(key)}, expected "
                             f"{fingerprint(expected)}")
        return elapsed
