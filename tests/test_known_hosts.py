"""known_hosts as OpenSSH writes it, each case against a real sshd on loopback."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.core.errors import HardhostError, TrustError, UsageError
from hardhost.verifier import known_hosts
from hardhost.verifier.transport import Target, connect
from tests.support.keys import KeyPair, make_keypair
from tests.support.sshd import LoopbackHost, start_sshd

pytestmark = pytest.mark.e2e


def name(host: LoopbackHost) -> str:
    return f"[127.0.0.1]:{host.port}"


def attempt(host: LoopbackHost, client_key: KeyPair, known: Path, *,
            tofu: bool = False) -> bytes:
    with connect(Target("root", "127.0.0.1", host.port), known_hosts=known,
                 identity=client_key.private, timeout=20, trust_on_first_use=tofu) as session:
        return session.run(["echo", "in"]).stdout


def test_a_file_as_openssh_writes_it_is_read(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                             tmp_path: Path) -> None:
    """Comments, blank lines, markers for other keys, a key type paramiko does not know,
    and the host's line hashed by ssh-keygen -H itself."""
    other = make_keypair(tmp_path / "other", "key")
    known = tmp_path / "known_hosts"
    known.write_text(
        "# managed by hand\n\n"
        f"@cert-authority *.example.com {other.public_line}\n"
        "sk.example.com sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAA"
        "IDzfLOBlNWcZhXS6ez0XPmULtkoVcx5ZuxFwt8W9TAtEAAAABHNzaDo= user\n"
        f"{name(loopback_sshd)} {loopback_sshd.host_key.public_line}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True,
                   capture_output=True)
    assert name(loopback_sshd) not in known.read_text()  # really hashed
    assert "|1|" in known.read_text()
    assert attempt(loopback_sshd, client_key, known) == b"in\n"


def test_wildcards_and_negation(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.?]:{loopback_sshd.port} {loopback_sshd.host_key.public_line}\n")
    assert attempt(loopback_sshd, client_key, known) == b"in\n"
    # A negated pattern takes the line away from that host: its key is then unknown.
    known.write_text(f"[127.0.0.*]:{loopback_sshd.port},!{name(loopback_sshd)} "
                     f"{loopback_sshd.host_key.public_line}\n")
    with pytest.raises(TrustError, match="is not in"):
        attempt(loopback_sshd, client_key, known)


def test_a_revoked_key_is_refused_though_another_line_lists_it(
        loopback_sshd: LoopbackHost, client_key: KeyPair, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"{name(loopback_sshd)} {loopback_sshd.host_key.public_line}\n"
                     f"@revoked * {loopback_sshd.host_key.public_line}\n")
    with pytest.raises(TrustError, match="@revoked"):
        attempt(loopback_sshd, client_key, known)


def test_a_cert_authority_line_grants_no_trust(loopback_sshd: LoopbackHost,
                                               client_key: KeyPair, tmp_path: Path) -> None:
    """paramiko's HostKeys reads '@cert-authority NAME KEY' as a plain line for host
    '@cert-authority'; here it must not make the host's own key trusted."""
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority {name(loopback_sshd)} "
                     f"{loopback_sshd.host_key.public_line}\n")
    with pytest.raises(TrustError, match="is not in"):
        attempt(loopback_sshd, client_key, known)


@pytest.mark.parametrize(("line", "problem"), [
    ("@trusted * ssh-ed25519 AAAA", "unknown marker"),
    ("onlyhost ssh-ed25519", "expected HOSTS KEYTYPE BASE64"),
    ("host ssh-ed25519 not*base64", "not base64"),
    ("host ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQABAAABAQ==", "does not parse"),
    ("|1|abc ssh-ed25519 AAAA", "hashed name"),
    ("|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAA", "not 20 bytes"),
    ("a,,b ssh-ed25519 AAAA", "empty host name"),
])
def test_a_malformed_line_is_one_usage_error_naming_file_and_line(
        loopback_sshd: LoopbackHost, client_key: KeyPair, tmp_path: Path, line: str,
        problem: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"# ok\n{name(loopback_sshd)} {loopback_sshd.host_key.public_line}\n"
                     f"{line}\n")
    with pytest.raises(UsageError) as caught:
        attempt(loopback_sshd, client_key, known)
    message = str(caught.value)
    assert message.startswith(f"{known}: line 3: ") and problem in message
    assert "\n" not in message


