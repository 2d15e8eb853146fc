"""The one way hardhost starts a process.

Argument lists only (never a shell string), a clean environment, stdin from /dev/null, the exit
status checked by default, and a failure turned into a one-line `CommandFailed`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from hardhost.core.errors import CommandFailed, ToolMissing

log = logging.getLogger(__name__)

# Tools hardhost runs, and the Debian package that provides each: a missing tool is reported
# with the package to install, never as a bare FileNotFoundError.
TOOL_PACKAGES: Mapping[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
    "mksquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
    "qemu-system-x86_64": "qemu-system-x86",
    "mkfs.ext4": "e2fsprogs",
    "systemctl": "systemd",
    "chroot": "coreutils",
    "unshare": "util-linux",
    "tar": "tar",
    "apparmor_parser": "apparmor",
    "secilc": "secilc",
    "runc": "runc",
    "strace": "strace",
    "modinfo": "kmod",
    "objcopy": "binutils",
    "mkfs.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "sbsign": "sbsigntool",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "swtpm_localca": "swtpm-tools",
    "sfdisk": "fdisk",
    "qemu-img": "qemu-utils",
    "skopeo": "skopeo",
}

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_KEEP = 200  # lines of a streamed command's stderr kept for its error message

Arg = str | Path


def which(tool: str) -> str:
    """Return the absolute path of `tool`, or raise `ToolMissing` naming its apt package."""
    found = shutil.which(tool, path=CLEAN_PATH)
    if found is None:
        raise ToolMissing(tool, TOOL_PACKAGES.get(tool, tool))
    return found


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal, predictable environment: the caller's locale and settings do not leak in."""
    env = {"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    for passthrough in ("http_proxy", "https_proxy", "no_proxy", "TMPDIR"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    if extra:
        env.update(extra)
    return env


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM first: mmdebstrap, for one, unmounts its chroot's /proc and /sys on SIGTERM,
    and a SIGKILL would leave them mounted. The whole process group gets the signals: a
    tool's own children (apt, dpkg, a chroot's shell) must not outlive an interrupted build."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has already gone
        os.killpg(proc.pid, sig)


def run(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
    check: bool = True,
    timeout: float | None = None,
    stream: bool = False,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` and return the completed process.

    stdin is `input` when given (a script for sfdisk, say), and otherwise empty.

    `capture` returns stdout; otherwise it is discarded. stderr is always captured so a failure
    can name its reason; with `stream`, each stderr line is also logged as it arrives, which is
    how long stages show their progress.
    """
    args = [str(a) for a in argv]
    if "/" not in args[0]:
        args[0] = which(args[0])
    log.debug("run: %s", args)
    proc = subprocess.Popen(
        args,
        env=clean_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so _stop reaches its children
    )
    stderr_lines: collections.deque[bytes] = collections.deque(maxlen=_STDERR_KEEP)
    stdout_chunks: list[bytes] = []

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line)
            if stream:
                log.info("    %s", line.decode(errors="replace").rstrip())

    def drain_stdout() -> None:
        if proc.stdout is not None:
            stdout_chunks.append(proc.stdout.read())

    def feed_stdin() -> None:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError), proc.stdin:
                proc.stdin.write(input or b"")

    readers = [threading.Thread(target=f, daemon=True)
               for f in (drain_stderr, drain_stdout, feed_stdin)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise CommandFailed(args, -1, f"timed out after {timeout:.0f}s") from None
    except BaseException:
        _stop(proc)
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
    stdout = b"".join(stdout_chunks)
    stderr = b"".join(stderr_lines)
    if check and proc.returncode != 0:
        text = stderr.decode(errors="replace")
        detail = _tail(text) or _tail(stdout.decode(errors="replace"))
        raise CommandFailed(args, proc.returncode, detail, text)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def output(argv: Sequence[Arg], *, env: Mapping[str, str] | None = None,
           timeout: float | None = None) -> str:
    """Run `argv` and return its standard output as text."""
    return run(argv, env=env, capture=True, timeout=timeout).stdout.decode()


def process_cmdline(pid: int) -> bytes:
    """The command line of process `pid`; empty once it has ended (a zombie's is empty)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
