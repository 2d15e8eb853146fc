"""The AK registry file read as untrusted input: bounded, strict, never blocking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hardhost.core.errors import UsageError
from hardhost.verifier.tpm_ek import load_ca_bundle
from hardhost.verifier.tpm_registry import AkRegistry, HostId

HOST = HostId("127.0.0.1:2222", "SHA256:" + "A" * 43)


def test_no_registry_yet_is_empty(tmp_path: Path) -> None:
    assert AkRegistry(tmp_path / "aks.json").get(HOST) is None


@pytest.mark.parametrize(("content", "reason"), [
    ('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"format": "hardhost-ak-registry/1", "hosts": {}, "hosts": {"x": 1}}',
     "'hosts' appears twice"),
    ('{"format": "hardhost-ak-registry/1", "hosts": {"x": NaN}}', "NaN is not a JSON number"),
    ('{"format": "hardhost-ak-registry/1", "hosts": {"x": []}}', "hosts.x: expected exactly"),
    ('{"format": "hardhost-ak-registry/1", "hosts": []}', "hosts: expected an object"),
])
def test_a_malformed_registry_is_one_usage_error(tmp_path: Path, content: str,
                                                 reason: str) -> None:
    path = tmp_path / "aks.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=reason):
        AkRegistry(path).get(HOST)


def test_a_registry_that_is_not_a_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "aks.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="AK registry is a FIFO"):
        AkRegistry(fifo).get(HOST)
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="AK registry is a device"):
        AkRegistry(link).get(HOST)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "absent")
    with pytest.raises(UsageError, match="AK registry not found"):
        AkRegistry(dangling).get(HOST)


def test_an_oversized_registry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "aks.json"
    with path.open("wb") as f:
        f.truncate((64 << 20) + 1)
    with pytest.raises(UsageError, match="larger than"):
        AkRegistry(path).get(HOST)


def test_a_fifo_at_the_registrys_lock_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "aks.json.lock")
    registry = AkRegistry(tmp_path / "aks.json")
    with pytest.raises(UsageError, match="lock is not a regular file"), registry._locked():
        pass


def test_an_ek_ca_bundle_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ca.pem")
    with pytest.raises(UsageError, match="EK CA bundle is a FIFO"):
        load_ca_bundle(tmp_path / "ca.pem")
