"""SSH as fleets use it: ssh-agent, encrypted keys, ~/.ssh/config and ProxyJump, each against
real OpenSSH (sshd, ssh-agent, ssh-add, ssh-keygen) on loopback."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.cli.main import parser
from hardhost.core.errors import TrustError, UsageError
from hardhost.verifier import ssh_keys
from hardhost.verifier.transport import (
    Target,
    check_options,
    connect,
    public_key_from_line,
    wait_for_host_key,
)
from tests.support.keys import KeyPair, make_keypair
from tests.support.sshd import LoopbackHost, RunningSshd, sshd_binary, start_sshd

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def no_home_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.ssh/id_ed25519 of the machine's, and no agent unless a test starts one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv(ssh_keys.PASSPHRASE_ENV, raising=False)


def whoami(host: LoopbackHost, identity: Path | None, **kwargs: object) -> bytes:
    target = kwargs.pop("target", Target("root", "127.0.0.1", host.port))
    assert isinstance(target, Target)
    with connect(target, known_hosts=host.known_hosts, identity=identity, timeout=20,
                 **kwargs) as session:  # type: ignore[arg-type]
        return session.run(["id", "-un"]).stdout


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent on a socket of this test's, exported as SSH_AUTH_SOCK."""
    sock = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():  # ssh-agent -D creates the socket, then serves
        assert time.monotonic() < deadline and process.poll() is None, "ssh-agent did not start"
        time.sleep(0.05)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    try:
        yield sock
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_agent_keys_log_in_without_an_identity(loopback_sshd: LoopbackHost,
                                               client_key: KeyPair, agent: Path) -> None:
    with pytest.raises(UsageError, match="no key to log in with"):
        whoami(loopback_sshd, None)  # the agent is empty, and there is no key file
    subprocess.run(["ssh-add", "-q", str(client_key.private)], check=True,
                   env={**os.environ, "SSH_AUTH_SOCK": str(agent)}, capture_output=True)
    assert whoami(loopback_sshd, None) == b"root\n"


def test_agent_keys_are_tried_after_a_refused_identity(
        loopback_sshd: LoopbackHost, client_key: KeyPair, agent: Path, tmp_path: Path) -> None:
    stranger = make_keypair(tmp_path / "stranger", "id")
    with pytest.raises(TrustError, match=f"refused the key {stranger.private}$"):
        whoami(loopback_sshd, stranger.private)
    subprocess.run(["ssh-add", "-q", str(client_key.private)], check=True, capture_output=True)
    assert whoami(loopback_sshd, stranger.private) == b"root\n"


@pytest.fixture
def encrypted_key_host(tmp_path: Path) -> Iterator[tuple[LoopbackHost, Path]]:
    """An sshd that accepts only a passphrase-protected key made by ssh-keygen."""
    key = tmp_path / "keys" / "id_encrypted"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret phrase", "-f", str(key)],
                   check=True, capture_output=True)
    running = start_sshd(tmp_path / "sshd", KeyPair(key, key.with_suffix(".pub").read_text()))
    try:
        yield running.host, key
    finally:
        running.stop()


