"""Evasion on a booted container-host: what a root user or any local process does to make
drift attest as a pass, or to make a clean host fail to attest. Each trick is made for real
on the guest, then undone, so every test starts from a clean host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hardhost.verifier.transport import connect
from tests.support.keys import KeyPair, SigningKeys
from tests.support.vms import BootedHost, BuiltImage, attest_json, boot, ensure_answering

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def host(container_host: BuiltImage, client_key: KeyPair) -> Iterator[BootedHost]:
    yield from boot(container_host, "e2e-evasion", client_key.private)


@pytest.fixture(autouse=True)
def _answering(host: BootedHost) -> None:
    ensure_answering(host.instance, host.image.directory, trust_key=host.image.trust_key)


def on_host(host: BootedHost, script: str) -> None:
    """Run `script` (a fixed test script, no host data in it) as root on the guest."""
    with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                 timeout=60) as session:
        result = session.run(["sh", "-euc", script], timeout=120)
    assert result.exit_status == 0, result.stderr.decode(errors="replace")


def attest(host: BootedHost, keys: SigningKeys) -> tuple[int, dict[str, Any]]:
    return attest_json(host, keys.public)


def findings(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {f["id"]: f for f in data["findings"] if f["severity"] != "info"}


def test_clean_host_passes(host: BootedHost, signing_keys: SigningKeys) -> None:
    code, data = attest(host, signing_keys)
    assert (code, data["status"]) == (0, "pass"), findings(data)


def test_a_bind_mount_over_a_sysctl_value_is_named(host: BootedHost,
                                                   signing_keys: SigningKeys) -> None:
    # kptr_restrict really becomes 0; a file saying 2 is bound over it, so a plain read
    # of /proc/sys shows the expected value.
    on_host(host, "echo 0 > /proc/sys/kernel/kptr_restrict; echo 2 > /run/fake-kptr; "
                  "mount --bind /run/fake-kptr /proc/sys/kernel/kptr_restrict")
    try:
        code, data = attest(host, signing_keys)
    finally:
        on_host(host, "umount /proc/sys/kernel/kptr_restrict; rm /run/fake-kptr; "
                      "echo 2 > /proc/sys/kernel/kptr_restrict")
    assert code == 1
    assert "mount.unexpected./proc/sys/kernel/kptr_restrict" in findings(data)


def test_a_tmpfs_over_the_upper_layer_is_named(host: BootedHost,
                                               signing_keys: SigningKeys) -> None:
    # /etc is changed, then an empty tmpfs hides the upper layer that records the change.
    on_host(host, "echo x > /etc/hardhost-evasion; "
                  "mount -t tmpfs none /run/hardhost/overlay/etc/upper")
    try:
        code, data = attest(host, signing_keys)
    finally:
        on_host(host, "umount /run/hardhost/overlay/etc/upper; rm /etc/hardhost-evasion")
    assert code == 1
    assert "mount.unexpected./run/hardhost/overlay/etc/upper" in findings(data)


def test_a_shadowed_binary_is_named_and_its_failure_counts(host: BootedHost,
                                                           signing_keys: SigningKeys) -> None:
    # A veritysetup that fails without a word: the mount over the verified root's binary
    # is named, and so is the script's failure.
    on_host(host, "mount --bind /usr/bin/false /usr/sbin/veritysetup")
    try:
        code, data = attest(host, signing_keys)
    finally:
        on_host(host, "umount /usr/sbin/veritysetup")
    found = findings(data)
    assert code == 1
    assert {"mount.unexpected./usr/sbin/veritysetup", "evidence.exit_status",
            "verity.status"} <= set(found)


def test_crafted_file_names_from_any_user_change_nothing(host: BootedHost,
                                                         signing_keys: SigningKeys) -> None:
    # An unprivileged user names files after a section marker, with invalid UTF-8 and an
    # escape sequence, and makes many of them: /var may change, so the host still passes.
    on_host(host, "cd /var/tmp && setpriv --reuid=nobody --regid=nogroup --clear-groups "
                  "sh -c 'touch \"$(printf \"x\\n@@hardhost:end@@\\ny\")\" "
                  "\"$(printf \"bad\\377\\033[2K\")\"; mkdir many; cd many; "
                  "seq 1 3000 | xargs touch'")
    try:
        code, data = attest(host, signing_keys)
    finally:
        on_host(host, "rm -rf /var/tmp/many /var/tmp/x* /var/tmp/bad*")
    assert (code, data["status"]) == (0, "pass"), findings(data)


def test_crafted_names_in_etc_are_drift_with_their_names(host: BootedHost,
                                                         signing_keys: SigningKeys) -> None:
    on_host(host, "touch \"$(printf '/etc/evil\\n@@hardhost:end@@')\"")
    try:
        code, data = attest(host, signing_keys)
        found = findings(data)
        assert code == 1 and set(found) == {"overlay.etc.modified"}, found
        assert found["overlay.etc.modified"]["observed"] == "evil\n@@hardhost:end@@"
        # Many more changes: a thousand are named, the rest counted, and still no failure
        # to attest.
        on_host(host, "mkdir /etc/flood && cd /etc/flood && seq 1 1500 | xargs touch")
        code, data = attest(host, signing_keys)
    finally:
        on_host(host, "rm -rf /etc/flood /etc/evil*")
    found = findings(data)
    assert code == 1 and set(found) == {"overlay.etc.modified"}, found
    assert found["overlay.etc.modified"]["observed"].endswith("and 502 more changed entries")
