"""Attestation results as data: findings with component-qualified ids, merged into a verdict."""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hardhost.core.outputs import printable


class Severity(enum.StrEnum):
    CRITICAL = "critical"  # the boot chain itself: verity, kernel, command line, root mount
    HIGH = "high"  # a hardening control: sysctls, AppArmor, sshd, seccomp, userns
    MEDIUM = "medium"  # runtime drift inside an allowed area, such as /etc changes
    INFO = "info"  # recorded for people; never makes a host fail


@dataclass(frozen=True)
class Finding:
    id: str  # component-qualified, e.g. "sysctl.kernel.kptr_restrict", "overlay.etc.modified"
    severity: Severity
    expected: str
    observed: str

    def counts(self) -> bool:
        return self.severity is not Severity.INFO


@dataclass(frozen=True)
class Verdict:
    host: str
    boot_id: str
    time: str
    manifest_digest: str
    findings: tuple[Finding, ...] = ()
    error: str = ""  # set when the host could not be attested at all
    exit_code: int = field(default=0)
    # How the host was reached (user@address:port), when `host` is a name of its own, such as
    # an inventory name: ten hosts behind one address stay apart by name.
    address: str = ""
    # The version of the image the host was attested against ("" for an error, or an image
    # built before images had versions): on a pass, the version the host runs.
    image_version: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        return "drift" if any(f.counts() for f in self.findings) else "pass"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(verdict: Verdict) -> str:
    """A readable table for people. Everything that came from the host goes through
    `printable`: an escape sequence in a finding must not erase the lines above it."""
    address = f" ({printable(verdict.address)})" if verdict.address else ""
    lines = [f"{printable(verdict.host)}{address}: {verdict.status.upper()}  "
             f"boot_id {printable(verdict.boot_id) or '-'}  at {printable(verdict.time)}"]
    if verdict.error:
        lines.append(f"  error: {printable(verdict.error)}")
    shown = [f for f in verdict.findings if f.counts()]
    if shown:
        ids = [printable(f.id) for f in shown]
        width = max(len(i) for i in ids)
        lines.append(f"  {'finding'.ljust(width)}  severity  expected -> observed")
        for finding_id, f in zip(ids, shown, strict=True):
            lines.append(f"  {finding_id.ljust(width)}  {f.severity.value:<8}  "
                         f"{_short(f.expected)} -> {_short(f.observed)}")
    elif not verdict.error:
        lines.append("  every expected fact holds")
    return "\n".join(lines)


def _short(value: str, width: int = 60) -> str:
    # Escaped before flattening: str.split() would silently drop \x0b, \x0c and \x1c-\x1f.
    flat = " ".join(printable(value).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
