"""The build's gate: scan an image's packages before its manifest is signed. A failing
image is a `BuildError`, so the build writes nothing; a passing one gets its record in the
signed manifest."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hardhost.advisories.feed import Feed, read_feed
from hardhost.advisories.sbom_read import Inventory
from hardhost.advisories.scan import Policy, ScanResult, manifest_record, scan
from hardhost.advisories.vex import Waiver, read_vex
from hardhost.core.errors import BuildError
from hardhost.core.outputs import printable

log = logging.getLogger(__name__)

_NAMED = 5  # failing findings named in the one-line error; the count says the rest


@dataclass(frozen=True)
class Gate:
    feed: Feed  # every source package's issues in the image's release
    policy: Policy
    waivers: tuple[Waiver, ...] = ()


def load_gate(feed: Path, *, release: str, policy: Policy, vex: Sequence[Path] = (),
              sha256: str | None = None, date: dt.datetime | None = None) -> Gate:
    """Read and check the feed and the waivers before the build starts: a malformed one is
    exit 2 at once, not after the build's minutes."""
    waivers = read_vex(vex)
    return Gate(read_feed(feed, release=release, sha256=sha256, date=date), policy, waivers)


def decide(gate: Gate, inventory: Inventory) -> ScanResult:
    """Scan `inventory`; a result that fails the policy is a `BuildError` naming the
    findings, one that passes is returned (`record` gives what the manifest signs)."""
    result = scan(inventory, gate.feed, gate.policy, gate.waivers)
    failing = result.failing()
    counts = result.counts()
    if failing:
        named = ", ".join(
            f"{f.id} ({printable(f.source)} {printable(f.source_version)}"
            + (f" < {printable(f.fixed_version)}" if f.fixed_version else f", {f.state}") + ")"
            for f in failing[:_NAMED])
        more = f" and {len(failing) - _NAMED} more" if len(failing) > _NAMED else ""
        raise BuildError(
            f"{len(failing)} known vulnerabilities fail the policy ({gate.policy.describe()}; "
            f"feed sha256:{gate.feed.sha256[:16]}… of {gate.feed.date}): {named}{more}; "
            "nothing was signed or written. Take Debian's fixes by removing the cached "
            "bootstrap (~/.cache/hardhost/bootstrap, reused until the spec changes) and "
            "building again, waive what does not apply with --vex, or list them all with "
            "hardhost scan")
    log.info("Known vulnerabilities: %d fixable, %d unfixed, %d minor, %d waived; %s: pass",
             counts["affected"], counts["unfixed"] + counts["undetermined"], counts["minor"],
             counts["waived"], gate.policy.describe())
    # A waiver is a decision someone made: the build says which ones it relied on, and why.
    for finding in result.findings:
        if finding.waiver is not None and finding.waived:
            waiver = finding.waiver
            log.warning("%s (%s %s): waived by %s: %s%s", printable(finding.id),
                        printable(finding.source), printable(finding.source_version),
                        printable(waiver.origin), waiver.status,
                        f", {printable(waiver.justification)}" if waiver.justification
                        else "")
    return result


def record(result: ScanResult) -> dict[str, str]:
    return manifest_record(result)
