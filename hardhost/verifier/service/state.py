"""A host's state as the service tracks it, and the one rule for moving between states.

An alert is sent on a change of state, never on an attestation that changes nothing: a
host drifted for a day is one event, not 1,440. A host seen for the first time that passes
is no news; one that fails on first sight is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from hardhost.core.errors import TrustError, Unreachable
from hardhost.verifier.verdict import Verdict

# How many finding ids an event names; the rest are counted.
EVENT_FINDINGS = 20


class State(enum.StrEnum):
    UNKNOWN = "unknown"  # listed, never attested yet
    PASS = "pass"
    DRIFT = "drift"
    UNREACHABLE = "unreachable"
    TRUST = "trust"  # a changed host key, a bad quote: a person must look (never reset)
    ERROR = "error"  # the host's own configuration (inventory variables, its manifest)


@dataclass(frozen=True)
class HostState:
    state: State
    failing_since: float | None  # when the current run of failing attestations began
    reset_in_episode: bool  # the service reset the host since it last passed


@dataclass(frozen=True)
class Change:
    previous: State
    state: State
    kind: str  # the state's name, or "remediated": a pass after the service's reset
    remediation_seconds: float | None  # first failing attestation to this pass

    def event(self, verdict: Verdict) -> dict[str, Any]:
        """The JSON event of this change, as webhooks receive it."""
        ids = [f.id for f in verdict.findings if f.counts()]
        return {"event": self.kind, "host": verdict.host, "address": verdict.address,
                "previous": self.previous.value, "state": self.state.value,
                "time": verdict.time, "image_version": verdict.image_version,
                "boot_id": verdict.boot_id, "findings": ids[:EVENT_FINDINGS],
                "findings_total": len(ids), "error": verdict.error,
                "remediation_seconds": self.remediation_seconds}


def classify(verdict: Verdict) -> State:
    if verdict.status == "pass":
        return State.PASS
    if verdict.status == "drift":
        return State.DRIFT
    if verdict.exit_code == Unreachable.exit_code:
        return State.UNREACHABLE
    if verdict.exit_code == TrustError.exit_code:
        return State.TRUST
    return State.ERROR


def transition(before: HostState, observed: State, now: float, *,
               after_reset: bool = False) -> tuple[HostState, Change | None]:
    """The host's state after an attestation that found `observed` at `now`, and the change
    to announce (None when there is none). `after_reset`: the attestation that ends a reset
    by the service."""
    if observed is State.PASS:
        after = HostState(State.PASS, None, False)
    else:
        since = before.failing_since if before.failing_since is not None else now
        after = HostState(observed, since, before.reset_in_episode or after_reset)
    if observed is before.state or (before.state is State.UNKNOWN and observed is State.PASS):
        return after, None
    seconds = None
    kind = observed.value
    if observed is State.PASS and before.failing_since is not None:
        seconds = round(now - before.failing_since, 3)
        if before.reset_in_episode or after_reset:
            kind = "remediated"
    return after, Change(before.state, observed, kind, seconds)
