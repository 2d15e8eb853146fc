"""`hardhost serve`, put together: the config's files checked before anything starts, then
the scheduler and the alert outbox run until told to stop."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hardhost.advisories.feed import read_feed
from hardhost.advisories.scan import Level, Policy
from hardhost.advisories.vex import read_vex
from hardhost.core.errors import UsageError
from hardhost.core.inputs import read_bytes
from hardhost.core.outputs import check_output_file
from hardhost.image.manifest import format_time
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier import fleet, inventory
from hardhost.verifier.attestation import Connection
from hardhost.verifier.database import Database, is_postgres
from hardhost.verifier.exposure import FeedPolicy, Watch
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.service.alerts import Notifier, Target, syslog_handler
from hardhost.verifier.service.config import ServiceConfig, read_secret, require_private
from hardhost.verifier.service.engine import Engine, Loaded, changes_log
from hardhost.verifier.service.metrics import Metrics
from hardhost.verifier.service.schedule import Scheduler

if TYPE_CHECKING:
    from hardhost.verifier.service.queue import Queue
from hardhost.verifier.service.store import Store
from hardhost.verifier.tpm_attest import TpmPolicy, default_registry
from hardhost.verifier.transport import check_options
from hardhost.verifier.verdict import now

log = logging.getLogger(__name__)
SYSLOG_SOCKET = "/dev/log"


@dataclass(frozen=True)
class Service:
    config: ServiceConfig
    conn: Connection
    manifests: fleet.Manifests
    targets: dict[str, Target]
    token: bytes | None  # the API's bearer token; None: no HTTP server
    watch: Watch | None = None  # the known-vulnerability check of [advisories]

    @property
    def database(self) -> str:
        """The SQLite file's path (relative to the config), or the PostgreSQL URL."""
        location = self.config.database
        return location if is_postgres(location) else str(self.config.path(location))

    def load(self) -> tuple[Sequence[FleetHost], Loaded]:
        """The inventory and the manifests its hosts need, read now."""
        fleet_config = self.config.fleet
        hosts = inventory.load(self.config.path(fleet_config.inventory),
                               allow_executable=fleet_config.allow_executable_inventory)
        return hosts, self.manifests.load_all(hosts)


def _connection(config: ServiceConfig) -> Connection:
    ssh = config.ssh
    known_hosts, identity = config.path(ssh.known_hosts), config.optional_path(ssh.identity)
    ssh_config = config.optional_path(ssh.ssh_config)
    check_options(known_hosts=known_hosts, identity=identity, ssh_config=ssh_config)
    tpm = None
    if ssh.tpm:
        tpm = TpmPolicy(config.optional_path(ssh.ak_registry) or default_registry(),
                        config.optional_path(ssh.tpm_ca))
    elif ssh.tpm_ca or ssh.ak_registry:
        raise UsageError(f"{config.source}: ssh.tpm_ca and ssh.ak_registry need ssh.tpm = true")
    return Connection(known_hosts, identity, ssh.timeout, False, tpm, ssh_config)


def prepare(config: ServiceConfig) -> Service:
    """Everything the config names, read and checked before any host is contacted: a typo
    is exit 2 at once, a manifest that does not verify exit 4."""
    conn = _connection(config)
    trusted: dict[str, Ed25519PublicKey] = {}
    for key in config.fleet.trust_keys:
        trusted.update(load_trusted_keys(config.path(key)))
    manifests = fleet.Manifests(config.optional_path(config.fleet.manifest), trusted)
    targets = {w.url: Target(w.url, read_secret(config.path(w.secret_file), "webhook secret"),
                             w.timeout)
               for w in config.alerts.webhook}
    http = config.http
    token = read_secret(config.path(http.token_file), "API token") if http.token_file else None
    if http.tls_key:
        require_private(config.path(http.tls_key), "TLS key")
        read_bytes(config.path(http.tls_key), what="TLS key")
        read_bytes(config.path(http.tls_cert), what="TLS certificate")
    service = Service(config, conn, manifests, targets, token, _watch(config))
    if is_postgres(service.database):
        Database(service.database, pool_size=1).close()  # reachable, and the login works
    else:
        check_output_file(Path(service.database), what="service database")
    hosts, _ = service.load()
    manifests.check(hosts)
    return service


