"""The shipped default profile: generated from its policy source, at least as strict as
Docker's default, and enforced for real under runc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hardhost.profiles import default, seccomp
from tests.support.reference import moby_seccomp_default
from tests.support.runc import make_bundle, run_bundle

# Raw syscalls through libc's syscall(): errno shows whether the filter stopped them.
PROBE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
calls = {"keyctl": (250, 0, 0xfffffffd, 0),
         "io_uring_setup": (425, 1, ctypes.create_string_buffer(120)),
         "userfaultfd": (323, 0), "bpf": (321, 0, 0, 0)}
for name, args in calls.items():
    result = libc.syscall(*args)
    print(name, result if result >= 0 else -ctypes.get_errno())
"""


def unconditional(profile: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args") \
                and "caps" not in (rule.get("includes") or {}):
            names |= set(rule["names"])
    return names


def test_default_json_is_generated_from_its_policy() -> None:
    assert json.loads(default.OUTPUT.read_text()) == default.build()


def test_nothing_docker_denies_is_allowed_unconditionally() -> None:
    ours = json.loads(default.OUTPUT.read_text())
    docker = moby_seccomp_default()
    assert unconditional(ours) - unconditional(docker) == set()


def test_dangerous_calls_are_blocked() -> None:
    ours = json.loads(default.OUTPUT.read_text())
    for name in ("io_uring_setup", "io_uring_enter", "userfaultfd", "kexec_load", "bpf",
                 "perf_event_open", "add_key", "keyctl", "request_key", "unshare", "mount"):
        assert seccomp.action_for(ours, seccomp.Call(name)) == "SCMP_ACT_ERRNO", name
    assert seccomp.action_for(ours, seccomp.Call("clone3")) == "SCMP_ACT_ERRNO"
    clone3 = next(r for r in ours["syscalls"] if r["names"] == ["clone3"])
    assert clone3["errnoRet"] == 38  # ENOSYS, for glibc's fallback to clone
    assert seccomp.action_for(ours, seccomp.Call("socket", 0, 40)) == "SCMP_ACT_ERRNO"  # vsock


@pytest.mark.e2e
def test_workloads_run_under_the_default_profile(tmp_path: Path) -> None:
    profile = json.loads(default.OUTPUT.read_text())
    argv = ["/usr/bin/python3", "-c", "import json, socket, subprocess; "
            "print(subprocess.run(['/usr/bin/sh', '-c', 'echo ok'], capture_output=True, "
            "text=True).stdout.strip(), json.dumps(socket.gethostname() != ''))"]
    result = run_bundle(make_bundle(tmp_path / "ok", argv, seccomp=profile))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "true"]


@pytest.mark.e2e
def test_default_profile_denies_what_docker_allows_only_with_privilege(tmp_path: Path) -> None:
    profile = json.loads(default.OUTPUT.read_text())
    argv = ["/usr/bin/python3", "-c", PROBE]
    confined = run_bundle(make_bundle(tmp_path / "confined", argv, seccomp=profile))
    free = run_bundle(make_bundle(tmp_path / "free", argv))
    assert confined.returncode == 0 and free.returncode == 0, confined.stderr + free.stderr
    under = dict(line.split() for line in confined.stdout.splitlines())
    without = dict(line.split() for line in free.stdout.splitlines())
    assert set(under.values()) == {"-1"}, under  # EPERM from the filter, every one
    assert int(without["keyctl"]) >= 0, "keyctl should work without the profile"
    unshare = run_bundle(make_bundle(tmp_path / "unshare", ["/usr/bin/unshare", "-U", "true"],
                                     seccomp=profile))
    assert "unshare failed: Operation not permitted" in unshare.stderr
