"""JUnit XML for CI: one test case per finding (classname the source package, name the
issue id); a finding that fails the policy is a failure, the others are skipped with why.
An image with no findings still has one passing case, so a CI sees the scan ran."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hardhost.advisories.scan import ScanResult
from hardhost.core.outputs import printable


def junit(result: ScanResult) -> bytes:
    failing = result.failing()
    findings = result.findings
    suite = ET.Element("testsuite", name="hardhost-scan", tests=str(max(len(findings), 1)),
                       failures=str(len(failing)), errors="0",
                       skipped=str(len(findings) - len(failing)))
    properties = ET.SubElement(suite, "properties")
    for name, value in (("feed_sha256", result.feed.sha256), ("feed_date", result.feed.date),
                        ("release", result.inventory.release),
                        ("policy", result.policy.describe())):
        ET.SubElement(properties, "property", name=name, value=printable(value))
    if not findings:
        ET.SubElement(suite, "testcase", classname="hardhost.scan", name="no known issues")
    for finding in findings:
        case = ET.SubElement(suite, "testcase", classname=printable(finding.source),
                             name=printable(finding.id))
        summary = (f"{finding.state} in {printable(finding.source_version)}, fixed in "
                   f"{printable(finding.fixed_version or '(none)')}, urgency {finding.urgency}")
        if finding in failing:
            failure = ET.SubElement(case, "failure", message=summary, type=str(finding.state))
            failure.text = printable(f"{finding.url}\n{finding.description}",
                                     keep_newlines=True)
        else:
            why = (finding.waiver.reason() if finding.waived and finding.waiver
                   else finding.minor or "below the policy")
            ET.SubElement(case, "skipped", message=printable(f"{why}; {summary}"))
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data
