"""Matching: each source package of the image against Debian's issues for it, in Debian's
version order, then the policy that decides which findings fail.

A finding is one issue of one source package, with the binary packages of the image built
from it. Versions are compared with python-debian's `Version` (dpkg's order: epochs, `~`
before anything, letters before non-letters), never as strings.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from debian.debian_support import Version

from hardhost.advisories.feed import Advisory, Feed, Status, Urgency
from hardhost.advisories.releases import distro
from hardhost.advisories.sbom_read import ImagePackage, Inventory
from hardhost.advisories.vex import Waiver
from hardhost.image.manifest import ADVISORY_KEYS


class State(StrEnum):
    AFFECTED = "affected"  # Debian has a fix; the image's source version is older
    UNFIXED = "unfixed"  # open: no fix in the release yet
    UNDETERMINED = "undetermined"  # Debian has not yet said whether the release is affected


class Level(StrEnum):
    """`--fail-on`: the lowest urgency that fails."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    NEVER = "never"


# Urgencies ranked against `Level`. One Debian has not assigned (most issues of a stable
# release) or cannot give ranks with high: untriaged is not minor, and a gate must not pass
# an image because nobody has looked yet.
_RANK: Mapping[Urgency, int] = {
    Urgency.UNIMPORTANT: 0, Urgency.LOW: 1, Urgency.MEDIUM: 2, Urgency.HIGH: 3,
    Urgency.NOT_YET_ASSIGNED: 3, Urgency.UNKNOWN: 3, Urgency.END_OF_LIFE: 3,
}
_THRESHOLD: Mapping[Level, int] = {Level.LOW: 1, Level.MEDIUM: 2, Level.HIGH: 3,
                                   Level.NEVER: 4}


@dataclass(frozen=True)
class Policy:
    fail_on: Level = Level.LOW
    # Open and undetermined issues have no fix to take: they fail only when asked.
    fail_unfixed: bool = False

    def describe(self) -> str:
        if self.fail_on is Level.NEVER:
            return "never fail"
        what = "fixable or unfixed" if self.fail_unfixed else "fixable"
        return f"fail on {what} issues of urgency {self.fail_on} or above"


@dataclass(frozen=True)
class Finding:
    id: str
    source: str
    source_version: str
    packages: tuple[ImagePackage, ...]
    state: State
    fixed_version: str  # "" when Debian has none yet
    urgency: Urgency
    # Why the finding is shown apart and never fails: "unimportant" (Debian's urgency), or
    # "no DSA: postponed" and the like for an unfixed issue Debian will not fix by advisory.
    minor: str
    nodsa: str
    description: str
    waiver: Waiver | None = None

    @property
    def waived(self) -> bool:
        return self.waiver is not None and self.waiver.waives

    def fails(self, policy: Policy) -> bool:
        if self.waived or self.minor:
            return False
        if self.state is not State.AFFECTED and not policy.fail_unfixed:
            return False
        return _RANK[self.urgency] >= _THRESHOLD[policy.fail_on]

    @property
    def url(self) -> str:
        return f"https://security-tracker.debian.org/tracker/{self.id}"


@dataclass(frozen=True)
class ScanResult:
    inventory: Inventory
    feed: Feed
    policy: Policy
    findings: tuple[Finding, ...]
    unused_waivers: tuple[Waiver, ...] = field(default=())

    def failing(self) -> list[Finding]:
        return [f for f in self.findings if f.fails(self.policy)]

    @property
    def passed(self) -> bool:
        return not self.failing()

    def counts(self) -> dict[str, int]:
        counted = [f for f in self.findings if not f.waived and not f.minor]
        return {
            "affected": sum(f.state is State.AFFECTED for f in counted),
            "unfixed": sum(f.state is State.UNFIXED for f in counted),
            "undetermined": sum(f.state is State.UNDETERMINED for f in counted),
            "minor": sum(bool(f.minor) and not f.waived for f in self.findings),
            "waived": sum(f.waived for f in self.findings),
            "failing": len(self.failing()),
        }


def _state(advisory: Advisory, installed: Version) -> State | None:
    """The finding's state for an installed source version, or None when not affected."""
    if advisory.fixed_version == "0":
        return None  # the release never had the vulnerable code
    if advisory.fixed_version:
        if installed >= Version(advisory.fixed_version):
            return None
        return State.AFFECTED
    return State.UNDETERMINED if advisory.status is Status.UNDETERMINED else State.UNFIXED


def _minor(advisory: Advisory, state: State) -> str:
    if advisory.urgency is Urgency.UNIMPORTANT:
        return "unimportant"
    # A no-DSA issue that is fixed (in a point release) is an update the image lacks; one
    # that is not is what Debian decided not to fix by advisory.
    if (advisory.nodsa or advisory.nodsa_reason) and state is not State.AFFECTED:
        return f"no DSA: {advisory.nodsa_reason or 'minor issue'}"
    return ""


def scan(inventory: Inventory, feed: Feed, policy: Policy,
         waivers: Sequence[Waiver] = ()) -> ScanResult:
    """Every issue of `feed` that affects a package of `inventory`, with its waiver."""
    if feed.release != inventory.release:
        raise ValueError(f"feed read for {feed.release}, SBOM of {inventory.release}")
    by_source: defaultdict[tuple[str, str], list[ImagePackage]] = defaultdict(list)
    for package in inventory.packages:
        by_source[package.source, package.source_version].append(package)
    image_distro = distro(inventory.release)
    used: set[int] = set()
    findings: list[Finding] = []
    for (source, source_version), packages in sorted(by_source.items()):
        advisories = feed.of(source)
        if not advisories:
            continue
        installed = Version(source_version)
        for advisory in advisories:
            state = _state(advisory, installed)
            if state is None:
                continue
            waiver = _waiver(advisory.id, packages, waivers, image_distro, used)
            findings.append(Finding(
                advisory.id, source, source_version, tuple(packages), state,
                advisory.fixed_version, advisory.urgency, _minor(advisory, state),
                advisory.nodsa, advisory.description, waiver))
    findings.sort(key=lambda f: (f.source, f.id))
    unused = tuple(w for i, w in enumerate(waivers) if i not in used)
    return ScanResult(inventory, feed, policy, tuple(findings), unused)


def _waiver(issue: str, packages: Sequence[ImagePackage], waivers: Sequence[Waiver],
            image_distro: str, used: set[int]) -> Waiver | None:
    """The last statement about `issue` that covers every package built from the source:
    a waiver of libssl3 alone leaves the openssl binary of the same source counting."""
    chosen: Waiver | None = None
    for index, waiver in enumerate(waivers):
        if all(waiver.covers(issue, p, image_distro) for p in packages):
            chosen = waiver
            used.add(index)
    return chosen


def manifest_record(result: ScanResult) -> dict[str, str]:
    """The manifest predicate's `advisories`, keyed by `ADVISORY_KEYS`."""
    counts = result.counts()
    record = {
        "feed_sha256": result.feed.sha256,
        "feed_date": result.feed.date,
        "release": result.inventory.release,
        "fail_on": str(result.policy.fail_on),
        "fail_unfixed": "yes" if result.policy.fail_unfixed else "no",
        **{key: str(value) for key, value in counts.items()},
    }
    assert tuple(record) == ADVISORY_KEYS, "the manifest's keys and the record's differ"
    return record
