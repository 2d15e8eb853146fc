"""seccomp generation, offline checking, and enforcement for real under runc."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hardhost.core.errors import UsageError
from hardhost.profiles import seccomp
from hardhost.profiles.record import record
from hardhost.profiles.trace import FileAccess, SocketUse, Trace, normalise
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.runc import make_bundle, run_bundle

GOLDEN = REPO / "tests" / "golden" / "seccomp"

SERVE_ONE = ("import http.server, sys\n"
             "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])),\n"
             "                                http.server.SimpleHTTPRequestHandler)\n"
             "server.handle_request()\n")


def sample_trace() -> Trace:
    return normalise(syscalls=["read", "write", "openat", "close", "clone", "socket",
                               "personality", "exit_group", "execve"],
                     clone_flags=[0x1200011], personality=[0xFFFFFFFF],
                     sockets=[SocketUse("inet", "stream"), SocketUse("unix", "stream")],
                     files=[FileAccess("/etc/hosts", "r")])


def test_generated_profile_matches_golden() -> None:
    text = seccomp.dumps(seccomp.generate(sample_trace(), "sample"))
    golden = GOLDEN / "sample.json"
    if os.environ.get("HARDHOST_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_profile_denies_by_default_and_conditions_arguments() -> None:
    profile = seccomp.generate(sample_trace(), "sample")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert seccomp.action_for(profile, seccomp.Call("mount")) == "SCMP_ACT_ERRNO"
    assert seccomp.action_for(profile, seccomp.Call("clone", 0, 0x1200011)) == "SCMP_ACT_ALLOW"
    new_user = 0x10000000 | 0x1200011
    assert seccomp.action_for(profile, seccomp.Call("clone", 0, new_user)) == "SCMP_ACT_ERRNO"
    assert seccomp.action_for(profile, seccomp.Call("socket", 0, 2)) == "SCMP_ACT_ALLOW"
    assert seccomp.action_for(profile, seccomp.Call("socket", 0, 16)) == "SCMP_ACT_ERRNO"
    clone3 = next(r for r in profile["syscalls"] if r["names"] == ["clone3"])
    assert clone3["errnoRet"] == 38
    runtime = next(r for r in profile["syscalls"] if "runtime" in r["comment"])
    assert "fstatfs" in runtime["names"]


def test_every_recorded_event_is_allowed_and_extras_are_named() -> None:
    trace = sample_trace()
    profile = seccomp.generate(trace, "sample")
    assert seccomp.first_denied(profile, trace) is None
    wider = normalise(syscalls=[*trace.syscalls, "ptrace"], sockets=trace.sockets)
    assert str(seccomp.first_denied(profile, wider)) == "ptrace"
    netlink = normalise(syscalls=["socket"], sockets=[SocketUse("netlink", "dgram")])
    assert str(seccomp.first_denied(profile, netlink)) == "socket(arg0=16)"


def test_unknown_syscall_name_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown syscall name 'not_a_syscall'"):
        seccomp.generate(normalise(syscalls=["read", "not_a_syscall"]), "x")


def test_syscall_table_matches_the_kernel_header() -> None:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("linux-libc-dev is not installed")
    names = set(re.findall(r"^#define __NR_([a-z0-9_]+) \d+", header.read_text(), re.M))
    assert seccomp.known_syscalls() == names


@pytest.mark.e2e
def test_recorded_workload_serves_under_its_profile_and_nothing_more(tmp_path: Path) -> None:
    port = free_port()
    argv = ["/usr/bin/python3", "-c", SERVE_ONE, str(port)]
    result: dict[str, object] = {}

    def recorder() -> None:
        result["trace"], result["status"] = record(argv, timeout=60)

    thread = threading.Thread(target=recorder)
    thread.start()
    assert fetch(port) == 200
    thread.join(timeout=60)
    assert result["status"] == 0
    trace = result["trace"]
    assert isinstance(trace, Trace)
    assert {"bind", "listen", "accept4"} & set(trace.syscalls)
    assert any(n.call == "listen" and n.port == port for n in trace.network)
    profile = seccomp.generate(trace, "serve-one")

    # The workload runs and serves under its own profile, inside runc.
    served = make_bundle(tmp_path / "serve", ["/usr/bin/python3", "-c", SERVE_ONE, str(port)],
                         seccomp=profile)
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    runner = threading.Thread(target=lambda: outcome.update(run=run_bundle(served)))
    runner.start()
    assert fetch(port) == 200
    runner.join(timeout=60)
    assert outcome["run"].returncode == 0, outcome["run"].stderr

    # A syscall outside the trace fails with EPERM, and only because of the profile.
    escape = ["/usr/bin/unshare", "-U", "/usr/bin/true"]
    denied = run_bundle(make_bundle(tmp_path / "denied", escape, seccomp=profile))
    assert denied.returncode != 0
    assert "unshare failed: Operation not permitted" in denied.stderr
    allowed = run_bundle(make_bundle(tmp_path / "control", escape))
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("needed", ["fstatfs", "getdents64", "write"])
def test_runtime_calls_are_needed(needed: str, tmp_path: Path) -> None:
    """The runtime's own calls are in the profile because runc fails without them."""
    trace, status = record(["/usr/bin/true"])
    assert status == 0 and needed not in trace.syscalls
    profile = seccomp.generate(trace, "true")
    assert run_bundle(make_bundle(tmp_path / "with", ["/usr/bin/true"],
                                  seccomp=profile)).returncode == 0
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n != needed]
    without = run_bundle(make_bundle(tmp_path / "without", ["/usr/bin/true"], seccomp=profile))
    assert without.returncode != 0


def fetch(port: int, timeout: float = 30) -> int:
    """GET / as soon as the server listens (the server answers exactly one connection, so
    there is no separate readiness probe); the status code."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as reply:
                return int(reply.status)
        except urllib.error.URLError as exc:
            refused = isinstance(exc.reason, ConnectionRefusedError)
            if not refused or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_trace_json_round_trip(tmp_path: Path) -> None:
    from hardhost.profiles.trace import from_json

    trace = sample_trace()
    assert from_json(trace.to_json(), "t") == trace
    data = json.loads(trace.to_json())
    data["syscalls"].append("Bad Name")
    with pytest.raises(UsageError, match="'Bad Name' is not a syscall name"):
        from_json(json.dumps(data), "t.json")
    with pytest.raises(UsageError, match="not valid JSON"):
        from_json(trace.to_json()[:50], "t.json")
