"""The SELinux CIL generator: golden files, least privilege, bad input, and real secilc runs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hardhost.core.run import run
from hardhost.profiles import selinux
from hardhost.profiles.selinux import ProfileError, generate, validate
from hardhost.profiles.trace import FileAccess, NetworkCall, SocketUse, Trace, load, normalise
from tests.support.paths import REPO

GOLDEN = REPO / "tests" / "golden" / "selinux"
BASE = REPO / "hardhost" / "profiles" / selinux.BASE_POLICY

# Every permission that changes an object or creates one; a read-only trace grants none.
WRITING = ("write", "append", "create", "add_name", "remove_name", "setattr", "unlink",
           "rename", "link", "rmdir", "relabelfrom", "relabelto", "mounton")


def web_trace() -> Trace:
    return load(GOLDEN / "web.trace.json")


def read_only_trace() -> Trace:
    return normalise(files=[FileAccess("/etc/hostname", "r")])


def allow_rules(cil: str) -> list[str]:
    return [line for line in cil.splitlines() if line.startswith("(allow ")]


def compile_with_secilc(cil: str, work: Path) -> Path:
    """Compile like `validate`, but keep secilc's file_contexts output for inspection."""
    (work / "module.cil").write_text(cil)
    run(["secilc", "--output", work / "policy", "--filecontext", work / "file_contexts",
         BASE, work / "module.cil"], cwd=work)
    return work / "file_contexts"


def test_module_matches_golden_file() -> None:
    """Regenerate with HARDHOST_UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    cil = generate(web_trace(), "web")
    golden = GOLDEN / "web.cil"
    if os.environ.get("HARDHOST_UPDATE_GOLDEN"):
        golden.write_text(cil)
    assert cil == golden.read_text()


def test_generation_is_deterministic_and_order_independent() -> None:
    trace = web_trace()
    shuffled = normalise(syscalls=reversed(trace.syscalls), sockets=reversed(trace.sockets),
                         executables=trace.executables, files=reversed(trace.files),
                         network=reversed(trace.network), capabilities=trace.capabilities)
    assert generate(trace, "web") == generate(shuffled, "web") == generate(trace, "web")


def test_secilc_accepts_the_generated_module() -> None:
    validate(generate(web_trace(), "web"))
    validate(generate(read_only_trace(), "minimal"))
    validate(generate(Trace(), "empty"))


def test_secilc_accepts_the_golden_file() -> None:
    validate((GOLDEN / "web.cil").read_text())


@pytest.mark.parametrize(("breakage", "reason"), [
    (lambda cil: cil + "(allow web_t no_such_t (file (read)))\n", "allow statement"),
    (lambda cil: cil.replace("(file (getattr open read))", "(file (getattr open fly))", 1),
     "permission fly"),
    (lambda cil: cil.replace("(type web_t)\n", ""), "roletype statement"),
    (lambda cil: cil + "(allow web_t self (process (fork))\n", "without matching close"),
])
def test_secilc_rejects_a_broken_module(breakage: Callable[[str], str], reason: str) -> None:
    """The check can fail: a module naming what the base does not declare is refused."""
    broken = breakage(generate(web_trace(), "web"))
    with pytest.raises(ProfileError, match="rejected by secilc") as failure:
        validate(broken)
    assert reason in str(failure.value)
    assert "\n" not in str(failure.value)


def test_a_failure_names_the_offending_statement() -> None:
    broken = generate(read_only_trace(), "minimal") + "(allow minimal_t no_such_t (file (read)))\n"
    with pytest.raises(ProfileError, match=re.escape("(allow minimal_t no_such_t (file (read)))")):
        validate(broken)


def test_read_only_file_grants_read_and_nothing_else() -> None:
    cil = generate(read_only_trace(), "minimal")
    assert allow_rules(cil) == [
        "(allow minimal_t minimal_file_etc_hostname_t (file (getattr open read)))"]
    permissions = " ".join(re.findall(r"\(\w+ \(([a-z_ ]+)\)\)\)$", cil, re.MULTILINE))
    for perm in WRITING:
        assert perm not in permissions.split(), perm
    # The only types are the domain and the one file's own type: no base type is reachable.
    assert re.findall(r"^\(type (\w+)\)$", cil, re.MULTILINE) == [
        "minimal_t", "minimal_file_etc_hostname_t"]


def test_web_fixture_rule_count_is_bounded() -> None:
    # One rule per traced object and class: 9 files with their own types, /proc/self (the
    # domain itself), 1 socket file, 2 ports, node_t for the bind, 4 socket classes,
    # capability and cap_userns, process.
    assert len(allow_rules(generate(web_trace(), "web"))) == 22


def test_no_rule_targets_a_broad_base_type() -> None:
    """Only the domain itself, its own types, and the base types the kernel forces are used."""
    cil = generate(web_trace(), "web")
    targets = {rule.split()[2] for rule in allow_rules(cil)}
    assert {t for t in targets if not t.startswith("web_")} == {"self", "node_t"}


def test_file_contexts_match_exactly_the_traced_paths(tmp_path: Path) -> None:
    """secilc's own file_contexts output: each regex matches its path and no near miss."""
    paths = ["/etc/hosts", "/srv/static files/index (1).html", "/srv/a+b/[x]*?.txt",
             "/srv/caf\u00e9", "/srv/back\\slash", "/srv/$HOME^{1}|a"]
    trace = normalise(files=[FileAccess(p, "r") for p in paths])
    contexts = compile_with_secilc(generate(trace, "web"), tmp_path).read_text()
    regexes = [line.split("\t")[0] for line in contexts.splitlines()]
    assert len(regexes) == len(paths)
    for path in paths:
        # libselinux compiles these with PCRE2 and no UTF flag, anchored, matching bytes.
        matching = [r for r in regexes if re.fullmatch(r.encode(), path.encode())]
        assert len(matching) == 1, path
        assert not re.fullmatch(matching[0].encode(), (path + "x").encode())
        if "." in path:  # an unescaped dot would match any character
            assert not re.fullmatch(matching[0].encode(), path.replace(".", "_").encode())


