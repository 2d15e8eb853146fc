"""Scale-out on PostgreSQL, with procrastinate: several `hardhost serve` workers, on one
machine or many, share the fleet through the job queue in the same database.

Each interval, procrastinate's periodic deferrer (run by every worker, deduplicated by the
database) starts one `interval` job. It records the interval's run and defers one `attest`
job per host, each with the host's queueing lock, so a host never has two attestations
waiting, and a random delay within the jitter. Workers take jobs with PostgreSQL's row locks:
one host, one worker, once per interval. A worker killed mid-interval loses only the jobs it
held; the others take every waiting job, and every host from the next interval on. Once an
interval each worker tidies the queue: the jobs a dead worker held are marked failed (its
hosts are deferred again by the next interval), and finished jobs older than an hour are
deleted, so the queue does not grow with the fleet's every attestation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import procrastinate
import psycopg
from procrastinate.exceptions import AlreadyEnqueued

from hardhost.core.errors import UsageError
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.service.config import Schedule, interval_cron
from hardhost.verifier.service.engine import Engine, Loaded
from hardhost.verifier.service.schedule import Request
from hardhost.verifier.verdict import Verdict

log = logging.getLogger(__name__)
_SCHEMA_LOCK = 0x68617265


def _apply_schema(url: str, app: procrastinate.App) -> None:
    """procrastinate's tables, made once: workers starting together take turns."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            row = connection.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
            if row is None or row[0] is None:
                log.info("Creating procrastinate's tables")
                connection.execute(app.schema_manager.get_schema().encode())
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


class Queue:
    """This worker's part of the shared schedule, until `stop`."""

    def __init__(self, url: str, engine: Engine, schedule: Schedule,
                 load: Callable[[], tuple[Sequence[FleetHost], Loaded]],
                 start_run: Callable[[], int], *, name: str,
                 observe: Callable[[Verdict, float], None] = lambda verdict, seconds: None
                 ) -> None:
        self.url, self.engine, self.schedule, self.load = url, engine, schedule, load
        self.start_run, self.observe, self.name = start_run, observe, name
        self.hosts: dict[str, FleetHost] = {}
        self.loaded: Loaded = {}
        self.loaded_at = 0.0
        self.lock = threading.Lock()
        self.reload_lock = threading.RLock()
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
        self._tasks()

    def _tasks(self) -> None:
        app = self.app

        @app.periodic(cron=interval_cron(self.schedule.interval), periodic_id="interval")
        @app.task(name="hardhost.interval", queueing_lock="hardhost.interval")
        def interval(timestamp: int) -> None:
            hosts = self._reload()
            run_id = self.start_run()
            spread = self.schedule.interval * self.schedule.jitter
            deferred = 0
            for host in hosts:
                try:
                    attest.configure(queueing_lock=f"host:{host.name}", schedule_in={
                        "seconds": int(random.uniform(0, spread))}).defer(
                        host=host.name, run_id=run_id)
                    deferred += 1
                except AlreadyEnqueued:
                    log.info("%s: its last attestation still waits; not deferred again",
                             host.name)
            log.info("Interval %d: %d hosts deferred", timestamp, deferred)

        @app.task(name="hardhost.attest")
        def attest(host: str, run_id: int) -> None:
            found, loaded = self._host(host)
            if found is None:
                return
            started = time.monotonic()
            verdict = self.engine.check(found, loaded, run_id)
            self.observe(verdict, time.monotonic() - started)
            if self.engine.wants_reset(verdict):
                self._reset(found, loaded, run_id)

        @app.task(name="hardhost.reset")
        def reset(host: str, run_id: int) -> None:
            found, loaded = self._host(host)
            if found is not None:
                self._reset(found, loaded, run_id)

        self.attest_task, self.reset_task = attest, reset

    def _reset(self, host: FleetHost, loaded: Loaded, run_id: int) -> None:
        started = time.monotonic()
        verdict = self.engine.reset(host, loaded, run_id)
        if verdict is not None:
            self.observe(verdict, time.monotonic() - started)

    def _reload(self) -> Sequence[FleetHost]:
        # One reload at a time: ansible-core's inventory loader is not thread-safe.
        with self.reload_lock:
            hosts, loaded = self.load()
            with self.lock:
                self.hosts, self.loaded = {h.name: h for h in hosts}, loaded
                self.loaded_at = time.monotonic()
        return hosts

    def _host(self, name: str) -> tuple[FleetHost | None, Loaded]:
        """The host's inventory entry, read again once an interval old: the worker that
        ran the interval job read the inventory, this one may not have."""
        with self.reload_lock:  # the threads that find it stale wait for one reload
            with self.lock:
                stale = time.monotonic() - self.loaded_at > self.schedule.interval
            if stale or name not in self.hosts:
                try:
                    self._reload()
                except UsageError as exc:
                    log.error("Inventory or manifests not read again, the last ones stay: "
                              "%s", exc)
        with self.lock:
            return self.hosts.get(name), self.loaded

    def attest_now(self, name: str) -> Request:
        return self._now(self.attest_task, name)

    def reset_now(self, name: str) -> Request:
        return self._now(self.reset_task, name)

    def _now(self, task: procrastinate.tasks.Task, name: str) -> Request:  # type: ignore[type-arg]
        found, _ = self._host(name)
        if found is None:
            return Request.UNKNOWN
        try:
            task.configure(queueing_lock=f"now:{name}").defer(host=name, run_id=self.start_run())
        except AlreadyEnqueued:
            return Request.BUSY
        return Request.QUEUED

    async def _tidy(self) -> None:
        """Each interval: fail the jobs of workers whose heartbeat stopped (procrastinate's
        own test of a stalled worker), and delete finished jobs older than an hour."""
        manager = self.app.job_manager
        while True:
            await asyncio.sleep(self.schedule.interval)
            try:
                for job in await manager.get_stalled_jobs():
                    assert job.id is not None
                    with suppress(procrastinate.exceptions.ConnectorException):
                        # Another worker may have failed it first.
                        await manager.finish_job_by_id_async(
                            job.id, procrastinate.jobs.Status.FAILED, delete_job=False)
                        log.warning("%s %s: its worker stopped answering; marked failed",
                                    job.task_name, job.task_kwargs.get("host", ""))
                await manager.delete_old_jobs(nb_hours=1, include_failed=True)
            except procrastinate.exceptions.ProcrastinateException as exc:
                log.error("Tidying the queue failed; tried again next interval: %s", exc)

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set; then the jobs in flight finish."""
        _apply_schema(self.url, self.app)
        loop = asyncio.new_event_loop()
        # procrastinate runs a synchronous job in the loop's default executor: size it to
        # the parallelism (Python's default is a handful of threads).
        loop.set_default_executor(ThreadPoolExecutor(self.schedule.parallelism,
                                                     thread_name_prefix="job"))
        logging.getLogger("procrastinate").setLevel(logging.WARNING)

        async def work() -> None:
            async with self.app.open_async():
                worker = asyncio.create_task(self.app.run_worker_async(
                    concurrency=self.schedule.parallelism, install_signal_handlers=False,
                    name=self.name, wait=True, fetch_job_polling_interval=1.0))
                tidy = asyncio.create_task(self._tidy())
                await loop.run_in_executor(None, stop.wait)
                for task in (tidy, worker):
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task

        try:
            loop.run_until_complete(work())
        finally:
            loop.close()
