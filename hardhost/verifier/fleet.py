"""Fleet attestation: every inventory host checked concurrently, with bounded parallelism, so
one slow or dead host never stalls the rest. Results go to JSON, JUnit XML and SQLite.

A verdict is named by the host's inventory name (its address is a field of its own), and
whatever goes wrong with one host, from a bad variable to a bug, is that host's error
verdict: the run goes on and its outputs cover every host checked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hardhost.core.errors import HardhostError, TrustError, Unreachable, UsageError
from hardhost.core.inputs import read_bytes
from hardhost.core.outputs import printable, write_atomic
from hardhost.image.manifest import HostManifest, read_verified
from hardhost.verifier.attestation import Connection, attest, attest_and_reset, manifest_digest
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.verdict import Verdict, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    manifest: HostManifest
    digest: str


def load_manifest(path: Path, trusted: dict[str, Ed25519PublicKey]) -> Loaded:
    """The verified manifest at `path`. A missing or unreadable file is a `UsageError` (a
    typo in a path), checked without blocking; a bad signature or expiry a `TrustError`."""
    read_bytes(path, what="manifest")
    return Loaded(read_verified(path, trusted)[0], manifest_digest(path))


@dataclass(frozen=True)
class Manifests:
    """Each distinct manifest file, verified once for the whole run."""

    default: Path | None
    trusted: dict[str, Ed25519PublicKey]

    def check(self, hosts: Sequence[FleetHost]) -> None:
        """Before any host is contacted: the default manifest verifies, and every host has
        a manifest, its own or the default. Raises `UsageError` or `TrustError`."""
        if self.default is not None:
            load_manifest(self.default, self.trusted)
            return
        bare = [h.name for h in hosts if not h.error and h.manifest is None]
        if bare:
            more = f" (and {len(bare) - 1} more hosts)" if len(bare) > 1 else ""
            raise UsageError(f"{printable(bare[0])}: no manifest{more}. Fix with: --manifest "
                             "FILE, or the host variable hardhost_manifest")

    def load_all(self, hosts: Sequence[FleetHost]) -> dict[Path, Loaded | HardhostError]:
        """Each manifest the hosts need, or the error that stops the hosts that need it."""
        paths = {p for p in (h.manifest or self.default for h in hosts) if p is not None}
        loaded: dict[Path, Loaded | HardhostError] = {}
        for path in paths:
            try:
                loaded[path] = load_manifest(path, self.trusted)
            except HardhostError as exc:
                loaded[path] = exc
        return loaded


def _for_host(host: FleetHost, conn: Connection) -> Connection:
    """The run's connection options, with the host's own key where the inventory sets one."""
    return dataclasses.replace(conn, identity=host.identity or conn.identity)


def _failed(host: FleetHost, digest: str, error: str, exit_code: int) -> Verdict:
    return Verdict(host.name, "", now(), digest, (), error, exit_code, host.address)


def _named(host: FleetHost, verdict: Verdict) -> Verdict:
    return dataclasses.replace(verdict, host=host.name, address=host.address)


def _guarded(host: FleetHost, digest: str, work: Callable[[], Verdict]) -> Verdict:
    """`work()`, named after the host; any failure of it is the host's error verdict."""
    try:
        return _named(host, work())
    except HardhostError as exc:
        return _failed(host, digest, str(exc), exc.exit_code)
    except Exception as exc:
        # A bug, or a fault nobody foresaw, on one host must not lose the other hosts' runs.
        log.debug("%s: unexpected failure", host.name, exc_info=True)
        return _failed(host, digest, f"{host.address}: internal error: "
                       f"{type(exc).__name__}: {exc}", 1)


def check_host(host: FleetHost, loaded: dict[Path, Loaded | HardhostError],
               default: Path | None, conn: Connection) -> Verdict:
    """Attest one inventory host against its manifest in `loaded`; every failure is the
    host's error verdict."""
    if host.error or host.target is None:
        return _failed(host, "", host.error or f"{host.name}: no target", UsageError.exit_code)
    path = host.manifest or default
    if path is None:
        return _failed(host, "", f"{host.name}: no manifest. Fix with: --manifest FILE, or "
                       "the host variable hardhost_manifest", UsageError.exit_code)
    entry = loaded[path]
    if isinstance(entry, HardhostError):
        return _failed(host, "", f"{host.name}: {entry}", entry.exit_code)
    target = host.target
    return _guarded(host, entry.digest,
                    lambda: attest(target, entry.manifest, entry.digest, _for_host(host, conn)))


