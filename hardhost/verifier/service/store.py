"""The service's database: each host's current state, every verdict, drift episodes, the
reset budget and the alert outbox.

SQLite is the embedded default, PostgreSQL the database several workers share
(`hardhost.verifier.database`). Verdicts go into the `runs` and `results` tables of
the fleet's history, so `hardhost history --db` reads a service's SQLite database as it
reads a fleet's; each run is one interval.
Every write that decides something (a state change and its event, a reset taken from the
budget) is one transaction: two threads never send one change twice or overspend the budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardhost.core.outputs import check_output_file
from hardhost.verifier import history
from hardhost.verifier.database import Database, is_postgres
from hardhost.verifier.exposure import Exposure
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.service.state import Change, HostState, State, classify, transition
from hardhost.verifier.verdict import Verdict

SCHEMA = "PRAGMA journal_mode=WAL;\n" + history.SCHEMA + """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    groups TEXT NOT NULL,
    state TEXT NOT NULL,
    image_version TEXT NOT NULL,
    last_time TEXT NOT NULL,
    last_pass TEXT NOT NULL,
    failing_since DOUBLE PRECISION,
    reset_in_episode INTEGER NOT NULL DEFAULT 0,
    findings TEXT NOT NULL,
    error TEXT NOT NULL,
    in_inventory INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS hosts_state ON hosts(state, name);
