"""What the service does to one host: attest it, record the verdict, announce a change of
state, and reset it within the fleet-wide budget when it drifted and the policy allows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from hardhost.core.errors import HardhostError
from hardhost.core.outputs import printable
from hardhost.verifier import fleet
from hardhost.verifier.attestation import Connection
from hardhost.verifier.exposure import Watch
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.service.config import Remediation
from hardhost.verifier.service.metrics import Metrics
from hardhost.verifier.service.state import Change, State
from hardhost.verifier.service.store import Store
from hardhost.verifier.verdict import Verdict

log = logging.getLogger(__name__)
# State changes go to this logger, which the service sends to syslog.
changes_log = logging.getLogger("hardhost.changes")

Loaded = dict[Path, fleet.Loaded | HardhostError]


class Engine:
    def __init__(self, store: Store, conn: Connection, default: Path | None,
                 remediation: Remediation, targets: Sequence[str], *,
                 metrics: Metrics,
                 announce: Callable[[Change], None] = lambda change: None,
                 watch: Watch | None = None) -> None:
        self.store, self.conn, self.default = store, conn, default
        self.remediation, self.targets, self.announce = remediation, tuple(targets), announce
        self.metrics, self.watch = metrics, watch

    def check(self, host: FleetHost, loaded: Loaded, run_id: int) -> Verdict:
        """Attest `host` once and record it in the run (the interval) `run_id`."""
        verdict = fleet.check_host(host, loaded, self.default, self.conn)
        self._record(run_id, verdict)
        self._expose(host, loaded, verdict)
        return verdict

    def _expose(self, host: FleetHost, loaded: Loaded, verdict: Verdict) -> None:
        """A passing host's known vulnerabilities, from its image's SBOM: nothing more runs
        on the host. A host that gained issues is announced like a change of state."""
        if self.watch is None or verdict.status != "pass":
            return
        exposure = self.watch.of(verdict, host.manifest or self.default, loaded)
        gained = self.store.record_exposure(verdict.time, exposure, self.targets)
        if gained:
            changes_log.warning("%s: exposed to %s", printable(verdict.host),
                                ", ".join(printable(issue) for issue in gained))
            # Not a change of state, but an event in the outbox all the same.
            self.announce(Change(State.PASS, State.PASS, "exposed", None))

    def wants_reset(self, verdict: Verdict) -> bool:
        # Only drift is reset: an unreachable host cannot be, and a trust failure (a changed
        # host key, a forged quote) is exactly what a reboot must not paper over.
        return self.remediation.enabled and verdict.status == "drift"

    def reset(self, host: FleetHost, loaded: Loaded, run_id: int) -> Verdict | None:
        """Reset a drifted `host` if the budget allows; the last verdict, or None when the
        budget said no (the host is tried again at its next check)."""
        # A reset whose worker died is given up on once the host had time to come back.
        stale = self.remediation.reset_timeout + 2 * self.conn.timeout + 60
        reset_id = self.store.claim_reset(host.name,
                                          max_concurrent=self.remediation.max_concurrent,
                                          max_per_hour=self.remediation.max_per_hour,
                                          stale_after=stale)
        if reset_id is None:
            log.info("%s: drifted; no reset now (the reset budget is spent)", host.name)
            return None
        log.info("%s: drifted; resetting by reboot", host.name)
        outcome = "failed"
        try:
            before, after = fleet.reset_host(host, loaded, self.default, self.conn,
                                             self.remediation.reset_timeout)
            self._record(run_id, before)
            if after is not None:
                self._record(run_id, after, after_reset=True)
                self._expose(host, loaded, after)
            outcome = (after or before).status
            return after or before
        finally:
            self.store.finish_reset(reset_id, outcome)
            self.metrics.resets.labels(outcome=outcome).inc()

    def _record(self, run_id: int, verdict: Verdict, *, after_reset: bool = False) -> None:
        change = self.store.record(run_id, verdict, self.targets, after_reset=after_reset)
        if change is not None:
            level = logging.INFO if change.state is State.PASS else logging.WARNING
            changes_log.log(level, "%s: %s -> %s%s", printable(verdict.host),
                            change.previous, change.kind,
                            f" ({printable(verdict.error)})" if verdict.error else "")
            if change.remediation_seconds is not None:
                self.metrics.remediated(change.remediation_seconds,
                                        reset=change.kind == "remediated")
            self.announce(change)
