"""Which hosts are exposed to known vulnerabilities, and to which, without running anything
more on them. A host that passed attestation runs the image its signed manifest describes;
that image's SBOM, beside the manifest and equal to the digest the manifest signs, is
scanned against the feed. A host that did not pass proves no image, so its exposure is
unknown, never "clear"."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardhost.advisories.feed import read_feed
from hardhost.advisories.sbom_read import read_sbom, sbom_path
from hardhost.advisories.scan import Policy, ScanResult, scan
from hardhost.advisories.vex import Waiver
from hardhost.core.errors import HardhostError
from hardhost.core.outputs import printable
from hardhost.verifier.fleet import Loaded
from hardhost.verifier.verdict import Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exposure:
    """One host's known vulnerabilities, as far as its attestation proves its image."""

    host: str
    proven: bool  # the host passed: it runs `image`
    image: str = ""  # the manifest's name and version
    failing: tuple[str, ...] = ()  # issue ids that fail the policy
    counts: Mapping[str, int] | None = None
    reason: str = ""  # why nothing is proven, or why the image could not be scanned

    def to_dict(self) -> dict[str, Any]:
        return {"proven": self.proven, "image": self.image, "failing": list(self.failing),
                "counts": dict(self.counts or {}), "reason": self.reason}


@dataclass(frozen=True)
class FeedPolicy:
    """The feed, the policy and the waivers an exposure is judged by."""

    feed: Path
    policy: Policy
    waivers: tuple[Waiver, ...] = ()
    sha256: str | None = None
    date: dt.datetime | None = None


def assess(verdicts: Sequence[Verdict], manifest_of: Mapping[str, Path],
           loaded: Mapping[Path, Loaded | HardhostError],
           advisories: FeedPolicy) -> list[Exposure]:
    """Each host's exposure. `manifest_of` names the manifest each host was attested
    against; each distinct image is scanned once."""
    scanned: dict[Path, ScanResult | HardhostError] = {}

    def scanned_once(path: Path, entry: Loaded) -> ScanResult | HardhostError:
        if path not in scanned:
            scanned[path] = _scan_image(path, entry, advisories)
        return scanned[path]

    return [exposure_of(v, manifest_of.get(v.host), loaded, scanned_once) for v in verdicts]


def exposure_of(verdict: Verdict, path: Path | None,
                loaded: Mapping[Path, Loaded | HardhostError],
                scanned: Callable[[Path, Loaded], ScanResult | HardhostError]) -> Exposure:
    """One host's exposure, its image scanned by `scanned`."""
    entry = loaded.get(path) if path is not None else None
    if verdict.status != "pass" or path is None or not isinstance(entry, Loaded):
        return Exposure(verdict.host, False, reason=(
            f"not attested as passing ({verdict.status}): no image is proven"))
    image = f"{entry.manifest.name} {entry.manifest.version}".strip()
    if verdict.manifest_digest != entry.digest:
        return Exposure(verdict.host, False, image,
                        reason="attested against another manifest than the one named")
    result = scanned(path, entry)
    if isinstance(result, HardhostError):
        return Exposure(verdict.host, True, image, reason=str(result))
    return Exposure(verdict.host, True, image, tuple(f.id for f in result.failing()),
                    result.counts())


class Watch:
    """The service's exposure check: each image scanned once per version of the feed, and
    the feed read again when its file changes (a job of its own downloads it), so a new
    advisory shows at each host's next passing attestation."""

    def __init__(self, advisories: FeedPolicy) -> None:
        self.advisories = advisories
        self.lock = threading.Lock()
        self.feed_version: tuple[int, int] | None = None
        self.scanned: dict[tuple[Path, str], ScanResult | HardhostError] = {}

    def of(self, verdict: Verdict, path: Path | None,
           loaded: Mapping[Path, Loaded | HardhostError]) -> Exposure:
        return exposure_of(verdict, path, loaded, self._scanned)

    def _scanned(self, path: Path, entry: Loaded) -> ScanResult | HardhostError:
        with self.lock:  # hosts are checked on many threads; an image is scanned once
            try:
                stat = self.advisories.feed.stat()
                version = (stat.st_mtime_ns, stat.st_size)
            except OSError as exc:
                return HardhostError(f"{self.advisories.feed}: cannot read the feed: "
                                     f"{exc.strerror}")
            if version != self.feed_version:
                self.feed_version, self.scanned = version, {}
            key = (path, entry.digest)
            if key not in self.scanned:
                self.scanned[key] = _scan_image(path, entry, self.advisories)
            return self.scanned[key]


def _scan_image(manifest: Path, entry: Loaded, advisories: FeedPolicy
                ) -> ScanResult | HardhostError:
    """The scan of the SBOM beside `manifest`, once it equals the digest the manifest
    signs; a failure is returned, so that one image's cannot hide the others'."""
    path = sbom_path(manifest.parent)
    try:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise HardhostError(f"{path}: cannot read the image's SBOM: "
                                f"{exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != entry.manifest.sbom_digest:
            raise HardhostError(f"{path}: not the SBOM the manifest signs (sha256 differs)")
        inventory = read_sbom(path)
        feed = read_feed(advisories.feed, release=inventory.release,
                         wanted=inventory.sources(), sha256=advisories.sha256,
                         date=advisories.date)
        return scan(inventory, feed, advisories.policy, advisories.waivers)
    except HardhostError as exc:
        log.error("%s", exc)
        return exc


def render(exposures: Sequence[Exposure]) -> str:
    """One line per host: exposed (with the first issue ids), clear, or unknown and why."""
    if not exposures:
        return ""
    names = [printable(e.host) for e in exposures]
    images = [printable(e.image) or "-" for e in exposures]
    width, image_width = max(map(len, names)), max(map(len, images))
    lines = []
    for name, image, exposure in zip(names, images, exposures, strict=True):
        if not exposure.proven or exposure.counts is None:
            state, detail = "unknown", printable(exposure.reason)
        elif exposure.failing:
            state = "exposed"
            detail = ", ".join(printable(i) for i in exposure.failing[:4]) + (
                f" and {len(exposure.failing) - 4} more" if len(exposure.failing) > 4 else "")
        else:
            state, detail = "clear", ""
        lines.append(f"{name.ljust(width)}  {image.ljust(image_width)}  {state:<7}  "
                     f"{detail}".rstrip())
    return "\n".join(lines)
