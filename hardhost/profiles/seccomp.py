"""seccomp profiles in OCI runtime-spec JSON (read by runc, containerd, Docker and podman).

A generated profile allows what a trace recorded and nothing else: EPERM by default, ENOSYS
for clone3 so glibc falls back to clone, and argument conditions where the trace shows fixed
values (clone's namespace flags, socket families, personality), as Docker's profile does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from hardhost.core.errors import UsageError
from hardhost.core.inputs import SMALL_FILE, decode_json, read_text
from hardhost.profiles.trace import Trace

# The policy data, from the package wherever it is installed (`seccomp/` in the repository).
DATA = Path(str(resources.files("hardhost.policy.seccomp")))
EPERM, ENOSYS = 1, 38
ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: Docker masks the same bits.
CLONE_NAMESPACE_FLAGS = 0x7E020000
FAMILY_NUMBERS = {"unix": 1, "inet": 2, "inet6": 10, "netlink": 16, "packet": 17}
# Conditioned by argument below, so never allowed by name alone.
CONDITIONED = ("clone", "clone3", "socket", "personality")

# runc 1.1 loads the filter and then runs a few calls of its own before exec: it lists
# /proc/self/fd (getdents64) and checks it is procfs (fstatfs), reports over its sync pipe
# (write), and closes what the workload must not inherit. Measured with runc 1.1.5: without
# fstatfs, getdents64 or write, even /usr/bin/true fails to start (tests/test_seccomp.py).
# runc's init is also a Go program, whose runtime may act at any moment, more so on a busy
# machine: preemption signals (tgkill, rt_sigreturn), scheduler sleeps and memory upkeep. A
# blocked rt_sigreturn killed it with SIGSEGV under load.
# crun 1.8 (podman's runtime on Debian 12) loads the filter earlier, before it takes the
# process's user and capabilities (setresgid, setresuid, capset), and then waits on its
# start fifo (pselect6, read). Measured in a booted podman host with SCMP_ACT_LOG: without
# any one of them the container does not start (tests/e2e/test_workloads.py).
RUNTIME_SYSCALLS = ("capset", "close", "execve", "exit", "exit_group", "fcntl", "fstatfs",
                    "futex", "getdents64", "getpid", "gettid", "madvise", "mmap", "munmap",
                    "nanosleep", "newfstatat", "openat", "pselect6", "read", "rt_sigprocmask",
                    "rt_sigreturn", "sched_yield", "setresgid", "setresuid", "sigaltstack",
                    "tgkill", "write")


class SeccompError(UsageError):
    """A trace or profile that cannot become or be read as a seccomp profile."""


@cache
def known_syscalls() -> frozenset[str]:
    names = set()
    for line in (DATA / "syscalls-x86_64.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split()[0])
    return frozenset(names)


def check_names(names: Iterable[str], origin: str) -> None:
    unknown = sorted(set(names) - known_syscalls())
    if unknown:
        raise SeccompError(f"{origin}: unknown syscall name {unknown[0]!r}")


def _allow(names: Iterable[str], comment: str,
           args: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": sorted(set(names)), "action": "SCMP_ACT_ALLOW",
                            "comment": comment}
    if args:
        rule["args"] = list(args)
    return rule


def generate(trace: Trace, name: str) -> dict[str, Any]:
    """The OCI seccomp profile for `trace`."""
    check_names(trace.syscalls, f"trace for {name}")
    recorded = set(trace.syscalls) - set(CONDITIONED)
    runtime = set(RUNTIME_SYSCALLS) - recorded
    rules = [_allow(recorded, f"{name}: recorded")]
    if runtime:
        rules.append(_allow(runtime, "needed by the container runtime between loading "
                                     "the filter and exec, not by the workload"))
    rules += _clone_rules(trace)
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS,
                  "comment": "ENOSYS makes glibc fall back to clone, whose flags are checked"})
    if "socket" in trace.syscalls:
        for family in sorted({s.family for s in trace.sockets}):
            rules.append(_allow(["socket"], f"socket family {family}, as recorded", [
                {"index": 0, "value": FAMILY_NUMBERS[family], "op": "SCMP_CMP_EQ"}]))
    for value in trace.personality:
        rules.append(_allow(["personality"], "personality value, as recorded",
                            [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]))
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EPERM,
            "architectures": list(ARCHITECTURES), "syscalls": rules}


def _clone_rules(trace: Trace) -> list[dict[str, Any]]:
    # runc itself does not clone after the filter; only the workload's own clones count.
    if "clone" not in trace.syscalls and not trace.clone_flags:
        return []
    if all(flags & CLONE_NAMESPACE_FLAGS == 0 for flags in trace.clone_flags):
        return [_allow(["clone"], "clone without namespace flags", [
            {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
             "op": "SCMP_CMP_MASKED_EQ"}])]
    return [_allow(["clone"], "clone flags, as recorded",
                   [{"index": 0, "value": flags, "op": "SCMP_CMP_EQ"}])
            for flags in trace.clone_flags]


def dumps(profile: Mapping[str, Any]) -> str:
    return json.dumps(profile, indent=2, sort_keys=True) + "\n"


# --- Offline evaluation -----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One recorded event: a syscall, and the value of one argument when the trace has it."""

    name: str
    index: int | None = None
    value: int | None = None

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}(arg{self.index}={self.value})"