def _watch(config: ServiceConfig) -> Watch | None:
    """The [advisories] check, its feed and waivers read now: a malformed one is exit 2
    before any host is contacted."""
    advisories = config.advisories
    if not advisories.feed:
        return None
    feed = config.path(advisories.feed)
    waivers = read_vex([config.path(v) for v in advisories.vex])
    # The whole file is checked as JSON now; each image's entries, for its own release, when
    # it is scanned.
    checked = read_feed(feed, release="", wanted=())
    log.info("Known vulnerabilities from %s (sha256 %s…)", feed, checked.sha256[:16])
    return Watch(FeedPolicy(feed, Policy(Level(advisories.fail_on),
                                         advisories.fail_on_unfixed), waivers))


@dataclass(frozen=True)
class Running:
    """What a face (the HTTP API) needs of a running service."""

    store: Store
    actions: Scheduler | Queue  # attest_now and reset_now
    metrics: Metrics


def serve(service: Service, stop: threading.Event,
          faces: Callable[[Running], Callable[[], None]] | None = None) -> None:
    """Attest the fleet every interval until `stop` is set; then finish what is in flight.
    `faces` is started once the service runs, and the function it returns stops it."""
    config = service.config
    if config.alerts.syslog:
        if os.path.exists(SYSLOG_SOCKET):
            changes_log.addHandler(syslog_handler(SYSLOG_SOCKET))
        else:
            log.warning("No syslog socket at %s: state changes are logged here only",
                        SYSLOG_SOCKET)
    store = Store(service.database, pool_size=config.schedule.parallelism + 4)
    metrics = Metrics(store.state_counts,
                      store.exposed_hosts if service.watch is not None else None)
    notifier = Notifier(store, service.targets, config.alerts.max_attempts,
                        failed=metrics.alerts_failed.inc)
    engine = Engine(store, service.conn, service.manifests.default,
                    config.remediation, list(service.targets), metrics=metrics,
                    watch=service.watch,
                    announce=lambda change: notifier.wake.set())

    def load() -> tuple[Sequence[FleetHost], Loaded]:
        hosts, loaded = service.load()
        store.sync_hosts(hosts)
        return hosts, loaded

    def start_run() -> int:
        # Each interval's start trims what is past keeping: a little at a time, never a
        # backlog of days in one transaction.
        cutoff = format_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=config.retention.days))
        pruned = store.prune(cutoff)
        if pruned:
            log.info("Deleted %d verdicts older than %d days", pruned, config.retention.days)
        return store.start_run(now(), f"serve {config.source}")

    scheduler: Scheduler | Queue
    if is_postgres(service.database):
        from hardhost.verifier.service.queue import Queue

        scheduler = Queue(service.database, engine, config.schedule, load, start_run,
                          name=f"{socket.gethostname()}:{os.getpid()}",
                          observe=metrics.attested)
    else:
        scheduler = Scheduler(engine, config.schedule, load, start_run,
                              reset_workers=config.remediation.max_concurrent,
                              observe=metrics.attested)
    outbox = threading.Thread(target=notifier.run, args=(stop,), name="alerts", daemon=True)
    outbox.start()
    stop_faces = faces(Running(store, scheduler, metrics)) if faces is not None else None
    log.info("Serving: every %gs, %d hosts at a time, database %s", config.schedule.interval,
             config.schedule.parallelism, store.path)
    try:
        scheduler.run(stop)
    finally:
        if stop_faces is not None:
            stop_faces()
        notifier.deliver_due()  # what the last checks queued, once more before leaving
        outbox.join(timeout=5)
        store.close()
