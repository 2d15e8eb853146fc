"""The one SSH transport: paramiko with strict host keys, bounded time and capped output.

Host keys come only from a known_hosts file (`verifier.known_hosts`); an unknown, changed or
revoked key is a `TrustError` raised before any credential is sent. Commands are argument
lists joined with `shlex.join`, or a fixed script fed on stdin: host data is never pasted
into a shell string.

The peer is hostile. Every failure it can cause surfaces as a `HardhostError`: `Unreachable`
for a refused, closed or silent connection or channel, `TrustError` for a key, and
`HostOutputError` for output too large. Every phase (connect, key exchange, authentication,
channel open, exec request, stdin, output, exit status) ends by one deadline: a watchdog
closes the transport when it passes, which ends every wait paramiko may be in.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import getpass
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, cast

import paramiko
from paramiko.pkey import UnknownKeyType

from hardhost.core.errors import HardhostError, TrustError, Unreachable, UsageError
from hardhost.core.inputs import read_text
from hardhost.verifier import known_hosts as known_hosts_file
from hardhost.verifier.known_hosts import fingerprint
from hardhost.verifier.ssh_keys import Agent, load_identity

log = logging.getLogger(__name__)
# paramiko's transport thread logs each failed handshake's traceback at ERROR. Every such
# failure becomes one Unreachable line here, so a caller that never set up logging (an
# Ansible action plugin) must not get those tracebacks from Python's last-resort handler.
# Logging that an application configures still receives them (hardhost -v shows them).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

__all__ = ["DEFAULT_OUTPUT_LIMIT", "ExecResult", "HostOutputError", "Session", "Target",
           "check_options", "connect", "fingerprint", "offered_host_key", "open_client",
           "public_key_from_line", "read_ssh_config", "wait_for_host_key"]

DEFAULT_OUTPUT_LIMIT = 4 * 2**20  # bytes; host output beyond this is refused, not buffered
DEFAULT_IDENTITY = Path("~/.ssh/id_ed25519")

_TARGET = re.compile(r"^(?:(?P<user>[a-z_][a-z0-9_\-]*)@)?"
                     r"(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:@\[\]]+)(?::(?P<port>\d{1,5}))?$")


class HostOutputError(HardhostError):
    """The host answered with more output than allowed, or with output that does not parse."""

    exit_code = 1


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int = 22
    # Whether the user and port were written out: an ssh_config's User and Port apply only
    # where they were not, as in ssh(1).
    user_given: bool = field(default=True, compare=False, repr=False)
    port_given: bool = field(default=True, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str, *, default_user: str = "root") -> Target:
        match = _TARGET.match(text)
        if not match:
            raise UsageError(f"{text!r}: expected a target like user@host or user@host:port")
        port = int(match.group("port") or 22)
        if not 1 <= port <= 65535:
            raise UsageError(f"{text!r}: port {port} is out of range")
        return cls(match.group("user") or default_user, match.group("host").strip("[]"), port,
                   match.group("user") is not None, match.group("port") is not None)

    @property
    def known_hosts_name(self) -> str:
        host = self.host.lower()
        return host if self.port == 22 else f"[{host}]:{self.port}"

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
    except (ValueError, binascii.Error, paramiko.SSHException,
            UnknownKeyType) as exc:
        raise UsageError(f"{line[:40]!r} is not an OpenSSH public key line: {exc}") from None


class _Closable(Protocol):
    def close(self) -> None: ...


class _Watchdog:
    """Closes what it guards once `seconds` pass.

    paramiko waits without a bound in places: an exec request the host never answers, a send
    into a window it never opens, a write it never reads. Each such wait ends at once when
    its transport closes, so one timer bounds every phase, with no polling.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = threading.Event()
        self._guarded: list[_Closable] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._timer.cancel()

    def guard(self, thing: _Closable) -> None:
        with self._lock:
            if not self.expired.is_set():
                self._guarded.append(thing)
                return
        thing.close()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            things = list(self._guarded)
        for thing in things:
            with contextlib.suppress(Exception):
                thing.close()


def _reason(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0][:160] if text else type(exc).__name__


# paramiko re-raises in the caller's thread whatever its transport thread met while parsing
# the peer's bytes: not only SSHException, EOFError and OSError, but struct, index, value and
# cryptography errors too. At the boundary to a hostile peer each is the peer's fault.
_PEER_FAULTS = (Exception,)


_STREAM_CHUNK = 1 << 20


