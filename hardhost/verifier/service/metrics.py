"""The service's Prometheus metrics, with prometheus_client: hosts by state (read from the
database at each scrape, so every worker reports the whole fleet), attestation and
remediation durations as histograms, and counters of errors, resets and undelivered
alerts (this worker's own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hardhost.verifier.service.state import State, classify
from hardhost.verifier.verdict import Verdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Attestations take from tens of milliseconds (loopback) to minutes (TPM quotes under TCG);
# a remediation from seconds to the reset timeout and the next interval.
_ATTESTATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_REMEDIATION_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)


class _HostStates(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]],
                 exposed: Callable[[], int] | None) -> None:
        self.counts, self.exposed = counts, exposed

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("hardhost_hosts", "Hosts in the inventory, by state",
                                   labels=["state"])
        counts = self.counts()
        for state in State:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family
        if self.exposed is not None:
            yield GaugeMetricFamily(
                "hardhost_hosts_exposed", "Hosts whose image, when they last passed, had "
                "known vulnerabilities that count", value=self.exposed())


class Metrics:
    def __init__(self, host_counts: Callable[[], Mapping[str, int]],
                 exposed: Callable[[], int] | None = None) -> None:
        """`exposed`, when the service watches a feed, counts the exposed hosts."""
        self.registry = CollectorRegistry()
        self.registry.register(_HostStates(host_counts, exposed))
        self.attestation = Histogram(
            "hardhost_attestation_seconds", "Time to attest one host", ["result"],
            buckets=_ATTESTATION_BUCKETS, registry=self.registry)
        self.remediation = Histogram(
            "hardhost_remediation_seconds",
            "From a host's first failing attestation to its next pass",
            ["reset"], buckets=_REMEDIATION_BUCKETS, registry=self.registry)
        self.errors = Counter("hardhost_attestation_errors",
                              "Attestations that ended in an error, by kind", ["kind"],
                              registry=self.registry)
        self.resets = Counter("hardhost_resets", "Resets by reboot, by outcome", ["outcome"],
                              registry=self.registry)
        self.alerts_failed = Counter("hardhost_alert_delivery_failures",
                                     "Webhook deliveries that failed (each is tried again)",
                                     registry=self.registry)

    def attested(self, verdict: Verdict, seconds: float) -> None:
        state = classify(verdict)
        self.attestation.labels(result=state.value).observe(seconds)
        if verdict.error:
            self.errors.labels(kind=state.value).inc()

    def remediated(self, seconds: float, reset: bool) -> None:
        self.remediation.labels(reset="true" if reset else "false").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