CREATE TABLE IF NOT EXISTS host_groups (
    host TEXT NOT NULL,
    grp TEXT NOT NULL,
    PRIMARY KEY (grp, host)
);
CREATE TABLE IF NOT EXISTS resets (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION,
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS resets_started ON resets(started);
CREATE TABLE IF NOT EXISTS remediations (
    host TEXT NOT NULL,
    failing_since DOUBLE PRECISION NOT NULL,
    passed DOUBLE PRECISION NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    reset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id INTEGER NOT NULL REFERENCES events(id),
    target TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (event_id, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_try);
CREATE INDEX IF NOT EXISTS results_time ON results(time);
CREATE TABLE IF NOT EXISTS exposures (
    host TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    image TEXT NOT NULL,
    failing TEXT NOT NULL,
    counts TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS used_once (
    key TEXT PRIMARY KEY,
    expires DOUBLE PRECISION NOT NULL
);
"""


@dataclass(frozen=True)
class Delivery:
    event_id: int
    target: str
    attempts: int
    body: bytes


@dataclass(frozen=True)
class HostRecord:
    """A host as the API and the dashboard show it."""

    name: str
    address: str
    groups: tuple[str, ...]
    state: str
    image_version: str
    last_time: str
    last_pass: str
    failing_since: float | None
    findings: tuple[dict[str, str], ...]
    error: str
    last_remediation_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "groups": list(self.groups),
                "state": self.state, "image_version": self.image_version,
                "last_time": self.last_time, "last_pass": self.last_pass,
                "failing_since": self.failing_since, "findings": list(self.findings),
                "error": self.error, "last_remediation_seconds": self.last_remediation_seconds}


@dataclass(frozen=True)
class Attestation:
    """One recorded verdict of a host."""

    time: str
    status: str
    boot_id: str
    error: str
    findings: tuple[dict[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "status": self.status, "boot_id": self.boot_id,
                "error": self.error, "findings": list(self.findings)}


_HOST_COLUMNS = ("name, address, groups, state, image_version, last_time, last_pass, "
                 "failing_since, findings, error, (SELECT seconds FROM remediations r WHERE "
                 "r.host = hosts.name ORDER BY r.passed DESC LIMIT 1)")


def _host_record(row: Sequence[Any]) -> HostRecord:
    return HostRecord(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5],
                      row[6], row[7], tuple(json.loads(row[8])), row[9], row[10])


class Store:
    """The SQLite database at `path`, its schema applied when it is opened."""

    def __init__(self, location: str, *, pool_size: int = 8) -> None:
        """`location`: an SQLite file's path or a postgresql:// URL."""
        if not is_postgres(location):
            check_output_file(Path(location), what="service database")
        self.db = Database(location, pool_size=pool_size)
        self.path = self.db.shown
        self.db.apply(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # Runs and hosts

    def start_run(self, started: str, label: str) -> int:
        with self.db.transaction() as db:
            (run_id,) = db.execute("INSERT INTO runs (started, inventory) VALUES (?, ?) "
                                   "RETURNING id", (started, label)).fetchone()
        return int(run_id)

    def prune(self, before: str) -> int:
        """Delete the verdicts recorded before `before` (a time as verdicts carry it), and
        the runs left without any that no recorded update names; return how many verdicts
        went. Hosts' states, remediation times, events and the outbox stay."""
        with self.db.transaction() as db:
            deleted = db.execute("DELETE FROM results WHERE time < ?", (before,)).rowcount
            db.execute("DELETE FROM runs WHERE started < ? "
                       "AND NOT EXISTS (SELECT 1 FROM results r WHERE r.run_id = runs.id) "
                       "AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.run_id = runs.id)",
                       (before,))
        return int(deleted)

    def record_exposure(self, time_: str, exposure: Exposure, targets: Sequence[str]
                        ) -> list[str]:
        """Keep the known vulnerabilities a passing host's image has, as of `time_`; when
        the host gained some, queue one `exposed` event for each of `targets`. Returns the
        issues it gained. Only a proven exposure is kept: a host that did not pass keeps
        the last one it proved."""
        if not exposure.proven:
            return []
        failing = sorted(exposure.failing)
        with self.db.transaction(exclusive=True) as db:
            row = db.execute("SELECT failing FROM exposures WHERE host = ?",
                             (exposure.host,)).fetchone()
            before = set(json.loads(row[0])) if row else set()
            db.execute(
                "INSERT INTO exposures (host, time, image, failing, counts, reason) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(host) DO UPDATE SET "
                "time = excluded.time, image = excluded.image, failing = excluded.failing, "
                "counts = excluded.counts, reason = excluded.reason",
                (exposure.host, time_, exposure.image, json.dumps(failing),
                 json.dumps(dict(exposure.counts or {}), sort_keys=True), exposure.reason))
            gained = [issue for issue in failing if issue not in before]
            if gained:
                body = json.dumps({"event": "exposed", "host": exposure.host,
                                   "image": exposure.image, "time": time_, "new": gained,
                                   "failing": failing}, sort_keys=True)
                (event_id,) = db.execute("INSERT INTO events (time, host, kind, body) "
                                         "VALUES (?, ?, 'exposed', ?) RETURNING id",
                                         (time_, exposure.host, body)).fetchone()
                db.executemany("INSERT INTO deliveries (event_id, target, next_try) "
                               "VALUES (?, ?, ?)",
                               [(event_id, t, time.time()) for t in targets])
        return gained

    def exposure(self, host: str) -> dict[str, Any] | None:
        """The known vulnerabilities the host's image had when it last passed."""
        with self.db.transaction() as db:
            row = db.execute("SELECT time, image, failing, counts, reason FROM exposures "
                             "WHERE host = ?", (host,)).fetchone()
        if row is None:
            return None
        return {"time": row[0], "image": row[1], "failing": json.loads(row[2]),
                "counts": json.loads(row[3]), "reason": row[4]}

    def exposed_hosts(self) -> int:
        """Hosts whose image, when they last passed, had issues that count."""
        with self.db.transaction() as db:
            return int(db.execute("SELECT COUNT(*) FROM exposures e JOIN hosts h ON "
                                  "h.name = e.host WHERE e.failing <> '[]' AND "
                                  "h.in_inventory = 1").fetchone()[0])

    def use_once(self, key: str, expires: float) -> bool:
        """Mark `key` used until `expires` (Unix time); False when it already was."""
        with self.db.transaction() as db:
            db.execute("DELETE FROM used_once WHERE expires < ?", (time.time(),))
            return db.execute("INSERT INTO used_once (key, expires) VALUES (?, ?) "
                              "ON CONFLICT (key) DO NOTHING", (key, expires)).rowcount == 1

    def sync_hosts(self, hosts: Sequence[FleetHost]) -> None:
        """The inventory as it is now: new hosts added (state unknown), addresses and groups
        kept current, hosts no longer listed marked so (their history stays)."""
        with self.db.transaction(exclusive=True) as db:
            db.execute("UPDATE hosts SET in_inventory = 0")
            db.executemany(
                "INSERT INTO hosts (name, address, groups, state, image_version, last_time, "
                "last_pass, findings, error) VALUES (?, ?, ?, 'unknown', '', '', '', '[]', '') "
                "ON CONFLICT(name) DO UPDATE SET address = excluded.address, "
                "groups = excluded.groups, in_inventory = 1",
                [(h.name, h.address, json.dumps(list(h.groups))) for h in hosts])
            db.execute("DELETE FROM host_groups")
            db.executemany("INSERT INTO host_groups (host, grp) VALUES (?, ?)",
                           [(h.name, g) for h in hosts for g in h.groups])

    def record(self, run_id: int, verdict: Verdict, targets: Sequence[str], *,
               after_reset: bool = False) -> Change | None:
        """Store `verdict`, move the host to its new state, and, when the state changed,
        queue one event for each of `targets`, all in one transaction. Returns the change."""
        observed = time.time()
        with self.db.transaction(exclusive=True) as db:
            row = db.execute("SELECT state, failing_since, reset_in_episode FROM hosts "
                             "WHERE name = ?", (verdict.host,)).fetchone()
            before = (HostState(State(row[0]), row[1], bool(row[2])) if row
                      else HostState(State.UNKNOWN, None, False))
            after, change = transition(before, classify(verdict), observed,
                                       after_reset=after_reset)
            findings = history.findings_json(verdict)
            db.execute(
                "INSERT INTO results (run_id, host, time, status, boot_id, manifest_digest, "
                "error, findings, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, verdict.host, verdict.time, verdict.status, verdict.boot_id,
                 verdict.manifest_digest, verdict.error, findings,
                 verdict.address))
            db.execute(
                "INSERT INTO hosts (name, address, groups, state, image_version, last_time, "
                "last_pass, failing_since, reset_in_episode, findings, error) "
                "VALUES (?, ?, '[]', ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET address = excluded.address, "
                "state = excluded.state, image_version = excluded.image_version, "
                "last_time = excluded.last_time, last_pass = CASE WHEN "
                "excluded.last_pass = '' THEN hosts.last_pass ELSE excluded.last_pass END, "
                "failing_since = excluded.failing_since, "
                "reset_in_episode = excluded.reset_in_episode, "
                "findings = excluded.findings, error = excluded.error",
                (verdict.host, verdict.address, after.state.value,
                 verdict.image_version, verdict.time,
                 verdict.time if after.state is State.PASS else "", after.failing_since,
                 int(after.reset_in_episode), findings,
                 verdict.error))
            if change is None:
                return None
            if change.remediation_seconds is not None:
                assert before.failing_since is not None
                db.execute("INSERT INTO remediations (host, failing_since, passed, seconds, "
                           "reset) VALUES (?, ?, ?, ?, ?)",
                           (verdict.host, before.failing_since, observed,
                            change.remediation_seconds, int(before.reset_in_episode)))
            body = json.dumps(change.event(verdict), sort_keys=True)
            (event_id,) = db.execute("INSERT INTO events (time, host, kind, body) "
                                     "VALUES (?, ?, ?, ?) RETURNING id",
                                     (verdict.time, verdict.host, change.kind,
                                      body)).fetchone()
            db.executemany("INSERT INTO deliveries (event_id, target, next_try) "
                           "VALUES (?, ?, ?)", [(event_id, t, observed) for t in targets])
        return change

    # The reset budget

    def claim_reset(self, host: str, *, max_concurrent: int, max_per_hour: int,
                    stale_after: float) -> int | None:
        """Take one reset of `host` from the fleet-wide budget: at most `max_concurrent`
        unfinished (a reset older than `stale_after` seconds counts as finished: its worker
        died) and at most `max_per_hour` started in the last hour. Returns the reset's id, or
        None when the budget is spent or the host is being reset already."""
        now = time.time()
        with self.db.transaction(exclusive=True) as db:
            running = db.execute(
                "SELECT host FROM resets WHERE finished IS NULL AND started > ?",
                (now - stale_after,)).fetchall()
            if host in {r[0] for r in running} or len(running) >= max_concurrent:
                return None
            (hourly,) = db.execute("SELECT COUNT(*) FROM resets WHERE started > ?",
                                   (now - 3600,)).fetchone()
            if hourly >= max_per_hour:
                return None
            (reset_id,) = db.execute("INSERT INTO resets (host, started) VALUES (?, ?) "
                                     "RETURNING id", (host, now)).fetchone()
            db.execute("UPDATE hosts SET reset_in_episode = 1 WHERE name = ?", (host,))
        return int(reset_id)

    def finish_reset(self, reset_id: int, outcome: str) -> None:
        with self.db.transaction() as db:
            db.execute("UPDATE resets SET finished = ?, outcome = ? WHERE id = ?",
                       (time.time(), outcome, reset_id))

    # The alert outbox

    def due(self, now: float, limit: int = 100) -> list[Delivery]:
        with self.db.transaction() as db:
            rows = db.execute(
                "SELECT d.event_id, d.target, d.attempts, e.body FROM deliveries d "
                "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND "
                "d.next_try <= ? ORDER BY d.event_id LIMIT ?", (now, limit)).fetchall()
        return [Delivery(r[0], r[1], r[2], r[3].encode()) for r in rows]

    def delivered(self, delivery: Delivery) -> None:
        self._delivery(delivery, "delivered", 0, "")

    def retry(self, delivery: Delivery, next_try: float, error: str, *, give_up: bool) -> None:
        self._delivery(delivery, "dropped" if give_up else "pending", next_try, error)

    def _delivery(self, delivery: Delivery, state: str, next_try: float, error: str) -> None:
        with self.db.transaction() as db:
            db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, "
                       "next_try = CASE WHEN ? > 0 THEN ? ELSE next_try END, last_error = ? "
                       "WHERE event_id = ? AND target = ?",
                       (state, next_try, next_try, error[:500], delivery.event_id,
                        delivery.target))

    # Reading, for the API, the dashboard and the metrics

    def state_counts(self) -> dict[str, int]:
        with self.db.transaction() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM hosts WHERE in_inventory = 1 "
                              "GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def summary(self) -> dict[str, Any]:
        with self.db.transaction() as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM hosts WHERE in_inventory = 1 "
                                     "GROUP BY state").fetchall())
            versions = dict(db.execute("SELECT image_version, COUNT(*) FROM hosts WHERE "
                                       "in_inventory = 1 GROUP BY image_version").fetchall())
            (last,) = db.execute("SELECT MAX(last_time) FROM hosts").fetchone()
            remediation = db.execute("SELECT COUNT(*), AVG(seconds), MAX(seconds) FROM "
                                     "remediations").fetchone()
        return {"hosts": sum(states.values()), "by_state": states,
                "exposed": self.exposed_hosts(),
                "by_image_version": versions, "last_attestation": last or "",
                "remediations": {"count": remediation[0], "mean_seconds": remediation[1],
                                 "max_seconds": remediation[2]}}

    def hosts(self, *, state: str | None = None, group: str | None = None,
              image_version: str | None = None, after: str = "",
              limit: int = 100) -> tuple[list[HostRecord], int]:
        """A page of hosts by name, after the name `after`, and how many match in all.
        Keyset pagination: a page costs the same at host 9,900 as at host 1."""
        where = ("in_inventory = 1 AND (? IS NULL OR state = ?) AND (? IS NULL OR "
                 "image_version = ?) AND (? IS NULL OR EXISTS (SELECT 1 FROM "
                 "host_groups g WHERE g.host = hosts.name AND g.grp = ?))")
        args = (state, state, image_version, image_version, group, group)
        with self.db.transaction() as db:
            (total,) = db.execute(f"SELECT COUNT(*) FROM hosts WHERE {where}",
                                  args).fetchone()
            rows = db.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE {where} AND name > ? "
                              "ORDER BY name LIMIT ?", (*args, after, limit)).fetchall()
        return [_host_record(r) for r in rows], total

    def host(self, name: str) -> HostRecord | None:
        with self.db.transaction() as db:
            row = db.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE name = ?",
                             (name,)).fetchone()
        return _host_record(row) if row else None

    def history(self, name: str, limit: int = 100) -> list[Attestation]:
        """The host's recorded verdicts, newest first."""
        with self.db.transaction() as db:
            rows = db.execute("SELECT time, status, boot_id, error, findings FROM results "
                              f"WHERE host = ? ORDER BY {self.db.rowid} DESC LIMIT ?",
                              (name, limit)).fetchall()
        return [Attestation(r[0], r[1], r[2], r[3], tuple(json.loads(r[4]))) for r in rows]