def test_an_encrypted_key_takes_its_passphrase_from_the_environment(
        encrypted_key_host: tuple[LoopbackHost, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host, key = encrypted_key_host
    # pytest's stdin is not a terminal: nobody can be asked.
    with pytest.raises(UsageError, match=f"encrypted.*Fix with: ssh-add {key}, or set "
                                         "HARDHOST_IDENTITY_PASSPHRASE"):
        whoami(host, key)
    monkeypatch.setenv(ssh_keys.PASSPHRASE_ENV, "wrong")
    with pytest.raises(UsageError, match="wrong passphrase") as caught:
        whoami(host, key)
    assert caught.value.exit_code == 2
    monkeypatch.setenv(ssh_keys.PASSPHRASE_ENV, "s3cret phrase")
    assert whoami(host, key) == b"root\n"


def test_identity_files_that_are_not_keys_are_refused_in_one_line(
        loopback_sshd: LoopbackHost, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = tmp_path / "text"
    text.write_text("not a key\n")
    for path, problem in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device"),
                          (tmp_path, "a directory"), (tmp_path / "missing", "not found"),
                          (text, "not a private key")):
        start = time.monotonic()
        with pytest.raises(UsageError, match=problem) as caught:
            whoami(loopback_sshd, path)
        assert "\n" not in str(caught.value)
        assert time.monotonic() - start < 5


def test_ssh_config_gives_hostname_port_user_and_identity(
        loopback_sshd: LoopbackHost, client_key: KeyPair, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host build-42\n  HostName 127.0.0.1\n  Port {loopback_sshd.port}\n"
                      f"  User root\n  IdentityFile {client_key.private}\n"
                      "Host *\n  User nobody\n")
    bare = Target.parse("build-42")
    assert whoami(loopback_sshd, None, target=bare, ssh_config=config) == b"root\n"
    # What the target says wins over the config, as with ssh(1).
    with pytest.raises(TrustError, match="refused"):
        whoami(loopback_sshd, None, target=Target.parse("daemon@build-42"), ssh_config=config)


def test_ssh_config_refuses_what_it_cannot_honour(loopback_sshd: LoopbackHost,
                                                   client_key: KeyPair, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  ProxyCommand nc %h %p\n")
    with pytest.raises(UsageError, match="ProxyCommand is not supported"):
        whoami(loopback_sshd, client_key.private, ssh_config=config)
    marker = tmp_path / "ran"
    config.write_text(f"Match exec \"touch {marker}\"\n  User nobody\n")
    with pytest.raises(UsageError, match="line 1: hardhost does not run 'Match exec'"):
        whoami(loopback_sshd, client_key.private, ssh_config=config)
    assert not marker.exists()


def test_connection_files_are_checked_before_any_host(tmp_path: Path,
                                                       client_key: KeyPair) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(UsageError, match="ssh_config file not found") as caught:
        check_options(known_hosts=known, identity=client_key.private,
                      ssh_config=tmp_path / "missing")
    assert caught.value.exit_code == 2
    args = parser().parse_args(["fleet", "inv", "--trust-key", "k", "--ssh-config", "none"])
    assert args.ssh_config is None and args.identity is None


def restart_logging(running: RunningSshd, directory: Path, log: Path) -> RunningSshd:
    """Run the sshd that start_sshd configured again, logging to `log` (sshd -E)."""
    running.stop()
    process = subprocess.Popen([sshd_binary(), "-D", "-E", str(log), "-f",
                                str(directory / "sshd_config")], stdin=subprocess.DEVNULL)
    wait_for_host_key("127.0.0.1", running.host.port,
                      public_key_from_line(running.host.host_key.public_line), timeout=30,
                      alive=lambda: process.poll() is None)
    return RunningSshd(running.host, process)


@pytest.fixture
def bastion(tmp_path: Path, client_key: KeyPair) -> Iterator[tuple[LoopbackHost, Path]]:
    directory = tmp_path / "bastion"
    log = tmp_path / "bastion.log"
    running = restart_logging(start_sshd(directory, client_key, extra_config=(
        "AllowTcpForwarding yes\nLogLevel DEBUG1\n")), directory, log)
    try:
        yield running.host, log
    finally:
        running.stop()


def test_proxy_jump_goes_through_the_bastion(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                             bastion: tuple[LoopbackHost, Path],
                                             tmp_path: Path) -> None:
    jump, log = bastion
    known = tmp_path / "known_hosts"
    target_line = loopback_sshd.known_hosts.read_text()
    config = tmp_path / "ssh_config"
    config.write_text(f"Host target\n  HostName 127.0.0.1\n  Port {loopback_sshd.port}\n"
                      f"  ProxyJump root@127.0.0.1:{jump.port}\n")
    known.write_text(target_line)
    # The bastion's key is checked against the same file, before anything is sent to it.
    with pytest.raises(TrustError, match=f"127.0.0.1:{jump.port}: host key .* is not in"), \
            connect(Target.parse("root@target"), known_hosts=known,
                    identity=client_key.private, timeout=20, ssh_config=config):
        pass
    known.write_text(target_line + jump.known_hosts.read_text())
    with connect(Target.parse("root@target"), known_hosts=known, identity=client_key.private,
                 timeout=20, ssh_config=config) as session:
        assert session.run(["id", "-un"]).stdout == b"root\n"
    # sshd: "server_request_direct_tcpip: originator 127.0.0.1 port 0, target 127.0.0.1 port N"
    assert f"direct_tcpip: originator 127.0.0.1 port 0, target 127.0.0.1 port " \
           f"{loopback_sshd.port}\n" in log.read_text()