def _chunks(stdin: bytes | BinaryIO) -> Iterator[bytes]:
    if isinstance(stdin, bytes):
        if stdin:
            yield stdin
        return
    while chunk := stdin.read(_STREAM_CHUNK):
        yield chunk


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

    def run_script(self, script: str, *, timeout: float | None = None,
                   limit: int = DEFAULT_OUTPUT_LIMIT, args: Sequence[str] = ()) -> ExecResult:
        """Feed a fixed script to `/bin/sh -s` over one exec channel; `args` (each quoted)
        become its positional parameters."""
        command = shlex.join(["/bin/sh", "-s", "--", *args]) if args else "/bin/sh -s"
        return self._exec(command, script.encode(), timeout or self.timeout, limit)

    def stream(self, argv: Sequence[str], source: BinaryIO, *, timeout: float,
               limit: int = DEFAULT_OUTPUT_LIMIT,
               progress: Callable[[int], None] | None = None) -> ExecResult:
        """Run `argv` (each item quoted) with everything `source` holds as its stdin, sent
        as it is read, and return its status and capped output. `timeout` bounds the whole
        transfer; `progress` hears the bytes sent so far."""
        return self._exec(shlex.join(argv), source, timeout, limit, progress)

    def _exec(self, command: str, stdin: bytes | BinaryIO, timeout: float, limit: int,
              progress: Callable[[int], None] | None = None) -> ExecResult:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise Unreachable(f"{self.target}: the SSH connection was closed")
        # A command that outlives its deadline takes the connection with it: the host did
        # not keep to the protocol, and nothing more is asked of it.
        with _Watchdog(timeout) as watchdog:
            watchdog.guard(transport)
            try:
                result = self._talk(transport, command, stdin, watchdog, limit, progress)
            except HardhostError:
                raise
            except TimeoutError:
                raise self._too_slow(timeout) from None
            except _PEER_FAULTS as exc:
                if watchdog.expired.is_set():
                    raise self._too_slow(timeout) from None
                log.debug("%s: channel failed", self.target, exc_info=True)
                raise Unreachable(f"{self.target}: the host refused or closed the SSH channel "
                                  f"({_reason(exc)})") from None
            if watchdog.expired.is_set():
                raise self._too_slow(timeout)
            return result

    def _talk(self, transport: paramiko.Transport, command: str, stdin: bytes | BinaryIO,
              watchdog: _Watchdog, limit: int,
              progress: Callable[[int], None] | None = None) -> ExecResult:
        channel = transport.open_session(timeout=watchdog.remaining())
        with channel:
            channel.exec_command(command)  # waits for the host's reply; the watchdog bounds it
            total = 0
            for chunk in _chunks(stdin):
                view = memoryview(chunk)
                while view:
                    # A host that never opens its window would hold sendall() for ever.
                    channel.settimeout(max(0.001, watchdog.remaining()))
                    # paramiko slices and copies what it sends; a memoryview spares the
                    # copy of the rest of the chunk at each packet.
                    sent = channel.send(cast(bytes, view))
                    if sent <= 0:
                        raise Unreachable(f"{self.target}: the host closed the channel "
                                          "before reading its input")
                    view = view[sent:]
                total += len(chunk)
                if progress is not None:
                    progress(total)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            # Wait on the channel's pipe, which paramiko sets on output, stderr, EOF and
            # close: a fleet has dozens of channels open, and polling them costs CPU that
            # the hosts' key exchanges need. poll(), unlike select(), takes any fd number.
            poller = select.poll()
            poller.register(channel.fileno(), select.POLLIN)
            while channel.recv_ready() or channel.recv_stderr_ready() \
                    or not (channel.eof_received or channel.closed):
                remaining = watchdog.remaining()
                if remaining <= 0:
                    raise self._too_slow(watchdog.seconds)
                poller.poll(remaining * 1000)
                if channel.recv_ready():
                    out += channel.recv(65536)
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if len(out) + len(err) > limit:
                    raise HostOutputError(f"{self.target}: output exceeds {limit} bytes")
            # The end of output is EOF, not the exit status: sshd may send the status just
            # before or after it. A channel closed without one reports -1.
            if not channel.status_event.wait(watchdog.remaining()) \
                    or watchdog.expired.is_set():
                raise self._too_slow(watchdog.seconds)
            status = channel.recv_exit_status()
            if status == -1 and not transport.is_active():
                # Not an answer: the output may be cut anywhere. (A channel closed without a
                # status on a live connection, a command killed by a signal, is -1.)
                raise Unreachable(f"{self.target}: the SSH connection closed before the "
                                  "command finished")
            return ExecResult(status, bytes(out), bytes(err))

    def _too_slow(self, timeout: float) -> Unreachable:
        return Unreachable(f"{self.target}: command did not finish within {timeout:.0f}s")

    def close(self) -> None:
        self._client.close()


