"""SARIF 2.1.0 (OASIS) for code-scanning tools: one rule per issue id, one result per
finding located at the SBOM, with the package URLs as logical locations. A waived finding
is a result with an accepted external suppression carrying its justification, so that it
stays visible; minor findings are notes, findings that fail the policy are errors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hardhost.advisories.scan import Finding, ScanResult
from hardhost.core.outputs import printable

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_MAX_TEXT = 1000


def _level(finding: Finding, result: ScanResult) -> str:
    if finding.fails(result.policy):
        return "error"
    return "note" if finding.minor or finding.waived else "warning"


def _message(finding: Finding) -> str:
    fixed = (f"fixed in {finding.fixed_version}" if finding.fixed_version
             else "no fix in Debian yet")
    packages = ", ".join(p.name for p in finding.packages)
    return printable(f"{finding.id}: source package {finding.source} "
                     f"{finding.source_version} ({packages}) is {finding.state}, {fixed}; "
                     f"urgency {finding.urgency}" + (f"; {finding.minor}" if finding.minor
                                                     else ""))


def sarif(result: ScanResult, *, tool_version: str) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    sbom_uri = Path(result.inventory.origin).name
    for finding in result.findings:
        if finding.id not in rules:
            first_line = (finding.description.strip().splitlines() or [finding.id])[0]
            rules[finding.id] = {
                "id": finding.id,
                "shortDescription": {"text": printable(first_line)[:_MAX_TEXT]},
                "fullDescription": {"text": printable(finding.description or finding.id)
                                    [:_MAX_TEXT]},
                "helpUri": finding.url,
                "properties": {"tags": ["security", "vulnerability", "debian"]},
            }
        entry: dict[str, Any] = {
            "ruleId": finding.id,
            "ruleIndex": list(rules).index(finding.id),  # at most a few hundred rules
            "level": _level(finding, result),
            "message": {"text": _message(finding)},
            "locations": [{
                # Code-scanning tools place a result on a line; the SBOM names the packages.
                "physicalLocation": {"artifactLocation": {"uri": sbom_uri},
                                     "region": {"startLine": 1}},
                "logicalLocations": [{"fullyQualifiedName": printable(p.purl),
                                      "kind": "package"} for p in finding.packages],
            }],
            "partialFingerprints": {"hardhostFinding/v1": hashlib.sha256(
                f"{finding.id}\0{finding.source}".encode()).hexdigest()},
            "properties": {"state": str(finding.state), "urgency": str(finding.urgency),
                           "installedSourceVersion": printable(finding.source_version),
                           "fixedVersion": printable(finding.fixed_version)},
        }
        if finding.waived and finding.waiver is not None:
            entry["suppressions"] = [{"kind": "external", "status": "accepted",
                                      "justification": printable(finding.waiver.reason()),
                                      "location": {"physicalLocation": {"artifactLocation": {
                                          "uri": printable(finding.waiver.origin.split(":")[0])
                                      }}}}]
        results.append(entry)
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "hardhost", "version": tool_version,
                                "informationUri": "https://security-tracker.debian.org/tracker/",
                                "rules": list(rules.values())}},
            "results": results,
            "properties": {"feedSha256": result.feed.sha256, "feedDate": result.feed.date,
                           "release": result.inventory.release,
                           "policy": result.policy.describe(), "passed": result.passed},
        }],
    }