def events(trace: Trace) -> list[Call]:
    calls = [Call(n) for n in trace.syscalls if n not in ("clone", "socket", "personality")]
    calls += [Call("clone", 0, f) for f in trace.clone_flags]
    if "clone" in trace.syscalls and not trace.clone_flags:
        calls.append(Call("clone"))
    calls += [Call("socket", 0, FAMILY_NUMBERS[s.family]) for s in trace.sockets]
    calls += [Call("personality", 0, v) for v in trace.personality]
    return calls


def _condition_holds(cond: Mapping[str, Any], value: int) -> bool:
    op, operand = cond.get("op"), int(cond.get("value", 0))
    if op == "SCMP_CMP_EQ":
        return value == operand
    if op == "SCMP_CMP_NE":
        return value != operand
    if op == "SCMP_CMP_LT":
        return value < operand
    if op == "SCMP_CMP_LE":
        return value <= operand
    if op == "SCMP_CMP_GT":
        return value > operand
    if op == "SCMP_CMP_GE":
        return value >= operand
    if op == "SCMP_CMP_MASKED_EQ":
        return value & operand == int(cond.get("valueTwo", 0))
    raise SeccompError(f"unknown seccomp comparison {op!r}")


def action_for(profile: Mapping[str, Any], call: Call) -> str:
    """The action the profile takes for `call` (first matching rule, else the default)."""
    for rule in profile.get("syscalls", []):
        if call.name not in rule.get("names", []):
            continue
        conditions = rule.get("args") or []
        if conditions:
            if call.value is None:
                continue  # not provable from the trace: a conditional rule does not count
            relevant = [c for c in conditions if c.get("index") == call.index]
            if len(relevant) != len(conditions) or not all(
                    _condition_holds(c, call.value) for c in relevant):
                continue
        return str(rule.get("action"))
    return str(profile.get("defaultAction"))


def first_denied(profile: Mapping[str, Any], trace: Trace) -> Call | None:
    for call in events(trace):
        if action_for(profile, call) not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
            return call
    return None


def load(path: Path) -> dict[str, Any]:
    text = read_text(path, what="seccomp profile", limit=SMALL_FILE, error=SeccompError)
    return loads(text, str(path))


_OPS = frozenset({"SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT",
                  "SCMP_CMP_GE", "SCMP_CMP_MASKED_EQ"})


def _is_u64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def loads(text: str, origin: str) -> dict[str, Any]:
    """Parse an OCI seccomp profile strictly: every field `action_for` reads has its type
    checked here, so a hostile profile is one error and never a crash."""
    data = decode_json(text, origin=origin, error=SeccompError)
    if not isinstance(data, dict) or not isinstance(data.get("defaultAction"), str):
        raise SeccompError(f"{origin}: not an OCI seccomp profile (no defaultAction)")
    rules = data.get("syscalls", [])
    if not isinstance(rules, list):
        raise SeccompError(f"{origin}: syscalls: expected a list of rules")
    for index, rule in enumerate(rules):
        where = f"{origin}: syscalls[{index}]"
        if not isinstance(rule, dict):
            raise SeccompError(f"{where}: expected an object")
        names = rule.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SeccompError(f"{where}.names: expected a list of strings")
        if not isinstance(rule.get("action"), str):
            raise SeccompError(f"{where}.action: expected a string")
        conditions = rule.get("args") or []
        if not isinstance(conditions, list):
            raise SeccompError(f"{where}.args: expected a list of conditions")
        for number, cond in enumerate(conditions):
            if (not isinstance(cond, dict) or cond.get("op") not in _OPS
                    or not _is_u64(cond.get("index")) or not _is_u64(cond.get("value", 0))
                    or not _is_u64(cond.get("valueTwo", 0))):
                raise SeccompError(f"{where}.args[{number}]: expected index, value and "
                                   "valueTwo as integers and a known SCMP_CMP_* op")
    return data
