"""The scan as people read it (a table) and as programs read it (JSON). Every value from
the SBOM, the feed or a VEX document goes through `printable`: a package name or a
description may carry escape sequences a terminal would act on."""

from __future__ import annotations

from typing import Any

from hardhost.advisories.scan import Finding, ScanResult
from hardhost.core.outputs import printable

_COLUMNS = ("ID", "SOURCE", "INSTALLED", "FIXED", "URGENCY", "STATE")
_MAX_CELL = 40
_MAX_NOTE = 100  # a waiver's justification or statement, cut only when it runs long


def _cell(text: str, limit: int = _MAX_CELL) -> str:
    shown = printable(text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _row(finding: Finding) -> tuple[str, ...]:
    return (finding.id, finding.source, finding.source_version,
            finding.fixed_version or "(none)", str(finding.urgency), str(finding.state))


def _table(findings: list[Finding], note: dict[str, str]) -> list[str]:
    rows = [(*(_cell(c) for c in _row(f)), _cell(note.get(f.id + f.source, ""), _MAX_NOTE))
            for f in findings]
    header = (*_COLUMNS, "NOTE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def table(result: ScanResult) -> str:
    """The findings in four groups: failing the policy, other counting ones, shown apart
    (unimportant, no DSA) and waived; then a summary line."""
    policy = result.policy
    failing = result.failing()
    notes = {f.id + f.source: "; ".join(filter(None, (
        f.minor, f.waiver.reason() if f.waiver else ""))) for f in result.findings}
    groups: tuple[tuple[str, list[Finding]], ...] = (
        ("Fails the policy", failing),
        ("Other findings (do not fail this policy)",
         [f for f in result.findings if not f.waived and not f.minor and f not in failing]),
        ("Shown apart: unimportant, or no DSA (never fail)",
         [f for f in result.findings if f.minor and not f.waived]),
        ("Waived by VEX", [f for f in result.findings if f.waived]),
    )
    lines: list[str] = []
    for title, findings in groups:
        if findings:
            lines += [f"{title}:", *("  " + line for line in _table(findings, notes)), ""]
    counts = result.counts()
    feed = result.feed
    lines.append(
        f"{printable(result.inventory.origin)}: {len(result.inventory.packages)} packages of "
        f"Debian {printable(result.inventory.release)}; feed sha256:{feed.sha256[:16]}… of "
        f"{feed.date}; {counts['affected']} fixable, {counts['unfixed']} unfixed, "
        f"{counts['undetermined']} undetermined, {counts['minor']} minor, {counts['waived']} "
        f"waived; {policy.describe()}: {'FAIL' if failing else 'pass'} "
        f"({counts['failing']} failing)")
    for waiver in result.unused_waivers:
        lines.append(f"unused waiver: {printable(waiver.origin)} matches no finding")
    return "\n".join(lines)


def finding_dict(finding: Finding, result: ScanResult) -> dict[str, Any]:
    return {
        "id": finding.id,
        "source": finding.source,
        "source_version": finding.source_version,
        "packages": [{"name": p.name, "version": p.version, "purl": p.purl}
                     for p in finding.packages],
        "state": str(finding.state),
        "fixed_version": finding.fixed_version,
        "urgency": str(finding.urgency),
        "minor": finding.minor,
        "nodsa": finding.nodsa,
        "fails": finding.fails(result.policy),
        "waiver": None if finding.waiver is None else {
            "status": str(finding.waiver.status), "justification": finding.waiver.justification,
            "impact_statement": finding.waiver.impact_statement,
            "action_statement": finding.waiver.action_statement,
            "waives": finding.waiver.waives, "origin": finding.waiver.origin},
        "description": finding.description,
        "url": finding.url,
    }


def to_json(result: ScanResult) -> dict[str, Any]:
    feed = result.feed
    return {
        "sbom": result.inventory.origin,
        "release": result.inventory.release,
        "packages": len(result.inventory.packages),
        "feed": {"path": feed.path, "sha256": feed.sha256, "date": feed.date,
                 "size": feed.size, "source_packages": feed.sources},
        "policy": {"fail_on": str(result.policy.fail_on),
                   "fail_unfixed": result.policy.fail_unfixed},
        "passed": result.passed,
        "counts": result.counts(),
        "findings": [finding_dict(f, result) for f in result.findings],
        "unused_waivers": [w.origin for w in result.unused_waivers],
    }
