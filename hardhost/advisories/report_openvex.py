"""OpenVEX 0.2 of what the scan found: one statement per finding, for the image's binary
packages by purl. A waived finding carries its waiver's status and justification; every
other finding is `affected`, with what to do about it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hardhost.advisories.scan import Finding, ScanResult
from hardhost.advisories.vex import CONTEXT, VexStatus


def _statement(finding: Finding) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "vulnerability": {"@id": finding.url, "name": finding.id},
        "products": [{"@id": p.purl} for p in finding.packages],
    }
    waiver = finding.waiver
    if waiver is not None and waiver.status is not VexStatus.AFFECTED:
        statement["status"] = str(waiver.status)
        if waiver.justification:
            statement["justification"] = waiver.justification
        if waiver.impact_statement:
            statement["impact_statement"] = waiver.impact_statement
        statement["status_notes"] = f"waived by {waiver.origin}"
        return statement
    statement["status"] = str(VexStatus.AFFECTED)
    statement["action_statement"] = (
        f"Rebuild the image with Debian's {finding.source} {finding.fixed_version} or later"
        if finding.fixed_version else
        f"No fix in Debian yet ({finding.state}); follow {finding.url}")
    if finding.minor:
        statement["status_notes"] = f"Debian: {finding.minor}"
    return statement


def openvex(result: ScanResult, *, timestamp: str) -> dict[str, Any]:
    """The document, its @id derived from its statements and the feed, so the same scan
    gives the same id."""
    statements = [_statement(f) for f in result.findings]
    digest = hashlib.sha256(json.dumps([statements, result.feed.sha256],
                                       sort_keys=True).encode()).hexdigest()
    return {
        "@context": CONTEXT,
        "@id": f"urn:hardhost:scan:{digest}",
        "author": "hardhost scan",
        "role": "tool",
        "timestamp": timestamp,
        "version": 1,
        "tooling": f"hardhost scan against Debian security tracker data sha256:"
                   f"{result.feed.sha256} of {result.feed.date}",
        "statements": statements,
    }
