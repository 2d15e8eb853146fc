"""Fleet attestation: every inventory host checked concurrently, with bounded parallelism, so
one slow or dead host never stalls the rest. Results go to JSON, JUnit XML and SQLite."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from builder.errors import HardhostError, TrustError, Unreachable
from builder.manifest import HostManifest, read_verified
from verifier import reset
from verifier.attest import Connection, attest, manifest_digest
from verifier.inventory import FleetHost
from verifier.verdict import Verdict, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifests:
    """Each distinct manifest file, verified once for the whole run."""

    default: Path | None
    trusted: dict[str, Ed25519PublicKey]

    def load_all(self, hosts: Sequence[FleetHost]) -> dict[Path, tuple[HostManifest, str]]:
        paths = {h.manifest or self.default for h in hosts}
        if None in paths:
            missing = next(h.name for h in hosts if not (h.manifest or self.default))
            raise HardhostError(f"{missing}: no manifest: pass --manifest or set the host "
                                "variable hardhost_manifest")
        return {p: (read_verified(p, self.trusted)[0], manifest_digest(p))
                for p in paths if p is not None}


def _for_host(host: FleetHost, conn: Connection) -> Connection:
    """The run's connection options, with the host's own key where the inventory sets one."""
    return dataclasses.replace(conn, identity=host.identity or conn.identity)


def _failed(host: FleetHost, digest: str, exc: HardhostError) -> Verdict:
    return Verdict(str(host.target), "", now(), digest, (), str(exc), exc.exit_code)


def _check_one(host: FleetHost, manifest: HostManifest, digest: str,
               conn: Connection) -> Verdict:
    try:
        return attest(host.target, manifest, digest, _for_host(host, conn))
    except HardhostError as exc:
        return _failed(host, digest, exc)


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
                    f"{self.counts['error']} unreachable or refused")
            if self.tty:
                print(f"\r{line}", end="\n" if done == self.total else "", file=sys.stderr,
                      flush=True)
            elif done == self.total or done % max(1, self.total // 10) == 0:
                print(line, file=sys.stderr, flush=True)


def run(hosts: Sequence[FleetHost], manifests: Manifests, conn: Connection, forks: int,
        on_done: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Attest every host, at most `forks` at a time; verdicts in inventory order."""
    loaded = manifests.load_all(hosts)
    progress = Progress(len(hosts))

    def check(host: FleetHost) -> Verdict:
        path = host.manifest or manifests.default
        assert path is not None  # load_all refused hosts without a manifest
        manifest, digest = loaded[path]
        verdict = _check_one(host, manifest, digest, conn)
        progress.update(verdict)
        if on_done:
            on_done(verdict)
        return verdict

    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        return list(pool.map(check, hosts))


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """4 if any host failed trust, else 3 if any was unreachable, else 1 on drift, else 0."""
    codes = {v.exit_code for v in verdicts if v.error}
    if TrustError.exit_code in codes:
        return TrustError.exit_code
    if codes:
        return Unreachable.exit_code
    return 1 if any(v.status == "drift" for v in verdicts) else 0


def write_json(path: Path, verdicts: Sequence[Verdict]) -> None:
    counts = Counter(v.status for v in verdicts)
    document = {"summary": {"hosts": len(verdicts), **counts},
                "hosts": [v.to_dict() for v in verdicts]}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_junit(path: Path, verdicts: Sequence[Verdict]) -> None:
    """JUnit XML: one test case per host; drift is a failure, unreachable an error."""
    suite = ET.Element("testsuite", name="hardhost-fleet", tests=str(len(verdicts)),
                       failures=str(sum(v.status == "drift" for v in verdicts)),
                       errors=str(sum(v.status == "error" for v in verdicts)))
    for verdict in verdicts:
        case = ET.SubElement(suite, "testcase", classname="hardhost.attest", name=verdict.host)
        if verdict.error:
            ET.SubElement(case, "error", message=verdict.error)
        elif verdict.status == "drift":
            drift = [f for f in verdict.findings if f.counts()]
            failure = ET.SubElement(case, "failure",
                                    message=f"{len(drift)} findings: "
                                            f"{', '.join(f.id for f in drift[:5])}")
            failure.text = "\n".join(f"{f.id}: expected {f.expected!r}, observed {f.observed!r}"
                                     for f in drift)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def reset_drifted(hosts: Sequence[FleetHost], verdicts: Sequence[Verdict],
                  manifests: Manifests, conn: Connection, *, batch: int,
                  reset_timeout: float) -> list[Verdict]:
    """Reboot the drifted hosts, at most `batch` at a time, and attest each again once it
    answers with a new boot_id. Returns the verdicts with the drifted ones replaced."""
    loaded = manifests.load_all(hosts)
    drifted = [i for i, v in enumerate(verdicts) if v.status == "drift"]
    log.info("Resetting %d drifted hosts, %d at a time", len(drifted), batch)
    progress = Progress(len(drifted))

    def again(index: int) -> Verdict:
        host = hosts[index]
        path = host.manifest or manifests.default
        assert path is not None  # load_all refused hosts without a manifest
        manifest, digest = loaded[path]
        per_host = _for_host(host, conn)
        try:
            reset.reboot(host.target, known_hosts=per_host.known_hosts,
                         identity=per_host.identity, timeout=reset_timeout,
                         connect_timeout=min(per_host.timeout, 15.0),
                         ssh_config=per_host.ssh_config)
            verdict = attest(host.target, manifest, digest, per_host)
        except HardhostError as exc:
            verdict = _failed(host, digest, exc)
        progress.update(verdict)
        return verdict

    result = list(verdicts)
    if drifted:
        with ThreadPoolExecutor(max_workers=max(1, min(batch, len(drifted)))) as pool:
            for index, verdict in zip(drifted, pool.map(again, drifted), strict=True):
                result[index] = verdict
    return result
