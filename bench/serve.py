"""hardhost serve's speed: attestations per second of one worker (SQLite, then PostgreSQL)
and of two workers sharing PostgreSQL, against `hardhost fleet` on the same loopback sshd
hosts in the same run; the HTTP API's latency with 10,000 hosts in the database; and the
worker's memory at two fleet sizes, per 1,000 hosts; and, given a built image, the time from
a write to `/etc` on booted guests to their passing attestation after the service's reset.

    sudo .venv/bin/python bench/serve.py [--hosts 200] [--parallelism 20] [--sizes 200,600]
    sudo .venv/bin/python bench/serve.py --only-remediation --image OUTDIR/container-host

Each worker's rate is timed from the moment its interval's run is recorded to the moment the
run holds a verdict of every host (jitter 0, so the interval is pure work); `fleet`'s from
its start to its exit, its start-up included. The hosts are bench/fleet.py's: one sshd per
host on loopback, logins as a user whose shell is /bin/sh.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleet import BENCH_USER, BIN, Fleet, ensure_user  # noqa: E402
from hardhost.core.log import setup_logging  # noqa: E402
from hardhost.faces import http_server  # noqa: E402
from hardhost.faces.service_api import make_app  # noqa: E402
from hardhost.verifier import ServiceRequest, Verdict  # noqa: E402
from hardhost.verifier.inventory import FleetHost  # noqa: E402
from hardhost.verifier.service.metrics import Metrics  # noqa: E402
from hardhost.verifier.service.store import Store  # noqa: E402
from hardhost.verifier.transport import Target, connect  # noqa: E402
from hardhost.verifier.verdict import Finding, Severity  # noqa: E402
from hardhost.vm import harness as vm  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.postgres import postgres_server  # noqa: E402
from tests.support.serve import (  # noqa: E402
    config_text,
    postgres_query,
    receiver,
    sqlite_query,
)

Query = Callable[[str], list[tuple[Any, ...]]]


def config(fleet: Fleet, database: str, parallelism: int, interval: int) -> Path:
    path = fleet.work / f"serve-{abs(hash(database))}.toml"
    path.write_text(config_text(database, inventory=fleet.inventory, manifest=fleet.manifest,
                                trust_key=fleet.public, known_hosts=fleet.known,
                                identity=fleet.client.private, timeout=30, interval=interval,
                                jitter=0, parallelism=parallelism))
    return path


def first_interval(query: Query, hosts: int, timeout: float = 600) -> float:
    """Seconds from the first run's record to its last host's verdict."""
    deadline = time.monotonic() + timeout
    started = None
    while time.monotonic() < deadline:
        if started is None and query("SELECT id FROM runs"):
            started = time.monotonic()
        if started is not None:
            done = query("SELECT COUNT(*) FROM results WHERE run_id = (SELECT MIN(id) "
                         "FROM runs)")
            if done and done[0][0] >= hosts:
                return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit("the service did not attest every host in time")


@contextmanager
def workers(path: Path, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [subprocess.Popen([str(BIN / "hardhost"), "serve", str(path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=120)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def throughput(hosts: int, parallelism: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hardhost-serve-bench-") as name:
        fleet = Fleet.start(Path(name), hosts)
        try:
            fleet_seconds, _ = fleet.hardhost(parallelism)
            rates = {"hardhost fleet": hosts / fleet_seconds}
            database = fleet.work / "serve.db"
            with workers(config(fleet, str(database), parallelism, 600), 1):
                rates["serve, 1 worker, SQLite"] = hosts / first_interval(
                    sqlite_query(database), hosts)
            for count in (1, 2):
                label = f"serve, {count} worker{'s' if count > 1 else ''}, PostgreSQL"
                with postgres_server(fleet.work / f"postgres{count}") as url, \
                        workers(config(fleet, url, parallelism, 600), count):
                    rates[label] = hosts / first_interval(postgres_query(url), hosts)
        finally:
            fleet.stop()
    print(f"{hosts} loopback hosts, {parallelism} at a time per worker")
    ours = rates["hardhost fleet"]
    for label, rate in rates.items():
        print(f"{label:<32} {rate:7.1f} hosts/s  {rate / ours:5.2f} x fleet")
    two = rates["serve, 2 workers, PostgreSQL"]
    print(f"each of 2 workers: {two / 2 / ours:.2f} x fleet (both on this machine's cores)")


def memory(sizes: list[int], parallelism: int) -> None:
    print("\nworker memory (peak RSS after one interval over every host, SQLite):")
    peaks: dict[int, float] = {}
    for hosts in sizes:
        with tempfile.TemporaryDirectory(prefix="hardhost-serve-memory-") as name:
            fleet = Fleet.start(Path(name), hosts)
            try:
                database = fleet.work / "serve.db"
                with workers(config(fleet, str(database), parallelism, 600), 1) as (worker,):
                    first_interval(sqlite_query(database), hosts)
                    peaks[hosts] = rss_mib(worker.pid)
            finally:
                fleet.stop()
        print(f"{hosts:>6} hosts {peaks[hosts]:7.0f} MiB")
    if len(peaks) > 1:
        (low, a), (high, b) = min(peaks.items()), max(peaks.items())
        print(f"per 1,000 more hosts: {(b - a) / (high - low) * 1000:.0f} MiB")


def fill(store: Store, hosts: int) -> None:
    """10,000 hosts with a verdict each: 5% drifted, 1% unreachable, the rest passing."""
    fleet = [FleetHost(f"host{i:05d}", Target("root", f"10.0.{i // 250}.{i % 250}", 22),
                       None, None, groups=("edge" if i % 2 else "core",)) for i in range(hosts)]
    store.sync_hosts(fleet)
    run = store.start_run("2026-12-01T00:00:00Z", "bench")
    drift = (Finding("sysctl.kernel.kptr_restrict", Severity.HIGH, "2", "0"),)
    for i, host in enumerate(fleet):
        verdict = Verdict(host.name, "b" * 36, "2026-12-01T00:00:00Z", "d" * 64,
                          drift if i % 20 == 0 else (),
                          "unreachable" if i % 100 == 1 else "", 3 if i % 100 == 1 else 0,
                          host.address, "1.0.0")
        store.record(run, verdict, ())


class _NoActions:
    def attest_now(self, name: str) -> ServiceRequest:
        return ServiceRequest.QUEUED

    def reset_now(self, name: str) -> ServiceRequest:
        return ServiceRequest.QUEUED


def api_latency(hosts: int, requests: int) -> None:
    token = "a bench token of enough length"
    with tempfile.TemporaryDirectory(prefix="hardhost-serve-api-") as name:
        store = Store(str(Path(name) / "serve.db"))
        started = time.monotonic()
        fill(store, hosts)
        print(f"\nAPI with {hosts} hosts in SQLite (filled in {time.monotonic() - started:.0f} s),"
              f" {requests} requests each, one at a time:")
        app = make_app(store, _NoActions(), Metrics(store.state_counts).render,
                       token.encode(), secure_cookie=False)
        port = free_port()
        stop = http_server.start(app, http_server.listen("127.0.0.1", port), tls_cert=None,
                                 tls_key=None)
        try:
            time.sleep(0.5)
            base = f"http://127.0.0.1:{port}"
            middle = f"host{hosts // 2:05d}"
            print(f"{'endpoint':<50} {'p50 ms':>7} {'p95 ms':>7}")
            for path in ("/api/v1/summary", "/api/v1/hosts?limit=100",
                         f"/api/v1/hosts?limit=100&after={middle}",
                         "/api/v1/hosts?state=drift&group=edge&limit=100",
                         f"/api/v1/hosts/{middle}", f"/api/v1/hosts/{middle}/history",
                         "/", "/?state=drift", "/metrics"):
                times = []
                for _ in range(requests):
                    request = urllib.request.Request(
                        base + path, headers={"Authorization": f"Bearer {token}"})
                    begin = time.perf_counter()
                    with urllib.request.urlopen(request, timeout=30) as response:
                        response.read()
                    times.append((time.perf_counter() - begin) * 1000)
                times.sort()
                p95 = times[max(0, int(len(times) * 0.95) - 1)]
                print(f"{path:<50} {statistics.median(times):7.1f} {p95:7.1f}")
        finally:
            stop()
            store.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def remediation(image: Path, identity: Path, trust_key: Path, guests: int, rounds: int,
                interval: int) -> None:
    """Guests of `image` under TCG, watched by one worker that may reset them all at once:
    each round writes to /etc on every guest, then waits for each one's `remediated` event.
    Two figures per drift: from the write to the passing attestation (detection within the
    interval, the reset, the reboot, the attestation), and the service's own record, from
    the first failing attestation to the pass."""
    names = [f"bench-serve-{index}" for index in range(guests)]
    with tempfile.TemporaryDirectory(prefix="hardhost-bench-remediation-") as tmp, \
            receiver() as hook:
        work = Path(tmp)
        instances: dict[str, tuple[vm.Instance, Target]] = {}
        try:
            for name in names:
                vm.stop(name, purge=True)
                port = free_port()
                instances[name] = (vm.start(image, trust_key=trust_key, name=name,
                                            ssh_port=port, timeout=300),
                                   Target("root", "127.0.0.1", port))
            (work / "hosts.ini").write_text("".join(
                f"{name} ansible_host=127.0.0.1 ansible_port={target.port} "
                "ansible_user=root\n" for name, (_, target) in instances.items()))
            (work / "known_hosts").write_text("".join(
                instance.known_hosts.read_text() for instance, _ in instances.values()))
            secret = work / "webhook.secret"
            secret.write_text("a webhook secret that is long enough\n")
            secret.chmod(0o600)
            path = work / "serve.toml"
            path.write_text(config_text(
                str(work / "serve.db"), inventory=work / "hosts.ini",
                manifest=image / "manifest.dsse.json", trust_key=trust_key,
                known_hosts=work / "known_hosts", identity=identity, timeout=60,
                interval=interval, jitter=0.1, parallelism=guests,
                tables=f"[remediation]\nenabled = true\nmax_concurrent = {guests}\n"
                       "max_per_hour = 1000\nreset_timeout = 300\n"
                       f"[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook.port}/\"\n"
                       "secret_file = \"webhook.secret\"\n"))
            query = sqlite_query(work / "serve.db")
            to_pass: list[float] = []
            recorded: list[float] = []
            with workers(path, 1):
                deadline = time.monotonic() + 600
                while len(query("SELECT DISTINCT host FROM results WHERE status = 'pass'")
                           ) < guests:
                    if time.monotonic() > deadline:
                        raise SystemExit("the guests did not pass a first attestation")
                    time.sleep(1)
                for round_ in range(rounds):
                    seen = len(hook.events())
                    written: dict[str, float] = {}
                    for name, (instance, target) in instances.items():
                        with connect(target, known_hosts=instance.known_hosts,
                                     identity=identity, timeout=30) as session:
                            session.run(["sh", "-c", "echo drift > /etc/hardhost-bench"])
                        written[name] = time.monotonic()
                    passed: dict[str, float] = {}
                    deadline = time.monotonic() + 900
                    while len(passed) < guests:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"round {round_ + 1}: not every guest passed")
                        for event in hook.events()[seen:]:
                            if event["event"] == "remediated" and event["host"] not in passed:
                                passed[event["host"]] = time.monotonic()
                                recorded.append(float(event["remediation_seconds"]))
                        time.sleep(0.5)
                    to_pass += [passed[name] - written[name] for name in names]
                    print(f"round {round_ + 1}: write to pass "
                          + ", ".join(f"{passed[n] - written[n]:.0f} s" for n in names),
                          flush=True)
        finally:
            for name in names:
                vm.stop(name, purge=True)
    print(f"\nDrift to a passing attestation, {guests} guests under TCG, {rounds} rounds, "
          f"interval {interval} s (the seeds' figure: 60 s)")
    print(f"{'':<44} {'p50':>7} {'p95':>7}")
    for label, values in (("write to /etc -> passing attestation (s)", to_pass),
                          ("first failing -> passing attestation (s)", recorded)):
        print(f"{label:<44} {statistics.median(values):7.1f} "
              f"{percentile(values, 0.95):7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=20)
    parser.add_argument("--sizes", default="200,600",
                        help="fleet sizes for the memory figure ('' to skip)")
    parser.add_argument("--api-hosts", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--image", type=Path, metavar="OUTDIR/NAME",
                        help="a built image to boot for the drift-to-pass figure (skipped "
                             "without one)")
    parser.add_argument("--guests", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--identity", type=Path,
                        default=Path.home() / ".cache/hardhost/keys/id_ed25519",
                        help="private key the image accepts (default: make demo's)")
    parser.add_argument("--trust-key", type=Path,
                        default=Path.home() / ".cache/hardhost/keys/signing.pub",
                        help="public key of the image's manifest (default: make demo's)")
    parser.add_argument("--only-remediation", action="store_true",
                        help="measure only the drift-to-pass figure (needs --image)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the hosts are sshd servers, PostgreSQL runs as postgres")
    setup_logging(verbose=False)
    if args.only_remediation and args.image is None:
        raise SystemExit("--only-remediation needs --image OUTDIR/NAME")
    if args.image is not None:
        remediation(args.image, args.identity, args.trust_key, args.guests, args.rounds,
                    args.interval)
    if args.only_remediation:
        return 0
    ensure_user(BENCH_USER)
    throughput(args.hosts, args.parallelism)
    sizes = sorted({int(n) for n in args.sizes.split(",") if n.strip()})
    if sizes:
        memory(sizes, args.parallelism)
    api_latency(args.api_hosts, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