class _Client(paramiko.SSHClient):
    """An SSHClient around a transport opened by `open_client` (keys checked against our
    known_hosts, credentials offered in our order), and the jump hosts' transports under it."""

    def __init__(self, transport: paramiko.Transport, via: Sequence[paramiko.Transport]) -> None:
        super().__init__()
        # paramiko's SSHClient keeps its transport here, and get_transport() and close()
        # use it; testinfra's backend and Session only use those.
        self._transport = transport
        self._via = tuple(via)
        self.set_missing_host_key_policy(paramiko.RejectPolicy())

    def close(self) -> None:
        super().close()
        for transport in reversed(self._via):
            transport.close()


@dataclass(frozen=True)
class _Hop:
    """One connection of a route: a ProxyJump host, or the target itself."""

    target: Target
    identities: tuple[Path, ...]  # the ssh_config's IdentityFile entries for it


def check_options(*, known_hosts: Path, identity: Path | None, ssh_config: Path | None,
                  trust_on_first_use: bool = False) -> None:
    """Read the files a connection will need, once, before any host is contacted: a fleet
    says a typo in a path once, with exit 2, and asks for a key's passphrase before its
    threads start."""
    if not (trust_on_first_use and not os.path.lexists(known_hosts)):
        known_hosts_file.load(known_hosts)
    if identity is not None:
        load_identity(identity)
    if ssh_config is not None:
        read_ssh_config(ssh_config)