def test_undecodable_fifo_and_directory_files_are_usage_errors(
        loopback_sshd: LoopbackHost, client_key: KeyPair, tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(f"{name(loopback_sshd)} ".encode() + b"\xff\xfe\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would hang
    for path, problem in ((binary, "not UTF-8"), (fifo, "a FIFO"), (tmp_path, "a directory"),
                          (tmp_path / "missing", "not found")):
        with pytest.raises(UsageError, match=problem):
            attempt(loopback_sshd, client_key, path)


def test_the_file_is_parsed_once_per_version(loopback_sshd: LoopbackHost, client_key: KeyPair,
                                             tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"{name(loopback_sshd)} {loopback_sshd.host_key.public_line}\n")
    attempt(loopback_sshd, client_key, known)
    misses = known_hosts._parse_version.cache_info().misses
    for _ in range(3):
        attempt(loopback_sshd, client_key, known)
    assert known_hosts._parse_version.cache_info().misses == misses
    with known.open("a") as f:
        f.write(f"@revoked * {loopback_sshd.host_key.public_line}\n")
    with pytest.raises(TrustError):  # a new version is read again at once
        attempt(loopback_sshd, client_key, known)


@pytest.fixture
def busy_sshd(tmp_path: Path, client_key: KeyPair) -> Iterator[LoopbackHost]:
    """A loopback sshd that takes ten logins at once: by default (MaxStartups 10:30:100)
    sshd starts dropping connections at random from the tenth unauthenticated one."""
    running = start_sshd(tmp_path / "sshd", client_key, extra_config="MaxStartups 64\n")
    try:
        yield running.host
    finally:
        running.stop()


def test_trust_on_first_use_records_one_line_for_concurrent_hosts(
        busy_sshd: LoopbackHost, client_key: KeyPair, tmp_path: Path) -> None:
    """Ten inventory hosts behind one address:port, attested at once, on a file that does
    not exist yet: one line, exactly as ssh(1) writes it, and found by ssh-keygen -F."""
    loopback_sshd = busy_sshd
    known = tmp_path / "new" / "known_hosts"
    errors: list[BaseException] = []

    def one() -> None:
        try:
            attempt(loopback_sshd, client_key, known, tofu=True)
        except HardhostError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    key_type, key_b64 = loopback_sshd.host_key.public_line.split()[:2]
    assert known.read_text() == f"{name(loopback_sshd)} {key_type} {key_b64}\n"
    found = subprocess.run(["ssh-keygen", "-F", name(loopback_sshd), "-f", str(known)],
                           capture_output=True, text=True, check=True)
    assert key_b64 in found.stdout


def test_trust_on_first_use_keeps_refusing_a_changed_or_revoked_key(
        loopback_sshd: LoopbackHost, client_key: KeyPair, tmp_path: Path) -> None:
    other = make_keypair(tmp_path / "other", "key")
    known = tmp_path / "known_hosts"
    known.write_text(f"{name(loopback_sshd)} {other.public_line}")  # no final newline
    with pytest.raises(TrustError, match="host key changed"):
        attempt(loopback_sshd, client_key, known, tofu=True)
    known.write_text(f"@revoked * {loopback_sshd.host_key.public_line}\n")
    with pytest.raises(TrustError, match="@revoked"):
        attempt(loopback_sshd, client_key, known, tofu=True)
    known.write_text("# no final newline")
    attempt(loopback_sshd, client_key, known, tofu=True)
    assert known.read_text().splitlines()[1].startswith(name(loopback_sshd) + " ssh-ed25519 ")
