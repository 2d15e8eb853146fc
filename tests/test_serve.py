"""hardhost serve over real OpenSSH: drift found within an interval, reset within the
budget, one signed webhook event per change, a receiver that was down served later, and
SIGTERM then a restart that resumes from the database. The hosts are FAKE image hosts whose
`systemctl reboot` restores their evidence (tests/support/fake_image_host.py); a real
reboot is tested on a booted image in tests/e2e."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.advisories import FEED, write_sbom
from tests.support.fake_image_host import RebootableHost, rebootable_host, recorded_manifest
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import write_signed
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.serve import (
    receiver,
    rows,
    serving,
    signed_by_secret,
    states,
    stop,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.e2e

@pytest.fixture
def two_hosts(tmp_path: Path, client_key: KeyPair) -> Iterator[dict[str, RebootableHost]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(rebootable_host(tmp_path / name, client_key))
               for name in ("web1", "web2")}


def test_drift_is_reset_and_each_change_is_one_signed_event(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    with receiver() as hook:
        setup = write_config(tmp_path, two_hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = true\nmax_concurrent = 1\n"
                                         "max_per_hour = 5")
        with serving(setup) as process:
            wait_for("both hosts to pass",
                     lambda: states(setup.database) == {"web1": "pass", "web2": "pass"})
            first_boot = two_hosts["web1"].boot_id()
            drifted_at = time.monotonic()
            two_hosts["web1"].drift()
            wait_for("the drift event and the remediated event",
                     lambda: [e["event"] for e in hook.events()] == ["drift", "remediated"])
            found_and_fixed = time.monotonic() - drifted_at
            # A few more intervals: a host that stays as it is sends nothing more.
            time.sleep(5)
            stop(process)
    assert found_and_fixed < 2 * 2 + 30  # an interval (with jitter), the reset, an interval
    assert two_hosts["web1"].reboots() == 1 and two_hosts["web2"].reboots() == 0
    assert two_hosts["web1"].boot_id() != first_boot
    drift, remediated = hook.events()
    assert all(signed_by_secret(h, b) for h, b in hook.got)
    assert drift["host"] == "web1" and drift["previous"] == "pass"
    assert drift["findings"] == ["sysctl.kernel.kptr_restrict"]
    assert remediated["host"] == "web1" and remediated["previous"] == "drift"
    seconds = remediated["remediation_seconds"]
    assert isinstance(seconds, float) and 0 < seconds < 60
    assert rows(setup.database, "SELECT host, reset FROM remediations") == [("web1", 1)]
    assert rows(setup.database, "SELECT host, outcome FROM resets") == [("web1", "pass")]
    # Every verdict is in the history the history command reads.
    shown = subprocess.run([sys.executable, "-m", "hardhost", "history", "--db",
                            str(setup.database), "--json"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert {h["host"] for h in json.loads(shown.stdout)} == {"web1", "web2"}


def test_an_event_waits_for_a_receiver_that_is_down_across_a_restart(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    port = free_port()  # nothing listens there yet
    setup = write_config(tmp_path, two_hosts, signing_keys, client_key, port,
                         remediation="enabled = false")
    with serving(setup) as process:
        wait_for("both hosts to pass",
                 lambda: states(setup.database) == {"web1": "pass", "web2": "pass"})
        two_hosts["web2"].drift()
        wait_for("web2 to drift", lambda: states(setup.database)["web2"] == "drift")
        wait_for("a failed delivery",
                 lambda: rows(setup.database,
                              "SELECT COUNT(*) FROM deliveries WHERE attempts > 0") == [(1,)])
        stop(process)
    # Stopped with the event undelivered; it is still owed after the restart.
    assert rows(setup.database, "SELECT state FROM deliveries") == [("pending",)]
    with receiver(port) as hook, serving(setup) as process:
        wait_for("the owed event", lambda: len(hook.got) >= 1, timeout=90)
        time.sleep(5)  # more intervals of drift: no new event
        stop(process)
    assert [(e["event"], e["host"]) for e in hook.events()] == [("drift", "web2")]
    assert signed_by_secret(*hook.got[0])
    assert two_hosts["web2"].reboots() == 0  # remediation is off
    # Resumed, not started over: web2 is still the drifted host it was, and the restart
    # announced nothing new.
    assert states(setup.database) == {"web1": "pass", "web2": "drift"}


def test_the_reset_budget_holds_when_several_hosts_drift_at_once(
        tmp_path: Path, signing_keys: SigningKeys, client_key: KeyPair) -> None:
    with ExitStack() as stack:
        # Each reboot takes 3 s before the new boot answers, so resets would overlap.
        hosts = {name: stack.enter_context(rebootable_host(tmp_path / name, client_key,
                                                           delay=3))
                 for name in ("a", "b", "c")}
        hook = stack.enter_context(receiver())
        setup = write_config(tmp_path, hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = true\nmax_concurrent = 1\n"
                                         "max_per_hour = 2")
        process = stack.enter_context(serving(setup))
        wait_for("every host to pass",
                 lambda: set(states(setup.database).values()) == {"pass"})
        for host in hosts.values():
            host.drift()
        wait_for("two resets to finish", lambda: len(rows(
            setup.database, "SELECT id FROM resets WHERE finished IS NOT NULL")) == 2,
            timeout=120)
        time.sleep(6)  # three more intervals: the third host must not be reset
        stop(process)
    resets = rows(setup.database, "SELECT host, started, finished FROM resets ORDER BY id")
    assert len(resets) == 2  # max_per_hour
    (_, _, first_end), (_, second_start, _) = resets
    assert isinstance(first_end, float) and isinstance(second_start, float)
    assert second_start >= first_end  # max_concurrent = 1: never two at once
    assert sum(h.reboots() for h in hosts.values()) == 2
    final = states(setup.database)
    assert sorted(final.values()) == ["drift", "pass", "pass"]


def test_a_host_that_fails_trust_is_never_reset(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    with receiver() as hook:
        setup = write_config(tmp_path, two_hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = true")
        # web2's key in known_hosts is another host's: a changed host key.
        known = tmp_path / "known_hosts"
        lines = known.read_text().splitlines()
        web1_key = lines[0].split(" ", 1)[1]
        known.write_text(f"{lines[0]}\n[127.0.0.1]:{two_hosts['web2'].host.port} {web1_key}\n")
        with serving(setup) as process:
            wait_for("web2's trust failure",
                     lambda: states(setup.database).get("web2") == "trust")
            time.sleep(5)
            stop(process)
    assert two_hosts["web2"].reboots() == 0 and two_hosts["web2"].commands() == []
    assert [(e["event"], e["host"]) for e in hook.events()] == [("trust", "web2")]
    assert rows(setup.database, "SELECT COUNT(*) FROM resets") == [(0,)]


def test_serve_refuses_a_webhook_secret_others_can_read(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    setup = write_config(tmp_path, two_hosts, signing_keys, client_key, free_port(),
                         remediation="enabled = false")
    os.chmod(tmp_path / "webhook.secret", 0o644)
    result = subprocess.run([sys.executable, "-m", "hardhost", "serve", str(setup.config)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("chmod 600 " + str(tmp_path / "webhook.secret"))
    assert not setup.database.exists()  # nothing started


def test_a_newer_feed_shows_which_hosts_became_exposed(
        tmp_path: Path, two_hosts: dict[str, RebootableHost], signing_keys: SigningKeys,
        client_key: KeyPair) -> None:
    """With [advisories], each passing host is kept with the known vulnerabilities of the
    image its manifest signs; a feed replaced while the service runs (as a download job
    replaces it) sends one `exposed` event per host that gained issues, and no more."""
    feed = tmp_path / "feed.json"
    feed.write_text("{}")
    with receiver() as hook:
        setup = write_config(tmp_path, two_hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = false",
                             extra='[advisories]\nfeed = "feed.json"\nfail_on = "medium"\n')
        sbom = write_sbom(tmp_path / "sbom.spdx.json")
        write_signed(tmp_path, dataclasses.replace(
            recorded_manifest(), sbom_digest=hashlib.sha256(sbom.read_bytes()).hexdigest()),
            signing_keys.key)

        def exposures() -> dict[str, list[str]]:
            try:
                found = rows(setup.database, "SELECT host, failing FROM exposures")
            except sqlite3.OperationalError:
                return {}
            return {str(h): json.loads(str(f)) for h, f in found}

        with serving(setup) as process:
            wait_for("both hosts to be checked against the empty feed",
                     lambda: exposures() == {"web1": [], "web2": []})
            fresh = tmp_path / "feed.new"
            fresh.write_bytes(FEED.read_bytes())
            os.replace(fresh, feed)
            wait_for("both hosts' exposed events",
                     lambda: sorted(e["host"] for e in hook.events()) == ["web1", "web2"])
            time.sleep(5)  # a few more intervals: nothing new, nothing more sent
            stop(process)
    medium = ["CVE-2025-32728", "CVE-2025-9230"]
    assert exposures() == {"web1": medium, "web2": medium}
    assert [e["event"] for e in hook.events()] == ["exposed", "exposed"]
    assert all(e["new"] == medium and e["image"] == "container-host" for e in hook.events())
    assert all(signed_by_secret(h, b) for h, b in hook.got)