def test_colliding_slugs_get_distinct_types() -> None:
    cil = generate(normalise(files=[FileAccess("/a-b", "r"), FileAccess("/a_b", "r")]), "web")
    types = re.findall(r"^\(type (\w+)\)$", cil, re.MULTILINE)
    assert len(types) == len(set(types)) == 3
    validate(cil)


def test_proc_self_is_the_domain_and_other_proc_paths_get_genfscon() -> None:
    cil = generate(normalise(files=[FileAccess("/proc/self/status", "r"),
                                    FileAccess("/proc/1/cmdline", "r"),
                                    FileAccess("/proc/sys/kernel/hostname", "r")]), "web")
    assert "(allow web_t self (file (getattr open read)))" in allow_rules(cil)
    assert '(genfscon proc "/sys/kernel/hostname"' in cil
    assert "filecon" not in cil
    validate(cil)


def test_capabilities_are_granted_in_both_namespaces() -> None:
    cil = generate(normalise(capabilities=["CAP_CHOWN", "cap_bpf"]), "web")
    assert allow_rules(cil) == [
        "(allow web_t self (cap2_userns (bpf)))",
        "(allow web_t self (cap_userns (chown)))",
        "(allow web_t self (capability (chown)))",
        "(allow web_t self (capability2 (bpf)))",
    ]


@pytest.mark.parametrize("name", ["my app", "web/1", "../web", "web-1", "web.t", "", "1web",
                                  "w\u00e9b", "web\n", "port"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ProfileError, match="SELinux profile name"):
        generate(read_only_trace(), name)


def test_names_are_lower_cased() -> None:
    assert "(type webapp_t)" in generate(read_only_trace(), "WebApp").splitlines()


@pytest.mark.parametrize(("path", "problem"), [
    ('/etc/"quoted"', "double quote"),
    ("/etc/new\nline", "newline"),
    ("/etc/nul\0byte", "NUL"),
    ("/etc/../shadow", "canonical"),
    ("//etc/hosts", "canonical"),
    ("/etc/./hosts", "canonical"),
    ("etc/hosts", "canonical"),
    ("/etc//", "canonical"),
    ("/proc/sys/odd name", "genfscon"),
])
def test_inexpressible_paths_are_refused(path: str, problem: str) -> None:
    with pytest.raises(ProfileError, match=problem):
        generate(normalise(files=[FileAccess(path, "r")]), "web")


@pytest.mark.parametrize(("trace", "problem"), [
    (normalise(capabilities=["CAP_FLY"]), "capability 'CAP_FLY' is unknown"),
    (normalise(sockets=[SocketUse("inet", "")]), "socket inet/\\?"),
    (normalise(network=[NetworkCall("connect", "inet", "stream", "10.0.0.1", 0)]),
     "with no port"),
    (normalise(files=[FileAccess("/srv/", "x")]), "mode 'x' does not apply to a dir"),
])
def test_traces_that_cannot_become_a_policy_are_refused(trace: Trace, problem: str) -> None:
    with pytest.raises(ProfileError, match=problem):
        generate(trace, "web")


def test_profile_error_is_a_usage_error() -> None:
    assert ProfileError("x").exit_code == 2
