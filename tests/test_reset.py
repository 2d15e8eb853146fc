"""The one reset-then-attest, `attest_and_reset`, where it can be exercised without
rebooting anything: against the FAKE image host (a real sshd whose forced command answers
only the evidence script, so not even a broken reset could run `systemctl reboot` here).
Reboots themselves are tested on booted images in tests/e2e/test_attest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardhost.core.errors import Unreachable
from hardhost.verifier import Connection, Target, attest_and_reset
from tests.support.fake_image_host import image_host, recorded_manifest
from tests.support.keys import KeyPair
from tests.support.net import free_port

pytestmark = pytest.mark.e2e


def test_a_clean_host_is_attested_once_and_not_reset(client_key: KeyPair,
                                                     tmp_path: Path) -> None:
    with image_host(tmp_path / "image", client_key) as host:
        target = Target("root", "127.0.0.1", host.host.port)
        before, after = attest_and_reset(target, recorded_manifest(), "d" * 64,
                                         Connection(host.host.known_hosts, client_key.private),
                                         reset_timeout=5)
        asked = host.commands()
    assert before.status == "pass" and after is None
    assert before.host == str(target) and before.manifest_digest == "d" * 64
    assert len(before.boot_id) == 36
    # One evidence run; no boot_id read, no reboot asked for.
    assert len(asked) == 1 and asked[0].startswith("/bin/sh -s"), asked


def test_an_unreachable_host_is_unreachable_before_any_reset(client_key: KeyPair,
                                                             tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(Unreachable) as raised:
        attest_and_reset(Target("root", "127.0.0.1", free_port()), recorded_manifest(),
                         "d" * 64, Connection(known, client_key.private, timeout=5),
                         reset_timeout=5)
    assert raised.value.exit_code == 3
