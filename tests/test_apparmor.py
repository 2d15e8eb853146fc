"""AppArmor generation: golden files, apparmor_parser -Q as the real consumer, path escaping,
the offline check, and coverage of Docker's docker-default denies."""

from __future__ import annotations

import itertools
import os
import re
import string
import subprocess
from pathlib import Path

import pytest

from hardhost.core.run import which
from hardhost.profiles import apparmor, apparmor_check, apparmor_read, apparmor_validate, default
from hardhost.profiles.apparmor_read import (
    CapabilityRule,
    FileRule,
    NetworkRule,
    OtherRule,
    ParsedProfile,
)
from hardhost.profiles.apparmor_rules import ProfileError
from hardhost.profiles.trace import (
    FileAccess,
    NetworkCall,
    SocketUse,
    Trace,
    load,
    merge,
    normalise,
)
from tests.support.paths import REPO
from tests.support.reference import APPARMOR_TEMPLATE, docker_default_apparmor

GOLDEN = REPO / "tests" / "golden" / "apparmor"
TRACES = sorted(GOLDEN.glob("*.trace.json"))


def webapp() -> Trace:
    return load(GOLDEN / "webapp.trace.json")


def profile_of(trace: Trace, name: str = "webapp") -> ParsedProfile:
    return apparmor_read.parse(apparmor.generate(trace, name))


def with_extra(trace: Trace, extra: Trace) -> Trace:
    return merge([trace, extra])


# --- Golden files and the real parser ---------------------------------------------------


