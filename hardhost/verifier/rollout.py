"""`hardhost fleet update`: an update rolled out over an inventory in waves, stopped at the
first wave with more failures than allowed.

A wave is a share of the fleet, given as cumulative counts or percentages (`1,10%,50%,100%`:
one host, then up to a tenth, half, all). The hosts of one wave are updated concurrently;
the next wave starts only when the last host of this one has an outcome. A host's failure is
a rollback (its new boot did not pass) or an error (unreachable, refused, stopped before the
switch). When a wave's failures pass `max_failures`, the hosts after it are left alone and
only attested, so the report still says which version each host runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hardhost.core.errors import HardhostError, UsageError
from hardhost.verifier.attestation import Connection
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.update import Image, Outcome, running_version, update

log = logging.getLogger(__name__)

_WAVE = re.compile(r"([1-9][0-9]{0,6})(%?)")
FAILED_OUTCOMES = ("rolled-back", "error")


@dataclass(frozen=True)
class HostUpdate:
    host: str
    address: str
    wave: int  # 1-based; 0 for hosts no wave reached
    outcome: str  # an Outcome, "error", or "skipped" (not updated: an earlier wave failed)
    version: str  # what the host runs now, "" when unknown
    reason: str = ""  # the error, or why it was rolled back
    exit_code: int = 0

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_waves(text: str) -> list[tuple[int, bool]]:
    """`1,10%,50%,100%` as (number, is_percent) pairs; each wave must reach further than the
    one before, and the last must cover the fleet (100%)."""
    waves = []
    for part in text.split(","):
        match = _WAVE.fullmatch(part.strip())
        if match is None or (match.group(2) and int(match.group(1)) > 100):
            raise UsageError(f"--waves: {part.strip()[:20]!r} is neither a host count nor a "
                             "percentage from 1% to 100%")
        waves.append((int(match.group(1)), bool(match.group(2))))
    if waves[-1] != (100, True):
        raise UsageError("--waves: the last wave must be 100%, so every host is reached")
    return waves


def wave_bounds(waves: Sequence[tuple[int, bool]], total: int) -> list[int]:
    """The cumulative host count at the end of each wave, for a fleet of `total` hosts.
    A percentage rounds up (10% of 5 hosts is one host); empty waves are dropped."""
    bounds: list[int] = []
    for number, percent in waves:
        reach = min(total, math.ceil(total * number / 100) if percent else number)
        if not bounds or reach > bounds[-1]:
            bounds.append(reach)
    return bounds


def parse_max_failures(text: str, wave_size: int) -> int:
    """--max-failures: a count, or a percentage of the wave's hosts."""
    match = re.fullmatch(r"(0|[1-9][0-9]{0,6})(%?)", text.strip())
    if match is None or (match.group(2) and int(match.group(1)) > 100):
        raise UsageError(f"--max-failures: {text.strip()[:20]!r} is neither a count nor a "
                         "percentage")
    number = int(match.group(1))
    return wave_size * number // 100 if match.group(2) else number


def rollout(hosts: Sequence[FleetHost], new: Image, store: Mapping[str, Image],
            conn: Connection, *, waves: Sequence[tuple[int, bool]], max_failures: str,
            forks: int, reboot_timeout: float, allow_downgrade: bool = False,
            on_done: Callable[[HostUpdate], None] | None = None) -> list[HostUpdate]:
    """Update `hosts` to `new` wave by wave; outcomes in inventory order."""
    bounds = wave_bounds(waves, len(hosts))
    results: dict[int, HostUpdate] = {}
    start = 0
    for number, end in enumerate(bounds, 1):
        members = list(range(start, end))
        log.info("Wave %d of %d: %d host%s", number, len(bounds), len(members),
                 "" if len(members) == 1 else "s")

        def one(index: int, wave: int = number) -> HostUpdate:
            return _update_one(hosts[index], wave, new, store, conn, reboot_timeout,
                               allow_downgrade)

        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(members)))) as pool:
            for index, result in zip(members, pool.map(one, members), strict=True):
                results[index] = result
                if on_done is not None:
                    on_done(result)
        failures = sum(results[i].failed for i in members)
        allowed = parse_max_failures(max_failures, len(members))
        start = end
        if failures > allowed:
            log.info("Wave %d: %d failed, more than the %d allowed; stopping", number,
                     failures, allowed)
            break
    rest = list(range(start, len(hosts)))
    if rest:
        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(rest)))) as pool:
            for index, result in zip(rest, pool.map(
                    lambda i: _skipped(hosts[i], store, conn), rest), strict=True):
                results[index] = result
                if on_done is not None:
                    on_done(result)
    return [results[i] for i in range(len(hosts))]


def _error(host: FleetHost, wave: int, exc: Exception) -> HostUpdate:
    code = exc.exit_code if isinstance(exc, HardhostError) else 1
    return HostUpdate(host.name, host.address, wave, "error", "", str(exc), code)


def _update_one(host: FleetHost, wave: int, new: Image, store: Mapping[str, Image],
                conn: Connection, reboot_timeout: float,
                allow_downgrade: bool) -> HostUpdate:
    if host.error or host.target is None:
        return HostUpdate(host.name, host.address, wave, "error", "",
                          host.error or f"{host.name}: no target", UsageError.exit_code)
    try:
        result = update(host.target, new, store,
                        dataclasses.replace(conn, identity=host.identity or conn.identity),
                        allow_downgrade=allow_downgrade, reboot_timeout=reboot_timeout)
    except Exception as exc:  # one host's failure, whatever it is, is that host's outcome
        log.debug("%s: update failed", host.name, exc_info=True)
        return _error(host, wave, exc)
    return HostUpdate(host.name, host.address, wave, str(result.outcome), result.version,
                      result.reason, 1 if result.outcome is Outcome.ROLLED_BACK else 0)


def _skipped(host: FleetHost, store: Mapping[str, Image], conn: Connection) -> HostUpdate:
    """A host no wave reached: untouched, and attested only to learn its version."""
    if host.error or host.target is None:
        return HostUpdate(host.name, host.address, 0, "skipped", "", host.error)
    try:
        version = running_version(
            host.target, store, dataclasses.replace(conn, identity=host.identity or
                                                    conn.identity, tpm=None))
    except HardhostError as exc:
        return HostUpdate(host.name, host.address, 0, "skipped", "", str(exc))
    return HostUpdate(host.name, host.address, 0, "skipped", version)


def exit_code(results: Sequence[HostUpdate]) -> int:
    """0 when every host is updated (or already current), else the worst: a host's error code,
    or 1 for a rollback or hosts left alone after a failed wave."""
    codes = [r.exit_code for r in results if r.outcome == "error"]
    if codes:
        return max(codes)
    return 1 if any(r.outcome in ("rolled-back", "skipped") for r in results) else 0
