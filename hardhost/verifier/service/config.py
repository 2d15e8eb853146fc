"""The verifier service's config: one TOML file, declared and read like an image spec.

Relative paths are relative to the config file's folder. Secrets (the API token, webhook
secrets) are named by file, never written inline, and their files must be private (0600).
"""

from __future__ import annotations

import re
import stat
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hardhost.advisories.scan import Level
from hardhost.core.durations import MAX_TIMEOUT, duration
from hardhost.core.errors import SpecError, UsageError
from hardhost.core.inputs import read_text
from hardhost.core.settings import Invalid, build, parse_toml, show, text, tname
from hardhost.core.settings import declare as _help
from hardhost.verifier.database import is_postgres

MAX_CONFIG_BYTES = 256 << 10
# A secret file holds a token or a key: a few hundred bytes.
MAX_SECRET_BYTES = 4096
_URL_RE = re.compile(r"https?://[!-~]+")
_LISTEN_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):([0-9]{1,5})")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_LEVELS = tuple(level.value for level in Level)


def _seconds(low: float, high: float) -> typing.Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected seconds (a number), got {tname(value)}")
        try:
            number = duration(value, what="seconds", maximum=high)
        except UsageError:
            raise Invalid(f"{show(value)}: give seconds, from {low:g} to {high:g}") from None
        if number < low:
            raise Invalid(f"{show(value)}: give seconds, from {low:g} to {high:g}")
        return number
    return parse


def _count(low: int, high: int) -> typing.Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(f"{show(value)}: expected an integer from {low} to {high}")
        return value
    return parse


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 0.5:
        raise Invalid(f"{show(value)}: expected a fraction of the interval, from 0 to 0.5")
    return float(value)


def _path(value: Any) -> str:
    return text(value, "a path")


def _paths(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"expected a non-empty list of paths, got {tname(value)}")
    return tuple(_path(item) for item in value)