@pytest.mark.parametrize("source", TRACES, ids=lambda p: p.name)
def test_profile_matches_golden(source: Path) -> None:
    """Regenerate with HARDHOST_UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    name = source.name.removesuffix(".trace.json")
    text = apparmor.generate(load(source), name)
    golden = GOLDEN / f"{name}.profile"
    if os.environ.get("HARDHOST_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_golden_inputs_exist() -> None:
    assert [p.name for p in TRACES] == ["webapp.trace.json"]


def test_generation_is_deterministic() -> None:
    assert apparmor.generate(webapp(), "webapp") == apparmor.generate(webapp(), "webapp")


@pytest.mark.parametrize("trace", [Trace(), webapp(), normalise(syscalls=["ptrace"])],
                         ids=["empty", "webapp", "ptrace"])
def test_apparmor_parser_accepts_the_profile(trace: Trace) -> None:
    apparmor_validate.validate(apparmor.generate(trace, "webapp"))


def test_apparmor_parser_reason_reaches_the_error() -> None:
    broken = "abi <abi/3.0>,\nprofile broken {\n  /tmp/x rwa,\n}\n"
    with pytest.raises(ProfileError, match="refused the profile: line 3: Conflict 'a' and 'w'"
                       ) as caught:
        apparmor_validate.validate(broken)
    assert "hardhost-apparmor-" not in str(caught.value)  # no temporary file names
    with pytest.raises(ProfileError, match="Invalid capability frobnicate"):
        apparmor_validate.validate(
            "abi <abi/3.0>,\nprofile broken {\n  capability frobnicate,\n}\n")


# --- What goes into the profile ---------------------------------------------------------


def rule_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_rules_follow_the_trace() -> None:
    lines = rule_lines(apparmor.generate(webapp(), "webapp"))
    for expected in ("capability net_bind_service,", "network inet6 stream,",
                     "network unix stream,", "network netlink dgram,", "network inet dgram,",
                     "/usr/bin/python3.11 ix,", "/usr/local/bin/healthcheck ix,",
                     "/usr/bin/python3.11 r,", "/etc/hosts r,",
                     "/usr/lib/x86_64-linux-gnu/libc.so.6 rm,", "/var/log/webapp/access.log a,",
                     "/run/webapp/webapp.pid rw,", "/usr/lib/python3.11/encodings/* r,",
                     "/proc/@{pid}/status r,", "/proc/@{pid}/oom_score_adj w,",
                     "/proc/@{pid}/task/@{tid}/comm w,", "deny ptrace (trace, tracedby),"):
        assert expected in lines
    assert "capability," not in lines and "network," not in lines and "file," not in lines


def siblings(count: int, mode: str, directory: str = "/usr/share/zoneinfo") -> Trace:
    return normalise(files=[FileAccess(f"{directory}/zone{i}", mode) for i in range(count)])


def test_glob_only_for_many_files_read_in_one_directory() -> None:
    assert "/usr/share/zoneinfo/* r," in rule_lines(apparmor.generate(siblings(8, "r"), "z"))
    seven = rule_lines(apparmor.generate(siblings(7, "r"), "z"))
    assert "/usr/share/zoneinfo/* r," not in seven and "/usr/share/zoneinfo/zone6 r," in seven
    assert "/usr/lib/* rm," in rule_lines(apparmor.generate(siblings(8, "mr", "/usr/lib"), "z"))
    # Writes and runs are never widened to files the trace did not show.
    for mode in ("w", "rw", "a", "rx"):
        lines = rule_lines(apparmor.generate(siblings(9, mode), "z"))
        assert not any(line.startswith("/usr/share/zoneinfo/*") for line in lines), mode
    # Mixed modes: only the group read the same way counts.
    mixed = merge([siblings(5, "r"), siblings(5, "rw", "/usr/share/zoneinfo/x")])
    assert not any("*" in line for line in rule_lines(apparmor.generate(mixed, "z"))
                   if not line.startswith("deny"))


def test_glob_semantics_in_the_check() -> None:
    profile = profile_of(siblings(8, "r"))
    assert apparmor_check.file_verdict(profile, "/usr/share/zoneinfo/unseen", "r") is None
    assert apparmor_check.file_verdict(profile, "/usr/share/zoneinfo/Europe/Paris", "r") is not None
    assert apparmor_check.file_verdict(profile, "/usr/share/zoneinfo/zone1", "w") is not None


def test_proc_self_becomes_any_pid() -> None:
    profile = profile_of(normalise(files=[FileAccess("/proc/self/status", "r"),
                                          FileAccess("/proc/thread-self/comm", "w")]))
    for path in ("/proc/self/status", "/proc/4242/status", "/proc/1/status"):
        assert apparmor_check.file_verdict(profile, path, "r") is None, path
    assert apparmor_check.file_verdict(profile, "/proc/4242/task/4243/comm", "w") is None
    assert apparmor_check.file_verdict(profile, "/proc/sys/status", "r") is not None


@pytest.mark.parametrize("name", ["", "my profile", "a/b", "../up", "-flag", ".hidden", "x{y}",
                                  "x,y", "x\ny", "caf\u00e9", "x" * 65, "name#1", "peer=x"])
def test_bad_profile_names_are_refused(name: str) -> None:
    with pytest.raises(ProfileError, match="no spaces or slashes"):
        apparmor.generate(Trace(), name)


@pytest.mark.parametrize("name", ["web", "web-app_2.1", "9lives", "X" * 64])
def test_good_profile_names_are_accepted(name: str) -> None:
    assert f"profile {name} flags=" in apparmor.generate(Trace(), name)


def test_capabilities_are_checked_and_spelt_as_apparmor_does() -> None:
    text = apparmor.generate(normalise(capabilities=["CAP_NET_RAW", "chown"]), "c")
    assert "capability net_raw," in rule_lines(text) and "capability chown," in rule_lines(text)
    with pytest.raises(ProfileError, match="unknown capability 'cap_frobnicate'"):
        apparmor.generate(normalise(capabilities=["cap_frobnicate"]), "c")
    with pytest.raises(ProfileError, match="unknown capability"):
        apparmor.generate(normalise(capabilities=["net_raw,\n  capability sys_admin"]), "c")


def test_socket_families_and_types_are_checked() -> None:
    numbered = apparmor.generate(normalise(sockets=[SocketUse("inet", "4")]), "n")
    assert "network inet rdm," in rule_lines(numbered)
    untyped = apparmor.generate(normalise(sockets=[SocketUse("inet", "stream"),
                                                   SocketUse("inet", "")]), "n")
    assert "network inet," in rule_lines(untyped)
    assert "network inet stream," not in rule_lines(untyped)
    with pytest.raises(ProfileError, match="unknown socket type"):
        apparmor.generate(normalise(sockets=[SocketUse("inet", "stream, network")]), "n")
    with pytest.raises(ProfileError, match="unknown socket family 'alg'"):
        apparmor.generate(normalise(sockets=[SocketUse("alg", "seqpacket")]), "n")


# --- Paths with AppArmor metacharacters -------------------------------------------------

METACHARACTER_PATHS = [
    "/srv/data/my file.txt",
    "/srv/a,b",
    "/srv/#not-a-comment",
    "/srv/star*",
    "/srv/[abc]?",
    "/srv/{a,b}",
    "/srv/caret^dollar$",
    '/srv/x", /** rwix, "/y',
    "/srv/x, /** rwix,",
    "/srv/@{PROC}/@{pid}",
    "/srv/back\\slash\\*",
    "/srv/tab\there\rcarriage",
    "/srv/caf\u00e9 \u65e5\u672c",
    "/srv/latin1-\udce9",  # a non-UTF-8 byte, as profiles/record.py decodes it
    "/srv/-> /bin/sh",
]


@pytest.mark.parametrize("path", METACHARACTER_PATHS)
def test_metacharacter_paths_are_quoted_and_parse(path: str) -> None:
    trace = normalise(files=[FileAccess(path, "r")], executables=[path])
    text = apparmor.generate(trace, "meta")
    apparmor_validate.validate(text)
    token = apparmor.path_token(path)
    assert token.startswith('"') and token.endswith('"')
    assert f"  {token} r," in text.splitlines() and f"  {token} ix," in text.splitlines()
    profile = apparmor_read.parse(text)
    assert apparmor_check.first_denied(profile, trace) is None
    # The rule matches the path itself and nothing else, and injected no other rule.
    allowing = [rule for rule in profile.files if not rule.deny]
    assert len(allowing) == 2
    for other in ("/srv/a", "/srv/x", "/etc/shadow", "/bin/sh", path + "x", path[:-1]):
        assert apparmor_check.file_verdict(profile, other, "r") is not None, other
        assert apparmor_check.file_verdict(profile, other, "x") is not None, other


def aare_lines(text: str, tmp_path: Path) -> list[str]:
    """The path expressions apparmor_parser compiled (its -D rule-exprs dump)."""
    source = tmp_path / "profile"
    source.write_text(text)
    # The dump is long and goes to stderr, past what hardhost.core.run keeps of it.
    dump = subprocess.run([which("apparmor_parser"), "-Q", "-K", "-D", "rule-exprs",
                           str(source)], capture_output=True, text=True, check=True,
                          errors="surrogateescape", stdin=subprocess.DEVNULL)
    return [line for line in dump.stderr.splitlines() if line.startswith("aare: ")]


@pytest.mark.parametrize("path", ['/srv/x", /** rwix, "/y', "/srv/x, /** rwix,",
                                  "/srv/@{PROC}/*", "/srv/{a,b}[c]?"])
def test_apparmor_parser_compiles_one_literal_rule_per_path(path: str, tmp_path: Path) -> None:
    """apparmor_parser, not our own reader, sees exactly one rule and no pattern in it."""
    plain = aare_lines(apparmor.generate(normalise(files=[FileAccess("/srv/plain", "r")]), "m"),
                       tmp_path)
    tricky = aare_lines(apparmor.generate(normalise(files=[FileAccess(path, "r")]), "m"),
                        tmp_path)
    assert len(tricky) == len(plain)
    (compiled,) = set(tricky) - set(plain)
    expression = compiled.split("   ->   ", 1)[1]
    # Every pattern character arrives escaped: nothing in it can match more than itself.
    assert not re.search(r"(?<!\\)[*\[(|]", expression.replace("\\\\", "")), compiled


@pytest.mark.parametrize("path", ["/srv/nul\0byte", "/srv/new\nline", "relative/path",
                                  "/srv/../etc/shadow", "/srv//double", "/srv/./dot",
                                  "/srv/lone-\ud800"])
def test_unrepresentable_paths_are_refused(path: str) -> None:
    with pytest.raises(ProfileError, match=re.escape("trace for p: ")):
        apparmor.generate(normalise(files=[FileAccess(path, "r")]), "p")
    with pytest.raises(ProfileError):
        apparmor.generate(normalise(executables=[path]), "p")


# --- The offline check ------------------------------------------------------------------


def test_check_allows_every_event_of_its_own_trace(tmp_path: Path) -> None:
    trace = webapp()
    assert apparmor_check.first_denied(profile_of(trace), trace) is None
    written = tmp_path / "webapp.apparmor"
    written.write_text(apparmor.generate(trace, "webapp"))
    assert apparmor_check.first_denied(apparmor_read.load(written), trace) is None
    with pytest.raises(ProfileError, match="AppArmor profile not found"):
        apparmor_read.load(tmp_path / "missing")


@pytest.mark.parametrize("extra, expected", [
    (normalise(files=[FileAccess("/etc/shadow", "r")]), "file /etc/shadow (r): no rule allows it"),
    (normalise(files=[FileAccess("/etc/hosts", "w")]), "file /etc/hosts (w): no rule allows it"),
    (normalise(files=[FileAccess("/var/log/webapp/access.log", "w")]),
     "file /var/log/webapp/access.log (w): no rule allows it"),
    (normalise(files=[FileAccess("/usr/lib/x86_64-linux-gnu/libz.so.1", "m")]),
     "file /usr/lib/x86_64-linux-gnu/libz.so.1 (m): no rule allows it"),
    (normalise(executables=["/usr/bin/curl"]), "exec /usr/bin/curl: no rule allows it"),
    (normalise(files=[FileAccess("/etc/hosts", "x")]), "file /etc/hosts (x): no rule allows it"),
    (normalise(sockets=[SocketUse("packet", "raw")]), "socket packet raw: no rule allows it"),
    (normalise(network=[NetworkCall("connect", "inet", "stream", "203.0.113.9", 443)]),
     "connect inet stream 203.0.113.9:443: no rule allows it"),
    (normalise(capabilities=["sys_admin"]), "capability sys_admin: no rule allows it"),
], ids=["new-file", "read-becomes-write", "append-becomes-write", "new-mmap", "new-exec",
        "file-run", "new-socket", "new-connect", "new-capability"])
def test_check_names_the_first_denied_event(extra: Trace, expected: str) -> None:
    profile = profile_of(webapp())
    assert apparmor_check.first_denied(profile, with_extra(webapp(), extra)) == expected


def test_check_reports_events_in_order() -> None:
    trace = with_extra(webapp(), normalise(executables=["/usr/bin/curl"],
                                           files=[FileAccess("/etc/shadow", "r")],
                                           capabilities=["sys_admin"]))
    assert apparmor_check.first_denied(profile_of(webapp()), trace) == (
        "exec /usr/bin/curl: no rule allows it")


def test_deny_rules_win_over_what_the_trace_allows() -> None:
    """A trace that writes a sysctl gets its rule, and the fixed deny still wins."""
    trace = with_extra(webapp(), normalise(files=[FileAccess("/proc/sys/net/ipv4/ip_forward",
                                                             "w")]))
    text = apparmor.generate(trace, "webapp")
    assert "/proc/sys/net/ipv4/ip_forward w," in rule_lines(text)
    denied = apparmor_check.first_denied(apparmor_read.parse(text), trace)
    assert denied is not None
    assert denied.startswith("file /proc/sys/net/ipv4/ip_forward (w): denied by line ")
    assert denied.endswith("(deny @{PROC}/[^1-9/]*/** w,)")


PATTERNS = r"""abi <abi/3.0>,
@{HOME}=/home/*/ /root/
profile patterns {
  /dir/* r,
  /deep/** r,
  /alt/{a,b{c,d}}/x r,
  /cls/[^1-9/]x r,
  /range/[a-c] r,
  /q/? r,
  @{HOME}.cache/** rw,
  "/lit/a\*b\{c\}" r,
  "/oct/\101\x42\d067" r,
  /app/log a,
}
"""


@pytest.mark.parametrize("path, allowed", [
    ("/dir/a", True), ("/dir/", False), ("/dir/a/b", False),
    ("/deep/a", True), ("/deep/a/b/c", True), ("/deep/", False),
    ("/alt/a/x", True), ("/alt/bc/x", True), ("/alt/bd/x", True), ("/alt/b/x", False),
    ("/cls/0x", True), ("/cls/ax", True), ("/cls/5x", False),
    ("/range/b", True), ("/range/d", False),
    ("/q/z", True), ("/q/zz", False),
    ("/home/ann/.cache/pip/x", True), ("/root/.cache/x", True), ("/home/.cache/x", False),
    ("/lit/a*b{c}", True), ("/lit/axb{c}", False),
    ("/oct/ABC", True),
])
def test_check_reads_apparmor_patterns(path: str, allowed: bool) -> None:
    profile = apparmor_read.parse(PATTERNS)
    assert (apparmor_check.file_verdict(profile, path, "r") is None) is allowed


def test_check_treats_w_as_covering_append() -> None:
    profile = apparmor_read.parse(PATTERNS)
    assert apparmor_check.file_verdict(profile, "/root/.cache/x", "a") is None
    assert apparmor_check.file_verdict(profile, "/app/log", "a") is None
    assert apparmor_check.file_verdict(profile, "/app/log", "w") is not None


@pytest.mark.parametrize("rule", ["owner /x r,", "/x r -> /y,", "/x r", "/x rq,",
                                  "network tcp,", "dbus-x send,", "/x rwa,", "/x{a} r,"])
def test_check_refuses_rules_it_cannot_evaluate(rule: str) -> None:
    with pytest.raises(ProfileError, match="line 2"):
        apparmor_read.parse(f"profile p {{\n  {rule}\n}}\n")


# --- Docker's docker-default denies ------------------------------------------------------


def examples(pattern: str, limit: int = 400) -> list[str]:
    """Concrete paths an AppArmor pattern matches: each {} alternative, each glob filled in."""
    results = [""]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        options: list[str]
        if char == "\\":
            options, index = [pattern[index + 1]], index + 2
        elif char == "{":
            depth, end, starts = 0, index, [index + 1]
            for end in range(index, len(pattern)):
                depth += {"{": 1, "}": -1}.get(pattern[end], 0)
                if pattern[end] == "," and depth == 1:
                    starts.append(end + 1)
                if depth == 0:
                    break
            bounds = zip(starts, [s - 1 for s in starts[1:]] + [end], strict=True)
            options = [e for start, stop in bounds for e in examples(pattern[start:stop])]
            index = end + 1
        elif char == "[":
            end = pattern.index("]", index)
            cls = re.compile(pattern[index:end + 1])
            fits = [c for c in string.ascii_lowercase + string.digits if cls.fullmatch(c)]
            options, index = [fits[0], fits[-1]], end + 1
        elif pattern.startswith("**", index):
            options, index = ["x", "x/y"], index + 2
        elif char == "*":
            options, index = ["x", "xy"], index + 1
        elif char == "?":
            options, index = ["q"], index + 1
        else:
            options, index = [char], index + 1
        results = list(itertools.islice((r + o for r in results for o in options), limit))
    return results


def docker_default() -> ParsedProfile:
    return apparmor_read.parse(docker_default_apparmor(), str(APPARMOR_TEMPLATE))


def test_every_docker_deny_line_is_read() -> None:
    lines = [line for line in docker_default_apparmor().splitlines()
             if line.strip().startswith("deny")]
    docker = docker_default()
    rules: list[FileRule | NetworkRule | CapabilityRule | OtherRule] = [
        *docker.files, *docker.network, *docker.capabilities, *docker.other]
    assert len(lines) == len([r for r in rules if r.deny]) > 10


@pytest.mark.parametrize("trace", [Trace(), webapp(), normalise(
    syscalls=["ptrace"], capabilities=["sys_admin"], sockets=[SocketUse("netlink", "")],
    files=[FileAccess("/proc/sys/kernel/shmmax", "w"), FileAccess("/sys/fs/cgroup/x", "w")])],
    ids=["empty", "webapp", "broad"])
def test_docker_default_denies_are_covered(trace: Trace) -> None:
    """Each deny of docker-default holds in ours: for file rules, on sample paths it matches."""
    assert_covers_docker(profile_of(trace, "anything"))


def test_container_default_is_generated_and_covers_docker() -> None:
    text = default.APPARMOR_OUTPUT.read_text()
    assert text == apparmor.generate_default()
    apparmor_validate.validate(text)
    assert_covers_docker(apparmor_read.parse(text))


def assert_covers_docker(ours: ParsedProfile) -> None:
    for rule in docker_default().files:
        if not rule.deny:
            continue
        samples = examples(rule.pattern)
        assert samples and all(rule.matches(p) for p in samples), rule.text
        for path, letter in itertools.product(samples, sorted(rule.perms)):
            verdict = apparmor_check.file_verdict(ours, path, letter)
            assert verdict is not None and verdict.startswith("denied by"), (rule.text, path)
    for net in docker_default().network:
        if net.deny:
            assert any(r.deny and r.family in ("", net.family) and r.sock_type in (
                "", net.sock_type) for r in ours.network), net.text
    for other in docker_default().other:
        if other.deny:
            assert other.text in {r.text for r in ours.other if r.deny}, other.text
    assert not [c for c in docker_default().capabilities if c.deny]  # none to compare today
