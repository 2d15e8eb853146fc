"""The offline check of an AppArmor profile against a trace: which recorded event, if any,
the profile read back would deny. Deny rules win, as in the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator

from hardhost.profiles.apparmor_read import ParsedProfile
from hardhost.profiles.apparmor_rules import SOCK_TYPE_NUMBERS
from hardhost.profiles.apparmor_syntax import filter_slashes
from hardhost.profiles.trace import Trace


def kernel_path(path: str) -> str:
    """The path AppArmor sees for a trace path: /proc/self and /proc/thread-self name a PID."""
    for link, target in (("/proc/self", "/proc/1"), ("/proc/thread-self", "/proc/1/task/1")):
        if path == link or path.startswith(link + "/"):
            path = target + path[len(link):]
    return filter_slashes(path)


def _covers(granted: frozenset[str], letter: str) -> bool:
    return letter in granted or (letter == "a" and "w" in granted)


def file_verdict(profile: ParsedProfile, path: str, letter: str) -> str | None:
    """None if the profile allows `letter` on `path`, else why not; deny rules win."""
    seen = kernel_path(path)
    for rule in profile.files:
        if rule.deny and _covers(rule.perms, letter) and rule.matches(seen):
            return f"denied by line {rule.line} ({rule.text})"
    if any(not rule.deny and _covers(rule.perms, letter) and rule.matches(seen)
           for rule in profile.files):
        return None
    return "no rule allows it"


def network_verdict(profile: ParsedProfile, family: str, sock_type: str) -> str | None:
    named = SOCK_TYPE_NUMBERS.get(sock_type, sock_type)
    for rule in profile.network:
        # An event of unknown type meets every deny of its family: the check stays sound.
        if rule.deny and rule.family in ("", family) and (
                not rule.sock_type or not named or rule.sock_type == named):
            return f"denied by line {rule.line} ({rule.text})"
    if any(not rule.deny and rule.family in ("", family) and rule.sock_type in ("", named)
           for rule in profile.network):
        return None
    return "no rule allows it"


def capability_verdict(profile: ParsedProfile, name: str) -> str | None:
    canonical = name.lower().removeprefix("cap_")
    for rule in profile.capabilities:
        if rule.deny and (not rule.names or canonical in rule.names):
            return f"denied by line {rule.line} ({rule.text})"
    if any(not rule.deny and (not rule.names or canonical in rule.names)
           for rule in profile.capabilities):
        return None
    return "no rule allows it"


def _events(profile: ParsedProfile, trace: Trace) -> Iterator[tuple[str, str | None]]:
    """Each recorded event, described, with the profile's verdict on it."""
    for path in trace.executables:
        shown = path if path.isprintable() else repr(path)
        yield f"exec {shown}", file_verdict(profile, path, "x")
    for access in trace.files:
        shown = access.path if access.path.isprintable() else repr(access.path)
        for letter in access.mode:
            yield f"file {shown} ({letter})", file_verdict(profile, access.path, letter)
    for socket in trace.sockets:
        yield (f"socket {socket.family} {socket.sock_type or '(any type)'}",
               network_verdict(profile, socket.family, socket.sock_type))
    for call in trace.network:
        where = f" {call.address}:{call.port}" if call.address or call.port else ""
        yield (f"{call.call} {call.family} {call.sock_type or '(any type)'}{where}",
               network_verdict(profile, call.family, call.sock_type))
    for capability in trace.capabilities:
        yield f"capability {capability}", capability_verdict(profile, capability)


def first_denied(profile: ParsedProfile, trace: Trace) -> str | None:
    """The first recorded event the profile would deny, as one line, or None if all pass.

    Events go in this order: programs run, file accesses (one per permission letter),
    sockets, network calls, capabilities.
    """
    for event, verdict in _events(profile, trace):
        if verdict is not None:
            return f"{event}: {verdict}"
    return None
