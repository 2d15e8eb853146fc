"""The strace parser, on lines in the exact form `strace -f -X raw -yy` prints."""

from __future__ import annotations

from pathlib import Path

from hardhost.profiles.record import parse_strace, split_args
from hardhost.profiles.trace import FileAccess, NetworkCall, SocketUse

# Lines in the exact form strace prints them, kept verbatim (and so over-long) in a file.
LOG = (Path(__file__).parent / "data" / "strace-sample.log").read_text()


def test_parses_every_kind_of_event() -> None:
    trace = parse_strace(LOG.splitlines())
    assert trace.executables == ("/opt/app/bin/server",)
    files = trace.file_modes()
    assert files["/srv/data/x.txt"] == "r"
    assert files["/etc/"] == "r"  # a directory, named with its slash
    assert files["/var/log/app.log"] == "a"  # O_WRONLY|O_CREAT|O_APPEND
    assert files["/usr/share/zoneinfo/UTC"] == "r"  # the resolved path, not the symlink
    assert files["/usr/lib/libc.so.6"] == "m"
    assert "/missing" not in files and "/usr/lib/locale.bin" not in files
    assert trace.sockets == (SocketUse("inet", "stream"), SocketUse("inet6", "dgram"))
    assert NetworkCall("bind", "inet", "stream", "127.0.0.1", 80) in trace.network
    assert NetworkCall("listen", "inet", "stream", "127.0.0.1", 80) in trace.network
    assert NetworkCall("connect", "inet6", "dgram", "::1", 53) in trace.network
    assert trace.clone_flags == (0x1200011,)
    assert trace.personality == (0xFFFFFFFF,)
    assert set(trace.capabilities) == {"net_bind_service", "chown"}
    assert {"read", "execve", "openat", "mmap", "chown"} <= set(trace.syscalls)


def test_split_args_keeps_quotes_and_structures_whole() -> None:
    assert split_args('3</a,b>, "x, \\"y\\"", {a=1, b=[2, 3]}, 0x1|0x2) = 0') == [
        "3</a,b>", '"x, \\"y\\""', "{a=1, b=[2, 3]}", "0x1|0x2"]


def test_files_are_merged_per_path() -> None:
    lines = ['1 openat(-100</>, "/f", 0) = 3</f>', '1 openat(-100</>, "/f", 0x1) = 3</f>']
    assert parse_strace(lines).files == (FileAccess("/f", "rw"),)
