"""Traces and profiles from files that may be hostile: bounded, typed, never hanging, and
`profile generate` all or nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hardhost.core.errors import UsageError
from hardhost.profiles import apparmor_check, apparmor_read, apparmor_regex, generate
from hardhost.profiles.aaglob import MAX_ALTERNATIVES, compile_glob
from hardhost.profiles.trace import MAX_ENTRIES, TraceError, from_json, load, normalise
from tests.support.paths import REPO

GOOD = {"version": 1, "syscalls": ["read", "write", "exit_group"],
        "files": [{"path": "/etc/hostname", "mode": "r"}],
        "sockets": [{"family": "inet", "sock_type": "stream"}],
        "network": [{"call": "connect", "family": "inet", "sock_type": "stream",
                     "address": "127.0.0.1", "port": 80}]}


def hardhost(*args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def one_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("hardhost: ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert text in result.stderr, result.stderr


# --- Traces --------------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "reason"), [
    ({"syscalls": ["read"] * (MAX_ENTRIES + 1)}, f"syscalls: more than {MAX_ENTRIES}"),
    ({"files": [{"path": f"/f{i}", "mode": "r"} for i in range(MAX_ENTRIES + 1)]},
     f"files: more than {MAX_ENTRIES}"),
    ({"sockets": [{"family": "inet", "sock_type": {"x": 1}}]}, "sock_type dict is not valid"),
    ({"sockets": [{"family": "inet", "sock_type": "stream", "extra": 1}]},
     "unknown field 'extra'"),
    ({"network": [{"call": "connect", "family": "inet", "port": True}]}, "bad port"),
    ({"network": [{"call": "connect", "family": "inet", "address": ["x"]}]},
     "address list is not valid"),
    ({"files": [{"path": "/x" * 3000, "mode": "r"}]}, "path"),
    ({"files": [{"path": 5, "mode": "r"}]}, "path int is not valid"),
    ({"clone_flags": [2**64]}, "integers in 0..2**64-1"),
    ({"clone_flags": [True]}, "integers in 0..2**64-1"),
    ({"capabilities": "net_raw"}, "capabilities: expected a list"),
    ({"version": True}, "version: expected 1"),
])
def test_malformed_traces_are_one_error(edit: dict[str, Any], reason: str) -> None:
    with pytest.raises(TraceError, match=re.escape(reason)):
        from_json(json.dumps(GOOD | edit), "t.json")


def test_a_good_trace_still_parses() -> None:
    trace = from_json(json.dumps(GOOD), "t.json")
    assert trace.network[0].port == 80 and trace.sockets[0].sock_type == "stream"
    assert from_json(trace.to_json(), "again") == trace


def test_hostile_json_in_a_trace() -> None:
    with pytest.raises(TraceError, match="nested too deeply"):
        from_json('{"syscalls": ' + "[" * 100_000 + "]" * 100_000 + "}", "t.json")
    with pytest.raises(TraceError, match="'syscalls' appears twice"):
        from_json('{"version": 1, "syscalls": ["read"], "syscalls": ["ptrace"]}', "t.json")
    with pytest.raises(TraceError, match="NaN is not a JSON number"):
        from_json('{"version": 1, "clone_flags": [NaN]}', "t.json")


def test_a_trace_that_is_not_a_file(tmp_path: Path) -> None:
    fifo = tmp_path / "trace.json"
    os.mkfifo(fifo)
    with pytest.raises(TraceError, match="is a FIFO"):
        load(fifo)
    with pytest.raises(TraceError, match="is a device"):
        load(Path("/dev/zero"))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "x.seccomp.json").write_text('{"defaultAction": "SCMP_ACT_ERRNO"}')
    for trace in (fifo, Path("/dev/zero"), tmp_path):
        one_line(hardhost("profile", "check", str(profiles), "--trace", str(trace)), 2,
                 "not a regular file")


# --- Profiles read back by `profile check` -------------------------------------------------


@pytest.mark.parametrize(("profile", "reason"), [
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read",
                                                       "action": "SCMP_ACT_ALLOW"}]},
     r"syscalls\[0\]\.names: expected a list of strings"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["clone"],
      "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": "1", "op": "SCMP_CMP_EQ"}]}]},
     r"syscalls\[0\]\.args\[0\]"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["clone"],
      "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]},
     r"syscalls\[0\]\.args\[0\]"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {"names": ["read"]}},
     "syscalls: expected a list of rules"),
    ({"defaultAction": ["SCMP_ACT_ERRNO"]}, "no defaultAction"),
])
def test_a_malformed_seccomp_profile_is_one_line(tmp_path: Path, profile: dict[str, Any],
                                                  reason: str) -> None:
    (tmp_path / "x.seccomp.json").write_text(json.dumps(profile))
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"version": 1, "syscalls": ["read", "clone"],
                                 "clone_flags": [17]}))
    result = hardhost("profile", "check", str(tmp_path), "--trace", str(trace))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert re.search(reason, result.stderr), result.stderr


def test_profiles_that_are_not_files_are_refused(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(GOOD))
    profiles = tmp_path / "p"
    profiles.mkdir()
    os.mkfifo(profiles / "x.seccomp.json")
    one_line(hardhost("profile", "check", str(profiles), "--trace", str(trace)), 2,
             "seccomp profile is a FIFO")
    (profiles / "x.seccomp.json").unlink()
    (profiles / "x.seccomp.json").write_text('[' * 100_000 + ']' * 100_000)
    one_line(hardhost("profile", "check", str(profiles), "--trace", str(trace)), 2,
             "nested too deeply")
    (profiles / "x.seccomp.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    (profiles / "x.apparmor").symlink_to("/dev/zero")
    one_line(hardhost("profile", "check", str(profiles), "--trace", str(trace)), 2,
             "AppArmor profile is a device")


def test_a_backtracking_apparmor_pattern_is_checked_in_linear_time() -> None:
    # As a Python regex, this pattern takes minutes against a path of 300 'a's.
    text = ("profile p {\n  /**a**a**a**a**a**a**a**b r,\n  /** r,\n"
            "  deny /**a**a**a**a**a**a**a**c w,\n}\n")
    profile = apparmor_read.parse(text, "p")
    path = "/" + "a" * 3000
    started = time.monotonic()
    assert apparmor_check.file_verdict(profile, path, "r") is None
    assert apparmor_check.file_verdict(profile, path, "w") == "no rule allows it"
    assert apparmor_check.file_verdict(profile, path + "c", "w") is not None
    assert time.monotonic() - started < 5


PATTERNS = ["/etc/*", "/etc/**", "/etc/*/x", "/**/x", "/a/{b,c}/d", "/a/{b,c{d,e}}/f",
            "/x?y", "/[abc]z", "/[^a]z", "/[a-c]z", "/a\\*b", "/usr/lib{,32,64}/**",
            "/dev/pts/*", "/proc/*/status", "/**.so*", "/{usr/,}bin/*"]
PATHS = ["/etc", "/etc/", "/etc/passwd", "/etc/a/x", "/etc/a/b/x", "/x", "/a/b/d", "/a/c/d",
         "/a/ce/f", "/a/cd/f", "/xzy", "/x/y", "/az", "/bz", "/dz", "/a*b", "/aab",
         "/usr/lib/x", "/usr/lib64/a/b", "/usr/lib6/x", "/dev/pts/", "/dev/pts/0",
         "/proc/1/status", "/proc//status", "/lib/libc.so.6", "/bin/sh", "/usr/bin/sh",
         "/usr/bin/"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_linear_matcher_agrees_with_the_regex(pattern: str) -> None:
    regex = apparmor_regex.glob_regex(pattern)
    glob = compile_glob(pattern)
    for path in PATHS:
        assert glob.fullmatch(path) == (regex.fullmatch(path) is not None), (pattern, path)


def test_brace_and_variable_blowups_are_refused() -> None:
    with pytest.raises(UsageError, match=f"more than {MAX_ALTERNATIVES}"):
        compile_glob("/" + "{a,b}" * 9)
    # Each variable refers to the one before twice: 2**14 copies if expanded.
    lines = ["@{V0}=x"] + [f"@{{V{i}}}=@{{V{i - 1}}}@{{V{i - 1}}}" for i in range(1, 15)]
    text = "\n".join(lines) + "\nprofile p {\n" + "  /@{V14} r,\n" * 200 + "}\n"
    started = time.monotonic()
    with pytest.raises(UsageError, match="variables expand beyond"):
        apparmor_read.parse(text, "p")
    assert time.monotonic() - started < 5


# --- profile generate: all or nothing ---------------------------------------------------


def test_a_refused_name_leaves_nothing(tmp_path: Path) -> None:
    # SELinux refuses the module name after the seccomp profile was made: once that file
    # was written by then and stayed.
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(GOOD))
    out = tmp_path / "out"
    result = hardhost("profile", "generate", str(trace), "--name", "kernel", "--out-dir",
                      str(out))
    one_line(result, 2, "kernel_t")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_a_failed_rename_restores_the_old_profiles(tmp_path: Path) -> None:
    trace = normalise(syscalls=["read", "write", "exit_group"])
    out = tmp_path / "out"
    out.mkdir()
    old = {"web.seccomp.json": "old seccomp", "web.cil": "old cil", "web.apparmor": "old aa"}
    for name, text in old.items():
        (out / name).write_text(text)
    # An immutable file cannot be renamed away, even by root: the last rename fails after
    # the first two profiles were already replaced.
    if subprocess.run(["chattr", "+i", str(out / "web.apparmor")],
                      capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        with pytest.raises(UsageError, match="cannot write the profiles"):
            generate.generate_all(trace, "web", out)
    finally:
        subprocess.run(["chattr", "-i", str(out / "web.apparmor")], check=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == old


def test_a_target_that_is_a_folder_is_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "web.cil").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"web\.cil: exists and is not a regular file"):
        generate.generate_all(normalise(syscalls=["read"]), "web", out)
    assert sorted(p.name for p in out.iterdir()) == ["web.cil"]


def test_generate_writes_all_three(tmp_path: Path) -> None:
    written = generate.generate_all(normalise(syscalls=["read", "exit_group"]), "web",
                                    tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "web.apparmor", "web.cil", "web.seccomp.json"]
    assert written.seccomp.read_text().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