def read_ssh_config(path: Path) -> paramiko.SSHConfig:
    """The OpenSSH client config at `path`, parsed once per file version."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: ssh_config file not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the ssh_config file: {exc.strerror}") from None
    return _parse_ssh_config(str(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


_MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE)


@functools.lru_cache(maxsize=4)
def _parse_ssh_config(path: str, dev: int, ino: int, mtime_ns: int,
                      size: int) -> paramiko.SSHConfig:
    text = read_text(Path(path), what="ssh_config file")
    for number, line in enumerate(text.splitlines(), 1):
        if _MATCH_EXEC.match(line):
            # paramiko would run the command through a shell on every lookup.
            raise UsageError(f"{path}: line {number}: hardhost does not run 'Match exec' "
                             "commands. Fix with: --ssh-config FILE naming a config without "
                             "them, or --ssh-config none")
    try:
        return paramiko.SSHConfig.from_text(text)
    except (paramiko.SSHException, ValueError) as exc:
        raise UsageError(f"{path}: not a valid ssh_config: {_reason(exc)}") from None


def _route(target: Target, config_path: Path | None) -> list[_Hop]:
    """The hops to `target`: its ProxyJump hosts, then itself, each after the ssh_config."""
    if config_path is None:
        return [_Hop(target, ())]
    config = read_ssh_config(config_path)
    entry = config.lookup(target.host)
    if "proxycommand" in entry:
        raise UsageError(f"{config_path}: {target.host}: ProxyCommand is not supported. Fix "
                         "with: ProxyJump HOST")
    hops = []
    jumps = str(entry.get("proxyjump", "none"))
    if jumps.lower() != "none":
        for spec in jumps.split(","):
            jump = Target.parse(spec.strip().removeprefix("ssh://"),
                                default_user=getpass.getuser())
            jump_entry = config.lookup(jump.host)
            if "proxyjump" in jump_entry and jump_entry["proxyjump"].lower() != "none":
                log.debug("%s: the jump host's own ProxyJump is not followed", jump.host)
            hops.append(_apply(jump, jump_entry, config_path))
    return [*hops, _apply(target, entry, config_path)]


def _apply(target: Target, entry: paramiko.SSHConfigDict, config_path: Path) -> _Hop:
    port = target.port
    if not target.port_given and "port" in entry:
        try:
            port = int(entry["port"])
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise UsageError(f"{config_path}: {target.host}: Port {entry['port']!r} is not a "
                             "TCP port")
    user = target.user if target.user_given else str(entry.get("user", target.user))
    resolved = Target(user, str(entry.get("hostname", target.host)), port)
    raw: str | list[str] = entry.get("identityfile", [])
    files = [raw] if isinstance(raw, str) else raw
    return _Hop(resolved, tuple(Path(f).expanduser() for f in files))


def _keys(hop: _Hop, identity: Path | None, agent: Agent
          ) -> list[tuple[str, paramiko.PKey]]:
    """The keys offered to `hop`, each with the label a refusal names: the given identity
    (or the ssh_config's, or ~/.ssh/id_ed25519 if it exists), then the agent's."""
    keys: list[tuple[str, paramiko.PKey]] = []
    if identity is not None:
        keys.append((str(identity), load_identity(identity)))
    else:
        files = hop.identities or (DEFAULT_IDENTITY.expanduser(),)
        for path in files:
            if path.exists():
                keys.append((str(path), load_identity(path)))
            else:
                log.debug("%s: identity file %s not found; skipped", hop.target, path)
    offered = {key.asbytes() for _, key in keys}
    keys.extend((f"ssh-agent key {fingerprint(key)}", key) for key in agent.keys
                if key.asbytes() not in offered)
    if not keys:
        raise UsageError(f"{hop.target}: no key to log in with. Fix with: --identity KEY, or "
                         "ssh-add KEY with SSH_AUTH_SOCK set")
    return keys


def _prefer_known_key_types(transport: paramiko.Transport, known: set[str]) -> None:
    # Ask first for the host key types known_hosts holds, as ssh(1) does: a host with an
    # Ed25519 and an RSA key, recorded by its RSA key, must not look changed.
    def family(algorithm: str) -> str:
        return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm

    options = transport.get_security_options()
    types = list(options.key_types)
    options.key_types = [t for t in types if family(t) in known] + \
                        [t for t in types if family(t) not in known]


def open_client(target: Target, *, known_hosts: Path, identity: Path | None = None,
                timeout: float = 30.0, trust_on_first_use: bool = False,
                ssh_config: Path | None = None) -> paramiko.SSHClient:
    """A connected, authenticated paramiko client whose host key (and its jump hosts' keys)
    was checked strictly against `known_hosts` (recorded there first only with
    `trust_on_first_use`). Connecting, key exchange and authentication together end within
    `timeout` seconds."""
    if trust_on_first_use and not os.path.lexists(known_hosts):
        known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        known_hosts_file.load(known_hosts)  # a missing or malformed file is said first
    hops = _route(target, ssh_config)
    agent = Agent()
    try:
        offers = [_keys(hop, identity, agent) for hop in hops]
        opened: list[paramiko.Transport] = []
        try:
            with _Watchdog(timeout) as watchdog:
                sock: socket.socket | paramiko.Channel | None = None
                for index, hop in enumerate(hops):
                    transport = _handshake(hop, sock, watchdog, known_hosts,
                                           trust_on_first_use)
                    opened.append(transport)
                    _authenticate(transport, hop, offers[index], watchdog)
                    if index + 1 < len(hops):
                        sock = _forward(transport, hop, hops[index + 1], watchdog)
                if watchdog.expired.is_set():
                    raise Unreachable(f"{target}: SSH did not finish connecting within "
                                      f"{timeout:.0f}s")
        except BaseException:
            for transport in reversed(opened):
                transport.close()
            raise
    finally:
        agent.close()
    return _Client(opened[-1], opened[:-1])


def _handshake(hop: _Hop, sock: socket.socket | paramiko.Channel | None, watchdog: _Watchdog,
               known_hosts: Path, trust_on_first_use: bool) -> paramiko.Transport:
    """A transport to `hop` whose host key was checked; nothing sent but the key exchange."""
    who = str(hop.target)
    if sock is None:
        try:
            sock = socket.create_connection((hop.target.host, hop.target.port),
                                            timeout=max(0.001, watchdog.remaining()))
        except OSError as exc:
            raise Unreachable(f"{who}: cannot connect: {_reason(exc)}") from None
    watchdog.guard(sock)
    name = hop.target.known_hosts_name
    done = threading.Event()
    try:
        transport = paramiko.Transport(sock)
        watchdog.guard(transport)
        transport.banner_timeout = transport.handshake_timeout = watchdog.seconds
        transport.clear_to_send_timeout = watchdog.seconds
        _prefer_known_key_types(transport, known_hosts_file.load(known_hosts).key_types(name)
                                if os.path.lexists(known_hosts) else set())
        transport.start_client(event=done)
    except HardhostError:
        raise
    except _PEER_FAULTS as exc:
        sock.close()
        raise Unreachable(f"{who}: cannot connect: {_reason(exc)}") from None
    if not done.wait(watchdog.remaining()) or watchdog.expired.is_set():
        raise Unreachable(f"{who}: no SSH key exchange within {watchdog.seconds:.0f}s")
    if not transport.is_active():
        raise Unreachable(f"{who}: cannot connect: {_reason(transport.get_exception())}")
    key = transport.get_remote_server_key()
    if not os.path.lexists(known_hosts) or \
            not known_hosts_file.load(known_hosts).check(name, key, who):
        if not trust_on_first_use:
            raise TrustError(f"{who}: host key {key.get_name()} {fingerprint(key)} is not in "
                             f"{known_hosts}; refusing to connect")
        known_hosts_file.record(known_hosts, name, key, who)
    return transport


def _authenticate(transport: paramiko.Transport, hop: _Hop,
                  keys: Sequence[tuple[str, paramiko.PKey]], watchdog: _Watchdog) -> None:
    """Offer each key in turn. A refusal of all is a `TrustError`; a server that stalls or
    drops the connection meanwhile is `Unreachable`, not a refusal."""
    who = str(hop.target)
    for label, key in keys:
        done = threading.Event()
        try:
            transport.auth_publickey(hop.target.user, key, done)
        except _PEER_FAULTS as exc:
            raise Unreachable(f"{who}: the connection closed during authentication "
                              f"({_reason(exc)})") from None
        if not done.wait(watchdog.remaining()) or watchdog.expired.is_set():
            raise Unreachable(f"{who}: authentication did not finish within "
                              f"{watchdog.seconds:.0f}s")
        if transport.is_authenticated():
            return
        if not transport.is_active():
            raise Unreachable(f"{who}: the connection closed during authentication "
                              f"({_reason(transport.get_exception())})")
        log.debug("%s: the server refused %s", who, label)
    labels = [label for label, _ in keys]
    raise TrustError(f"{who}: the server refused the key{'s' if len(labels) > 1 else ''} "
                     f"{', '.join(labels)}")


def _forward(transport: paramiko.Transport, hop: _Hop, next_hop: _Hop,
             watchdog: _Watchdog) -> paramiko.Channel:
    """A channel through the jump host `hop` to the next hop's SSH port."""
    try:
        return transport.open_channel("direct-tcpip",
                                      (next_hop.target.host, next_hop.target.port),
                                      ("127.0.0.1", 0), timeout=watchdog.remaining())
    except _PEER_FAULTS as exc:
        if watchdog.expired.is_set():
            raise Unreachable(f"{hop.target}: the jump host did not open a connection to "
                              f"{next_hop.target} within {watchdog.seconds:.0f}s") from None
        raise Unreachable(f"{hop.target}: the jump host did not forward to "
                          f"{next_hop.target}: {_reason(exc)}") from None


@contextmanager
def connect(target: Target, *, known_hosts: Path, identity: Path | None = None,
            timeout: float = 30.0, trust_on_first_use: bool = False,
            ssh_config: Path | None = None) -> Iterator[Session]:
    """Open an authenticated session; host key checked strictly against `known_hosts`.

    Only with `trust_on_first_use` is an unknown host accepted, and its key recorded.
    """
    client = open_client(target, known_hosts=known_hosts, identity=identity, timeout=timeout,
                         trust_on_first_use=trust_on_first_use, ssh_config=ssh_config)
    session = Session(client, target, timeout)
    try:
        yield session
    finally:
        session.close()


def offered_host_key(host: str, port: int, timeout: float) -> paramiko.PKey:
    """Complete the key exchange only, and return the key the server proved it holds.
    Raises `Unreachable` for anything short of that within `timeout` seconds."""
    where = f"{host}:{port}"
    with _Watchdog(timeout) as watchdog:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unreachable(f"{where}: cannot connect: {_reason(exc)}") from None
        watchdog.guard(sock)
        transport: paramiko.Transport | None = None
        try:
            transport = paramiko.Transport(sock)
            watchdog.guard(transport)
            transport.banner_timeout = transport.handshake_timeout = timeout
            done = threading.Event()
            transport.start_client(event=done)
            if not done.wait(watchdog.remaining()) or watchdog.expired.is_set():
                raise Unreachable(f"{where}: no SSH key exchange within {timeout:.0f}s")
            if not transport.is_active():
                raise Unreachable(f"{where}: no SSH key exchange: "
                                  f"{_reason(transport.get_exception())}")
            return transport.get_remote_server_key()
        except HardhostError:
            raise
        except _PEER_FAULTS as exc:
            raise Unreachable(f"{where}: no SSH key exchange: {_reason(exc)}") from None
        finally:
            if transport is not None:
                transport.close()
            sock.close()


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
            key = offered_host_key(host, port, timeout=min(10.0, max(1.0, timeout - elapsed)))
        except Unreachable:
            # A booting host refuses, then accepts and stalls: ask again, a second apart.
            time.sleep(min(1.0, max(0.0, timeout - (time.monotonic() - start))))
            continue
        if key.asbytes() != expected.asbytes():
            raise TrustError(f"{host}:{port}: offered host key {fingerprint(key)}, expected "
                             f"{fingerprint(expected)}")
        return elapsed
