"""The embedded scheduler: one worker attests each host once per interval, on a phase of
its own within the jitter, with bounded parallelism, and hands drifted hosts to a separate,
smaller pool of resets. A host is never checked while its last check or reset is running."""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from hardhost.core.errors import HardhostError
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.service.config import Schedule
from hardhost.verifier.service.engine import Engine, Loaded
from hardhost.verifier.verdict import Verdict

log = logging.getLogger(__name__)

# The loop looks for due hosts at least this often.
TICK_SECONDS = 0.2


class Request(enum.StrEnum):
    QUEUED = "queued"
    UNKNOWN = "unknown host"
    BUSY = "a check or reset of the host is running"


class Scheduler:
    def __init__(self, engine: Engine, schedule: Schedule,
                 load: Callable[[], tuple[Sequence[FleetHost], Loaded]],
                 start_run: Callable[[], int], *,
                 reset_workers: int,
                 observe: Callable[[Verdict, float], None] = lambda verdict, seconds: None
                 ) -> None:
        """`load` reads the inventory and its manifests, and `start_run` records a new run:
        both once per interval, so a host added to the inventory is attested from the next
        interval on, and each verdict belongs to the interval it was due in."""
        self.engine, self.schedule, self.load, self.observe = engine, schedule, load, observe
        self.start_run = start_run
        self.run_id = 0
        self.reset_workers = reset_workers
        self.hosts: dict[str, FleetHost] = {}
        self.loaded: Loaded = {}
        self.due: dict[str, float] = {}
        self.busy: set[str] = set()
        self.lock = threading.Lock()
        self.resets: ThreadPoolExecutor | None = None

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; then what is in flight finishes, and nothing new starts."""
        checks = ThreadPoolExecutor(self.schedule.parallelism, thread_name_prefix="check")
        resets = ThreadPoolExecutor(self.reset_workers, thread_name_prefix="reset")
        self.resets = resets
        next_load = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_load:
                    # Intervals start on a fixed beat, never later by the loop's own delay:
                    # a host's due time (the interval's start and its phase) then always
                    # falls in the run of the interval it belongs to.
                    start = next_load if next_load else now
                    self._reload(start)
                    next_load = max(start + self.schedule.interval, now)
                for host in self._take_due(now):
                    checks.submit(self._check, host, self.loaded, self.run_id, resets, stop)
                stop.wait(TICK_SECONDS)
        finally:
            log.info("Stopping: waiting for the checks and resets in flight")
            checks.shutdown(wait=True, cancel_futures=True)
            resets.shutdown(wait=True, cancel_futures=True)

    def attest_now(self, name: str) -> Request:
        """Bring `name`'s next attestation forward to now."""
        with self.lock:
            if name not in self.hosts:
                return Request.UNKNOWN
            if name in self.busy:
                return Request.BUSY
            self.due[name] = time.monotonic()
        return Request.QUEUED

    def reset_now(self, name: str) -> Request:
        """Reset `name` now (attested first: a passing host is not rebooted), within the
        reset budget, whatever the remediation policy."""
        with self.lock:
            host, resets = self.hosts.get(name), self.resets
            if host is None:
                return Request.UNKNOWN
            if name in self.busy or resets is None:
                return Request.BUSY
            self.busy.add(name)
            loaded, run_id = self.loaded, self.run_id
        try:
            future = resets.submit(self._reset, host, loaded, run_id)
        except RuntimeError:  # stopping
            self._release(name)
            return Request.BUSY
        future.add_done_callback(lambda _: self._release(name))
        return Request.QUEUED

    def _reload(self, now: float) -> None:
        try:
            hosts, loaded = self.load()
        except HardhostError as exc:
            log.error("Inventory or manifests not read again, the last ones stay: %s", exc)
            return
        self.run_id = self.start_run()
        spread = self.schedule.interval * self.schedule.jitter
        with self.lock:
            self.hosts = {h.name: h for h in hosts}
            self.loaded = loaded
            for name in self.hosts:
                # A new host starts on a phase of its own within the jitter.
                self.due.setdefault(name, now + random.uniform(0, spread))
            for name in set(self.due) - set(self.hosts):
                del self.due[name]

    def _take_due(self, now: float) -> list[FleetHost]:
        with self.lock:
            ready = [n for n, t in self.due.items() if t <= now and n not in self.busy]
            for name in ready:
                self.busy.add(name)
                # Once per interval on the host's own phase; a check that overran its
                # interval makes the host skip the attestations it missed, not bunch them.
                due = self.due[name] + self.schedule.interval
                self.due[name] = due if due > now else now + self.schedule.interval
            return [self.hosts[n] for n in ready]

    def _check(self, host: FleetHost, loaded: Loaded, run_id: int,
               resets: ThreadPoolExecutor, stop: threading.Event) -> None:
        handed_over = False
        try:
            started = time.monotonic()
            verdict = self.engine.check(host, loaded, run_id)
            self.observe(verdict, time.monotonic() - started)
            if self.engine.wants_reset(verdict) and not stop.is_set():
                future: Future[None] = resets.submit(self._reset, host, loaded, run_id)
                handed_over = True
                future.add_done_callback(lambda _: self._release(host.name))
        except Exception:
            log.exception("%s: the check failed", host.name)
        finally:
            if not handed_over:
                self._release(host.name)

    def _reset(self, host: FleetHost, loaded: Loaded, run_id: int) -> None:
        try:
            started = time.monotonic()
            verdict = self.engine.reset(host, loaded, run_id)
            if verdict is not None:
                self.observe(verdict, time.monotonic() - started)
        except Exception:
            log.exception("%s: the reset failed", host.name)

    def _release(self, name: str) -> None:
        with self.lock:
            self.busy.discard(name)