class Progress:
    """A one-line counter on stderr, rewritten in place on a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.counts, self.lock = total, Counter[str](), threading.Lock()
        self.tty = sys.stderr.isatty()

    def update(self, verdict: Verdict) -> None:
        with self.lock:
            self.counts[verdict.status] += 1
            done = sum(self.counts.values())
            line = (f"[{done:>{len(str(self.total))}}/{self.total}] "
                    f"{self.counts['pass']} pass, {self.counts['drift']} drift, "
                    f"{self.counts['error']} unreachable, refused or misconfigured")
            if self.tty:
                print(f"\r{line}", end="\n" if done == self.total else "", file=sys.stderr,
                      flush=True)
            elif done == self.total or done % max(1, self.total // 10) == 0:
                print(line, file=sys.stderr, flush=True)


def _each(items: Sequence[int], workers: int, work: Callable[[int], Verdict],
          progress: Progress, on_done: Callable[[Verdict], None] | None) -> list[Verdict]:
    """`work` on every item, `workers` at a time, results in order. On an interrupt the
    hosts not yet started are dropped and the interrupt goes on at once; the ones in flight
    end within their own timeouts, and report nothing more."""
    stopping = threading.Event()

    def one(item: int) -> Verdict:
        verdict = work(item)
        if not stopping.is_set():
            # Kept before it is counted: a run interrupted right after "[2/3]" has kept two.
            if on_done is not None:
                on_done(verdict)
            progress.update(verdict)
        return verdict

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))))
    try:
        futures = [pool.submit(one, item) for item in items]
        return [future.result() for future in futures]
    finally:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)


def run(hosts: Sequence[FleetHost], manifests: Manifests, conn: Connection, forks: int,
        on_done: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Attest every host, at most `forks` at a time; verdicts in inventory order.
    `on_done` sees each verdict as it comes, so an interrupted run keeps what it did."""
    loaded = manifests.load_all(hosts)

    def check(index: int) -> Verdict:
        return check_host(hosts[index], loaded, manifests.default, conn)

    return _each(range(len(hosts)), forks, check, Progress(len(hosts)), on_done)


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """The worst outcome: 4 if any host failed trust, else 3 if any was unreachable, else 2
    if a host's inventory variables or manifest path were wrong, else 1 on drift or any
    other failure, else 0."""
    codes = {v.exit_code for v in verdicts if v.error}
    for code in (TrustError.exit_code, Unreachable.exit_code, UsageError.exit_code):
        if code in codes:
            return code
    return 1 if codes or any(v.status == "drift" for v in verdicts) else 0


def write_json(path: Path, verdicts: Sequence[Verdict],
               advisories: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """The verdicts as JSON; `advisories`, by host, adds each host's known
    vulnerabilities (see `exposure`) and the summary's count of exposed hosts."""
    counts: dict[str, int] = dict(Counter(v.status for v in verdicts))
    hosts = [v.to_dict() for v in verdicts]
    if advisories is not None:
        for host in hosts:
            host["advisories"] = advisories.get(host["host"])
        counts["exposed"] = sum(bool(a["failing"]) for a in advisories.values())
    document = {"summary": {"hosts": len(verdicts), **counts}, "hosts": hosts}
    write_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_junit(path: Path, verdicts: Sequence[Verdict]) -> None:
    """JUnit XML: one test case per host; drift is a failure, unreachable an error. Host
    text goes through `printable`: XML 1.0 cannot carry control characters at all."""
    suite = ET.Element("testsuite", name="hardhost-fleet", tests=str(len(verdicts)),
                       failures=str(sum(v.status == "drift" for v in verdicts)),
                       errors=str(sum(v.status == "error" for v in verdicts)))
    for verdict in verdicts:
        case = ET.SubElement(suite, "testcase", classname="hardhost.attest",
                             name=printable(verdict.host))
        if verdict.address:
            properties = ET.SubElement(case, "properties")
            ET.SubElement(properties, "property", name="address",
                          value=printable(verdict.address))
        if verdict.error:
            ET.SubElement(case, "error", message=printable(verdict.error))
        elif verdict.status == "drift":
            drift = [f for f in verdict.findings if f.counts()]
            failure = ET.SubElement(case, "failure",
                                    message=f"{len(drift)} findings: "
                                            f"{', '.join(printable(f.id) for f in drift[:5])}")
            failure.text = "\n".join(
                f"{printable(f.id)}: expected '{printable(f.expected)}', "
                f"observed '{printable(f.observed)}'" for f in drift)
    write_atomic(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


def reset_drifted(hosts: Sequence[FleetHost], verdicts: Sequence[Verdict],
                  manifests: Manifests, conn: Connection, *, batch: int,
                  reset_timeout: float,
                  on_done: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Reset the drifted hosts, at most `batch` at a time, each by `attest_and_reset`: it
    is attested again first (the reboot is decided, and with a TPM the reboot judged, on
    what the host shows at that moment), rebooted, and attested once it answers with a new
    boot_id. Returns the verdicts with the drifted ones replaced by their last."""
    loaded = manifests.load_all(hosts)
    drifted = [i for i, v in enumerate(verdicts) if v.status == "drift"]
    log.info("Resetting %d drifted hosts, %d at a time", len(drifted), batch)

    def again(index: int) -> Verdict:
        before, after = reset_host(hosts[index], loaded, manifests.default, conn,
                                   reset_timeout)
        return after or before

    result = list(verdicts)
    again_all = _each(drifted, batch, again, Progress(len(drifted)), on_done)
    for index, verdict in zip(drifted, again_all, strict=True):
        result[index] = verdict
    return result


def reset_host(host: FleetHost, loaded: dict[Path, Loaded | HardhostError],
               default: Path | None, conn: Connection,
               reset_timeout: float) -> tuple[Verdict, Verdict | None]:
    """`attest_and_reset` on one inventory host that drifted: the verdict before, and the
    one after its reboot (None when it passed before, so it was not reset). A failure on
    the way (the host did not come back) is the host's error verdict, with None after."""
    path = host.manifest or default
    entry = loaded.get(path) if path is not None else None
    if host.target is None or not isinstance(entry, Loaded):
        return check_host(host, loaded, default, conn), None
    target, per_host = host.target, _for_host(host, conn)
    seen: list[Verdict | None] = []

    def reset_and_attest() -> Verdict:
        first, after = attest_and_reset(target, entry.manifest, entry.digest, per_host,
                                        reset_timeout)
        seen.extend((_named(host, first), after))
        return after or first

    last = _guarded(host, entry.digest, reset_and_attest)
    if not seen:  # no verdict before the failure: the failure is the verdict before
        return last, None
    first = seen[0]
    assert first is not None
    return first, (None if seen[1] is None else last)
