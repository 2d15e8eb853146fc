"""The verifier service's parts that need no host: its config, the state rule, the reset
budget under racing threads, the webhook signature and backoff."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.core.errors import SpecError, UsageError
from hardhost.core.settings import key_fields
from hardhost.verifier.service import config as service_config
from hardhost.verifier.service.alerts import backoff, signature
from hardhost.verifier.service.config import ServiceConfig, parse_config, read_secret
from hardhost.verifier.service.state import HostState, State, transition
from hardhost.verifier.service.store import Store
from tests.support.keys import SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.paths import REPO
from tests.support.serve import sqlite_query

MINIMAL = """
[fleet]
inventory = "hosts.ini"
trust_keys = ["signing.pub"]
[ssh]
known_hosts = "known_hosts"
"""


def test_signature_matches_githubs_documented_example() -> None:
    # The example of GitHub's "Validating webhook deliveries".
    assert signature(b"Hello, World!", b"It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff(40) == 600 and backoff(10**6) == 600


def test_the_example_config_parses_and_shows_every_key() -> None:
    text = service_config.example()
    config = parse_config(text, "/etc/hardhost/serve.toml")
    assert config.remediation.enabled and config.alerts.webhook[0].secret_file
    assert config.path("hosts.ini") == Path("/etc/hardhost/hosts.ini")

    def declared(cls: type, prefix: str = "") -> list[str]:
        names = []
        for f in key_fields(cls):
            inner = f.type if isinstance(f.type, type) else getattr(service_config, f.type,
                                                                    None)
            if isinstance(inner, type) and hasattr(inner, "__dataclass_fields__"):
                names += declared(inner, f"{prefix}{f.name}.")
            else:
                names.append(f"{prefix}{f.name}")
        return names

    shown = set(re.findall(r"^([a-z_]+) =", text, flags=re.M))
    for key in declared(ServiceConfig):
        if key == "alerts.webhook":
            continue  # an array of tables, each key of it shown below
        assert key.rsplit(".", 1)[-1] in shown, key
    for f in key_fields(service_config.Webhook):
        assert f.name in shown


def test_the_cli_prints_the_example() -> None:
    result = subprocess.run([sys.executable, "-m", "hardhost", "serve", "--example-config"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == service_config.example()


@pytest.mark.parametrize(("extra", "key", "problem"), [
    ("[schedule]\ninterval = 0\n", "schedule.interval", "give seconds"),
    ("[schedule]\ninterval = nan\n", "schedule.interval", "give seconds"),
    ("[schedule]\ninterval = \"60\"\n", "schedule.interval", "expected seconds"),
    ("[schedule]\njitter = 0.9\n", "schedule.jitter", "from 0 to 0.5"),
    ("[schedule]\nparallelism = 0\n", "schedule.parallelism", "from 1 to 1000"),
    ("[remediation]\nmax_per_hour = true\n", "remediation.max_per_hour", "an integer"),
    ("[remediation]\nenabled = 1\n", "remediation.enabled", "true or false"),
    ("[alerts]\nwebhook = [{url = \"ftp://x\", secret_file = \"s\"}]\n", "alerts.webhook",
     "http:// or https://"),
    ("[alerts]\nwebhook = [{url = \"http://x\"}]\n", "alerts.webhook", "secret_file: is required"),
    ("[alerts]\nwebhook = [{url = \"http://x\", secret_file = \"s\", retries = 3}]\n",
     "alerts.webhook", "unknown key"),
    ("[fleet.extra]\n", "fleet.extra", "unknown key"),
    ("database = \"mysql://db/hardhost\"\n", "database", "postgresql:// URL"),
])
def test_a_bad_config_names_its_key(extra: str, key: str, problem: str) -> None:
    # Top-level keys go before the first table.
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    if extra.startswith("[fleet."):
        text = MINIMAL + extra
    with pytest.raises(SpecError) as raised:
        parse_config(text, "serve.toml")
    assert raised.value.key == key and problem in raised.value.problem, raised.value
    assert str(raised.value).startswith(f"serve.toml: {key}: ")


def test_a_missing_key_is_named() -> None:
    with pytest.raises(SpecError, match=r"serve.toml: ssh.known_hosts: is required"):
        parse_config(MINIMAL.replace('known_hosts = "known_hosts"', ""), "serve.toml")


def test_a_secret_must_be_private_long_enough_and_a_regular_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 32 + "\n")
    secret.chmod(0o640)
    with pytest.raises(UsageError, match=r"readable by others. Fix with: chmod 600"):
        read_secret(secret, "webhook secret")
    secret.chmod(0o600)
    assert read_secret(secret, "webhook secret") == b"x" * 32
    secret.write_text("short")
    with pytest.raises(UsageError, match="shorter than 16 bytes"):
        read_secret(secret, "webhook secret")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match="fifo"):
        read_secret(fifo, "webhook secret")


def test_serve_check_reads_every_file_and_starts_nothing(tmp_path: Path,
                                                         signing_keys: SigningKeys) -> None:
    (tmp_path / "hosts.ini").write_text("web1 ansible_host=192.0.2.1\n")
    (tmp_path / "known_hosts").write_text("")
    write_signed(tmp_path, sample_manifest(), signing_keys.key)
    config = tmp_path / "serve.toml"
    config.write_text(MINIMAL.replace('"signing.pub"', f'"{signing_keys.public}"').replace(
        "[ssh]", 'manifest = "manifest.dsse.json"\n[ssh]'))
    result = subprocess.run([sys.executable, "-m", "hardhost", "serve", "--check",
                             str(config)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "are good" in result.stdout
    assert not (tmp_path / "hardhost.db").exists()
    # The manifest is signed by a key the config does not trust: exit 4 before any host.
    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config.write_text(config.read_text().replace(str(signing_keys.public), str(other)))
    result = subprocess.run([sys.executable, "-m", "hardhost", "serve", "--check",
                             str(config)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("hardhost: ") and len(result.stderr.splitlines()) == 1


def test_state_changes_are_announced_once_and_remediation_is_timed() -> None:
    unknown = HostState(State.UNKNOWN, None, False)
    passing, change = transition(unknown, State.PASS, 100.0)
    assert change is None  # a host seen passing for the first time is no news
    drifted, change = transition(passing, State.DRIFT, 110.0)
    assert change is not None and change.kind == "drift" and drifted.failing_since == 110.0
    still, change = transition(drifted, State.DRIFT, 120.0)
    assert change is None and still.failing_since == 110.0  # the first failure stays
    gone, change = transition(still, State.UNREACHABLE, 130.0, after_reset=True)
    assert change is not None and change.kind == "unreachable" and gone.reset_in_episode
    back, change = transition(gone, State.PASS, 145.5)
    assert change is not None and change.kind == "remediated"
    assert change.remediation_seconds == 35.5 and back == HostState(State.PASS, None, False)
    # Without a reset, a pass is just a pass, still timed.
    _, change = transition(HostState(State.DRIFT, 10.0, False), State.PASS, 20.0)
    assert change is not None and change.kind == "pass" and change.remediation_seconds == 10
    # A host that fails on first sight is news.
    _, change = transition(unknown, State.TRUST, 1.0)
    assert change is not None and change.kind == "trust"


def test_the_reset_budget_holds_under_racing_threads(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "service.db"))
    barrier = threading.Barrier(12)
    won: list[int] = []

    def claim(index: int) -> None:
        barrier.wait()
        reset_id = store.claim_reset(f"host{index}", max_concurrent=3, max_per_hour=5,
                                     stale_after=600)
        if reset_id is not None:
            won.append(reset_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 3  # at once
    for reset_id in won:
        store.finish_reset(reset_id, "pass")
    assert store.claim_reset("host0", max_concurrent=3, max_per_hour=5, stale_after=600)
    assert store.claim_reset("host0", max_concurrent=3, max_per_hour=5,
                             stale_after=600) is None  # already being reset
    assert store.claim_reset("host1", max_concurrent=3, max_per_hour=5, stale_after=600)
    # Five started within the hour: the hourly budget is spent.
    assert store.claim_reset("host2", max_concurrent=3, max_per_hour=5,
                             stale_after=600) is None
    # A reset whose worker died no longer holds a slot once it is stale.
    assert store.claim_reset("host3", max_concurrent=2, max_per_hour=50,
                             stale_after=0.0) is not None


@pytest.mark.parametrize("seconds", [1, 5, 10, 15, 20, 30, 60, 300, 900, 3600, 7200, 86400])
def test_an_interval_becomes_a_cron_that_croniter_steps_by_it(seconds: int) -> None:
    import croniter  # type: ignore[import-untyped]  # procrastinate's cron parser, untyped

    steps = croniter.croniter(service_config.interval_cron(seconds), 1796096700.0)
    first = steps.get_next(float)
    assert steps.get_next(float) - first == seconds


@pytest.mark.parametrize("seconds", [7, 45, 90, 5000, 1.5])
def test_postgresql_refuses_an_interval_off_the_clock(seconds: float) -> None:
    text = ('database = "postgresql://db.example/hardhost"\n' + MINIMAL
            + f"[schedule]\ninterval = {seconds}\n")
    with pytest.raises(SpecError, match=r"schedule\.interval: .*(divides a minute|whole)"):
        parse_config(text, "serve.toml")
    # SQLite's own schedule takes any interval.
    parse_config(text.replace("postgresql://db.example/hardhost", "x.db"), "serve.toml")


def test_a_listen_address_off_loopback_needs_tls() -> None:
    with pytest.raises(SpecError, match=r"http\.listen: 0\.0\.0\.0:8787 is not loopback"):
        parse_config(MINIMAL + '[http]\nlisten = "0.0.0.0:8787"\n', "serve.toml")
    parse_config(MINIMAL + '[http]\nlisten = "[::1]:8787"\n', "serve.toml")
    parse_config(MINIMAL + '[http]\nlisten = "0.0.0.0:8787"\ntls_cert = "c.pem"\n'
                 'tls_key = "k.pem"\n', "serve.toml")
    with pytest.raises(SpecError, match="set both tls_cert and tls_key"):
        parse_config(MINIMAL + '[http]\ntls_cert = "c.pem"\n', "serve.toml")
    with pytest.raises(SpecError, match="expected HOST:PORT"):
        parse_config(MINIMAL + '[http]\nlisten = "127.0.0.1:99999"\n', "serve.toml")


def test_the_dashboard_escapes_what_hosts_and_inventories_send(tmp_path: Path) -> None:
    """A host's findings come from the host and its name from an inventory: a name or an
    observed value that is markup, or a name that walks up the URL, is shown as text."""
    from hardhost.faces.dashboard import routes
    from hardhost.verifier.inventory import FleetHost
    from hardhost.verifier.transport import Target
    from hardhost.verifier.verdict import Finding, Severity, Verdict

    name = '"><img src=x onerror=alert(1)>../../metrics'
    store = Store(str(tmp_path / "service.db"))
    store.sync_hosts([FleetHost(name, Target("root", "127.0.0.1", 22), None, None,
                                groups=("<b>edge</b>",))])
    run = store.start_run("2026-12-01T00:00:00Z", "test")
    hostile = Finding("overlay.etc.modified", Severity.HIGH, "nothing",
                      "</code><script>alert(2)</script>")
    store.record(run, Verdict(name, "b" * 36, "2026-12-01T00:00:00Z", "d" * 64, (hostile,),
                              "", 0, "127.0.0.1:22", "<i>1</i>"), ())
    fleet_page, host_page = (route.endpoint for route in routes(store).routes)  # type: ignore[attr-defined]
    pages = [fleet_page(state=None, after=""), host_page(name=name)]
    for page in pages:
        assert "<img" not in page and "<script" not in page and "<b>edge" not in page
        assert "<i>1" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0]
    # The link to the host's page keeps its slashes and dots inside the one path segment.
    assert 'href="/hosts/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E..%2F..%2Fmetrics"' \
        in pages[0]
    assert "&lt;/code&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in pages[1]
    store.close()


def test_retention_deletes_old_verdicts_and_their_empty_runs(tmp_path: Path) -> None:
    from hardhost.verifier import history
    from hardhost.verifier.verdict import Verdict

    location = str(tmp_path / "service.db")
    store = Store(location)
    old = store.start_run("2026-01-01T00:00:00Z", "serve")
    new = store.start_run("2026-06-01T00:00:00Z", "serve")
    for run, time in ((old, "2026-01-01T00:00:10Z"), (new, "2026-06-01T00:00:10Z")):
        for host in ("a", "b"):
            store.record(run, Verdict(host, "b" * 36, time, "d" * 64), ())
    # An update recorded into the same database keeps its run, whatever its age.
    history.record_update(location, "2026-01-02T00:00:00Z", "update", "a", "updated", "1",
                          "2", "", [Verdict("a", "c" * 36, "2026-01-02T00:00:00Z", "d" * 64)])
    assert store.prune("2026-03-01T00:00:00Z") == 3
    assert [(v.host, v.last_time) for v in history.summary(location)] == [
        ("a", "2026-06-01T00:00:10Z"), ("b", "2026-06-01T00:00:10Z")]
    runs = [row[0] for row in sqlite_query(Path(location))("SELECT started FROM runs ORDER BY id")]
    assert runs == ["2026-06-01T00:00:00Z", "2026-01-02T00:00:00Z"]
    assert [u.outcome for u in history.updates(location)] == ["updated"]
    assert store.prune("2026-03-01T00:00:00Z") == 0
    store.close()



def test_an_exposure_is_kept_only_when_proven_and_announced_only_when_it_grows(
        tmp_path: Path) -> None:
    from hardhost.verifier.exposure import Exposure
    from hardhost.verifier.inventory import FleetHost
    from hardhost.verifier.transport import Target

    store = Store(str(tmp_path / "service.db"))
    store.sync_hosts([FleetHost("a", Target("root", "127.0.0.1", 22), None, None)])
    proven = Exposure("a", True, "img 1", ("CVE-1",), {"failing": 1})
    assert store.record_exposure("t1", proven, ["hook"]) == ["CVE-1"]
    assert store.record_exposure("t2", proven, ["hook"]) == []  # nothing new, no event
    # A host that did not pass proves nothing: its last proven exposure stays.
    assert store.record_exposure("t3", Exposure("a", False, reason="drift"), ["hook"]) == []
    grown = Exposure("a", True, "img 1", ("CVE-1", "CVE-2"), {"failing": 2})
    assert store.record_exposure("t4", grown, ["hook"]) == ["CVE-2"]
    assert store.exposure("a") == {"time": "t4", "image": "img 1",
                                   "failing": ["CVE-1", "CVE-2"], "counts": {"failing": 2},
                                   "reason": ""}
    assert store.exposed_hosts() == 1 and store.summary()["exposed"] == 1
    events = sqlite_query(tmp_path / "service.db")("SELECT kind, host FROM events")
    assert events == [("exposed", "a"), ("exposed", "a")]
    assert len(store.due(now=1e12)) == 2  # one delivery each, in the outbox
    store.record_exposure("t5", Exposure("a", True, "img 2", (), {}), ["hook"])
    assert store.exposed_hosts() == 0
    store.close()
