"""`hardhost profile`: record, merge, generate and check, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO


def hardhost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_record_generate_check_and_merge(tmp_path: Path) -> None:
    ls_trace, cat_trace = tmp_path / "ls.json", tmp_path / "cat.json"
    assert hardhost("profile", "record", "--out", str(ls_trace), "--", "/usr/bin/ls",
                    "/etc").returncode == 0
    assert hardhost("profile", "record", "--out", str(cat_trace), "--", "/usr/bin/cat",
                    "/etc/hostname").returncode == 0
    recorded = json.loads(cat_trace.read_text())
    assert "/usr/bin/cat" in recorded["executables"]
    assert {"path": "/etc/hostname", "mode": "r"} in recorded["files"]

    profiles = tmp_path / "profiles"
    generated = hardhost("profile", "generate", str(ls_trace), "--name", "ls", "--out-dir",
                         str(profiles))
    assert generated.returncode == 0, generated.stderr
    assert (profiles / "ls.seccomp.json").exists()
    assert "(type ls_t)" in (profiles / "ls.cil").read_text()
    assert "profile ls " in (profiles / "ls.apparmor").read_text()
    good = hardhost("profile", "check", str(profiles), "--trace", str(ls_trace))
    assert good.returncode == 0, good.stdout + good.stderr

    # A network workload's trace is not allowed by the profile made from ls.
    net_trace = tmp_path / "net.json"
    assert hardhost("profile", "record", "--out", str(net_trace), "--", "/usr/bin/python3",
                    "-c", "import socket; socket.socket(socket.AF_INET6)").returncode == 0
    denied = hardhost("profile", "check", str(profiles), "--trace", str(net_trace))
    assert denied.returncode == 1
    assert "ls.seccomp.json: seccomp would deny " in denied.stdout
    assert "ls.apparmor: AppArmor would deny " in denied.stdout

    merged = tmp_path / "merged.json"
    assert hardhost("profile", "merge", str(ls_trace), str(cat_trace), "-o",
                    str(merged)).returncode == 0
    union = json.loads(merged.read_text())
    assert {"/usr/bin/ls", "/usr/bin/cat"} <= set(union["executables"])


def test_bad_profile_name_and_bad_trace_are_refused(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    trace.write_text('{"version": 1, "syscalls": ["read"]}')
    named = hardhost("profile", "generate", str(trace), "--name", "my profile/x", "--out-dir",
                     str(tmp_path / "out"))
    assert named.returncode == 2
    assert "no spaces or slashes" in named.stderr
    trace.write_text('{"version": 1, "syscalls": ["re')
    truncated = hardhost("profile", "generate", str(trace), "--name", "x", "--out-dir",
                         str(tmp_path / "out"))
    assert truncated.returncode == 2
    assert truncated.stderr.startswith(f"hardhost: {trace}: not valid JSON")
    trace.write_text('{"version": 1, "syscalls": ["read", "frobnicate"]}')
    unknown = hardhost("profile", "generate", str(trace), "--name", "x", "--out-dir",
                       str(tmp_path / "out"))
    assert unknown.returncode == 2
    assert "unknown syscall name 'frobnicate'" in unknown.stderr