def _listen(value: Any) -> str:
    address = text(value, "HOST:PORT")
    match = _LISTEN_RE.fullmatch(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise Invalid(f"{show(value)}: expected HOST:PORT, e.g. 127.0.0.1:8787 or [::1]:8787")
    return address


def _database(value: Any) -> str:
    location = text(value, "a path or a postgresql:// URL")
    if "://" in location and not is_postgres(location):
        raise Invalid(f"{show(value)}: expected an SQLite file's path or a postgresql:// URL")
    return location


def _webhook_url(value: Any) -> str:
    url = text(value, "an http(s) URL")
    if not _URL_RE.fullmatch(url):
        raise Invalid(f"{show(value)}: expected an http:// or https:// URL")
    return url


@dataclass(frozen=True)
class Fleet:
    """The hosts and what they must run."""

    inventory: str = field(metadata=_help(
        "Ansible inventory of the hosts (INI, YAML or a folder), read again each interval",
        _path))
    trust_keys: tuple[str, ...] = field(metadata=_help(
        "Ed25519 public keys a manifest must be signed with", _paths))
    manifest: str = field(default="", metadata=_help(
        "signed manifest the hosts are attested against, unless a host sets "
        "`hardhost_manifest`", _path))
    allow_executable_inventory: bool = field(default=False, metadata=_help(
        "let Ansible run an executable inventory (a dynamic inventory script)"))


@dataclass(frozen=True)
class SSH:
    """How hosts are reached: the options of `hardhost attest`."""

    known_hosts: str = field(metadata=_help("known_hosts holding the hosts' keys", _path))
    identity: str = field(default="", metadata=_help(
        "private key to log in with (else the ssh config's, or ssh-agent's)", _path))
    ssh_config: str = field(default="", metadata=_help(
        "OpenSSH client config (HostName, Port, User, IdentityFile, ProxyJump)", _path))
    timeout: float = field(default=30.0, metadata=_help(
        "bound on connecting and on collecting evidence, in seconds",
        _seconds(1, MAX_TIMEOUT)))
    tpm: bool = field(default=False, metadata=_help(
        "also verify each host's TPM quote against the manifest's predicted PCRs"))
    tpm_ca: str = field(default="", metadata=_help(
        "PEM CA certificates a TPM's EK certificate must chain to (to enroll its AK)", _path))
    ak_registry: str = field(default="", metadata=_help(
        "enrolled attestation keys (default: ~/.local/state/hardhost/aks.json)", _path))


@dataclass(frozen=True)
class Schedule:
    """When hosts are attested."""

    interval: float = field(default=60.0, metadata=_help(
        "seconds between two attestations of a host", _seconds(1, 86400)))
    jitter: float = field(default=0.1, metadata=_help(
        "each host's attestation starts up to this fraction of the interval late, so hosts "
        "are not all contacted at the same moment", _fraction))
    parallelism: int = field(default=20, metadata=_help(
        "hosts attested at once, per worker", _count(1, 1000)))


@dataclass(frozen=True)
class Remediation:
    """Whether, and how often, a drifted host is reset by reboot."""

    enabled: bool = field(default=False, metadata=_help(
        "reset a drifted host by reboot and attest it again (never a host that failed "
        "trust: that needs a person)"))
    max_concurrent: int = field(default=1, metadata=_help(
        "resets in progress at once, fleet-wide", _count(1, 1000)))
    max_per_hour: int = field(default=10, metadata=_help(
        "resets started in any hour, fleet-wide", _count(1, 100000)))
    reset_timeout: float = field(default=300.0, metadata=_help(
        "seconds a host has to come back from its reboot", _seconds(1, MAX_TIMEOUT)))


def _level(value: Any) -> str:
    if value not in _LEVELS:
        raise Invalid(f"{show(value)}: expected one of {', '.join(_LEVELS)}")
    return str(value)


def _optional_paths(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(f"expected a list of paths, got {tname(value)}")
    return tuple(_path(item) for item in value)


@dataclass(frozen=True)
class Advisories:
    """Known vulnerabilities of the images the hosts prove they run."""

    feed: str = field(default="", metadata=_help(
        "Debian security tracker JSON, downloaded by a job of its own; read again when the "
        "file changes. Each passing host is shown with the issues of its image's SBOM, and "
        "an `exposed` event is sent when a host gains issues. Empty: not checked", _path))
    fail_on: str = field(default="low", metadata=_help(
        "the lowest urgency of a fixable issue that counts (low, medium, high; never: none "
        "counts)", _level))
    fail_on_unfixed: bool = field(default=False, metadata=_help(
        "also count open and undetermined issues"))
    vex: tuple[str, ...] = field(default=(), metadata=_help(
        "OpenVEX 0.2 waivers: a waived issue does not count", _optional_paths))


@dataclass(frozen=True)
class Retention:
    """How long verdicts are kept."""

    days: int = field(default=30, metadata=_help(
        "days each verdict is kept; older ones, and the runs left without any, are deleted "
        "as each interval starts (hosts' states, remediation times and alerts stay)",
        _count(1, 36500)))


@dataclass(frozen=True)
class HTTP:
    """The API, the metrics and the dashboard."""

    listen: str = field(default="127.0.0.1:8787", metadata=_help(
        "address to listen on: loopback unless another address is given, and then only "
        "with TLS", _listen))
    token_file: str = field(default="", metadata=_help(
        "file (mode 0600) holding the bearer token every request must carry; empty: no "
        "HTTP server", _path))
    tls_cert: str = field(default="", metadata=_help("PEM certificate chain for HTTPS", _path))
    tls_key: str = field(default="", metadata=_help(
        "PEM private key for HTTPS (mode 0600)", _path))

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Webhook:
    """One alert target."""

    url: str = field(metadata=_help("where each state change is POSTed as JSON",
                                    _webhook_url))
    secret_file: str = field(metadata=_help(
        "file (mode 0600) holding the HMAC-SHA256 key of the `X-Hub-Signature-256` header",
        _path))
    timeout: float = field(default=10.0, metadata=_help(
        "seconds one delivery may take", _seconds(1, 300)))


def _webhooks(value: Any) -> tuple[Webhook, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise Invalid(f"expected an array of tables ([[alerts.webhook]]), got {tname(value)}")
    try:
        return tuple(typing.cast(Webhook, build(Webhook, v, "", "")) for v in value)
    except SpecError as exc:
        raise Invalid(f"webhook {exc.key}: {exc.problem}") from None


@dataclass(frozen=True)
class Alerts:
    """Where state changes go."""

    webhook: tuple[Webhook, ...] = field(default=(), metadata=_help(
        "webhooks, each `[[alerts.webhook]]` with `url`, `secret_file` and `timeout`",
        _webhooks))
    syslog: bool = field(default=True, metadata=_help(
        "also log each state change to syslog (the journal, under systemd)"))
    max_attempts: int = field(default=20, metadata=_help(
        "deliveries tried per event and webhook, with backoff, before it is dropped",
        _count(1, 1000)))


@dataclass(frozen=True)
class ServiceConfig:
    """A `hardhost serve` config."""

    fleet: Fleet
    ssh: SSH
    database: str = field(default="hardhost.db", metadata=_help(
        "SQLite file holding the hosts' states, every verdict and the alert outbox (one "
        "worker), or a `postgresql://` URL that several workers share (each host leased to "
        "one worker per interval through procrastinate)", _database))
    schedule: Schedule = field(default_factory=Schedule)
    remediation: Remediation = field(default_factory=Remediation)
    retention: Retention = field(default_factory=Retention)
    advisories: Advisories = field(default_factory=Advisories)
    http: HTTP = field(default_factory=HTTP)
    alerts: Alerts = field(default_factory=Alerts)
    source: str = ""

    def path(self, value: str) -> Path:
        """A path of the config, relative to its folder."""
        return Path(self.source).parent / Path(value).expanduser()

    def optional_path(self, value: str) -> Path | None:
        return self.path(value) if value else None


def interval_cron(seconds: float) -> str:
    """The cron of an interval that divides a minute, an hour or a day evenly, as
    procrastinate's periodic tasks take it (croniter's: seconds are the sixth field, last).
    `ValueError` otherwise."""
    whole = int(seconds)
    if whole != seconds:
        raise ValueError("a whole number of seconds")
    if whole < 60 and 60 % whole == 0:
        return f"* * * * * */{whole}"
    if whole % 60 == 0 and whole < 3600 and 3600 % whole == 0:
        return f"*/{whole // 60} * * * * 0"
    if whole % 3600 == 0 and whole <= 86400 and 86400 % whole == 0:
        return f"0 */{whole // 3600} * * * 0"
    raise ValueError("an interval that divides a minute, an hour or a day evenly")


def parse_config(source: str, path: str) -> ServiceConfig:
    config = typing.cast(ServiceConfig, build(ServiceConfig, parse_toml(source, path), path))
    config = ServiceConfig(**{**config.__dict__, "source": path})
    if is_postgres(config.database):
        try:
            interval_cron(config.schedule.interval)
        except ValueError as exc:
            raise SpecError(path, "schedule.interval", f"{config.schedule.interval:g}: with "
                            f"PostgreSQL, workers start intervals on the clock: give {exc} "
                            "(10, 15, 30, 60, 300, ...)") from None
    http = config.http
    if bool(http.tls_cert) != bool(http.tls_key):
        raise SpecError(path, "http.tls_cert", "set both tls_cert and tls_key, or neither")
    if http.host not in _LOOPBACK and not http.tls_cert:
        # The bearer token would cross the network in clear text.
        raise SpecError(path, "http.listen", f"{http.listen} is not loopback: set "
                        "http.tls_cert and http.tls_key to listen there")
    return config


def load_config(path: Path) -> ServiceConfig:
    return parse_config(read_text(path, what="config", limit=MAX_CONFIG_BYTES), str(path))


def require_private(path: Path, what: str) -> None:
    """`path` is readable by its owner alone: a key or token others can read is no secret."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if stat.S_ISREG(mode) and mode & 0o077:
        raise UsageError(f"{path}: the {what} is readable by others. Fix with: chmod 600 "
                         f"{path}")


def read_secret(path: Path, what: str) -> bytes:
    """A secret's bytes (surrounding whitespace dropped), from a private regular file."""
    require_private(path, what)
    secret = read_text(path, what=what, limit=MAX_SECRET_BYTES).strip().encode()
    if len(secret) < 16:
        raise UsageError(f"{path}: the {what} is shorter than 16 bytes. Fix with: "
                         f"head -c 32 /dev/urandom | base64 > {path}")
    return secret


def example() -> str:
    """The commented example `hardhost serve --example-config` prints."""
    return resources.files(__package__).joinpath("example.toml").read_text()
