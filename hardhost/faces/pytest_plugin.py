"""pytest plugin `hardhost`: a signed manifest becomes testinfra checks against hosts.

    pytest --hosts=paramiko://root@host:22 --ssh-identity-file=KEY \\
        --hardhost-manifest manifest.dsse.json --hardhost-trust-key signing.pub \\
        --hardhost-known-hosts known_hosts

Each expected fact (verity, mounts, sysctls, AppArmor profiles, sshd settings, services) is one
test with a readable id, so drift shows as named failures in any pytest report. Commands run
through pytest-testinfra's paramiko backend, over a client whose host key hardhost checked
strictly (testinfra's own client would accept an unknown key with a warning).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hardhost.verifier import (
    HostManifest,
    Target,
    load_trusted_keys,
    open_client,
    parse_profiles,
    parse_sshd,
    read_verified,
)

Check = Callable[[Any], None]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hardhost", "attest hosts against a hardhost manifest")
    group.addoption("--hardhost-manifest", type=Path, metavar="FILE",
                    help="signed manifest.dsse.json whose facts become tests")
    group.addoption("--hardhost-trust-key", type=Path, metavar="PUB",
                    help="trusted manifest signing key, or a folder of *.pub keys")
    group.addoption("--hardhost-known-hosts", type=Path, metavar="FILE",
                    default=Path("~/.ssh/known_hosts").expanduser(),
                    help="known_hosts holding the hosts' keys (checked strictly)")


class HardhostFact(pytest.Item):
    """One expected fact of one host."""

    def __init__(self, *, host: Any, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.check = check

    def runtest(self) -> None:
        self.check(self.host)

    def reportinfo(self) -> tuple[str, int, str]:
        return "hardhost", 0, self.name


def _equal(what: str, expected: str, observed: str) -> None:
    if expected != observed:
        raise AssertionError(f"{what}: expected {expected!r}, observed {observed!r}")


def facts(manifest: HostManifest) -> dict[str, Check]:
    """The checks a manifest implies, by readable id."""
    checks: dict[str, Check] = {}

    def verity(host: Any) -> None:
        status = dict(line.strip().split(":", 1) for line in
                      host.check_output("veritysetup status root").splitlines() if ":" in line)
        _equal("status", "verified", status.get("status", "").strip())
        _equal("root hash", manifest.root_hash, status.get("root hash", "").strip())

    checks["verity[root]"] = verity

    def mount(path: str, fstype: str, read_only: bool) -> Check:
        def check(host: Any) -> None:
            point = host.mount_point(path)
            _equal(f"{path} filesystem", fstype, point.filesystem)
            _equal(f"{path} read-only", str(read_only), str("ro" in point.options))
        return check

    checks["mount[/]"] = mount("/", manifest.filesystem, True)
    checks["mount[/etc]"] = mount("/etc", "overlay", False)
    checks["mount[/var]"] = mount("/var", "overlay", False)
    checks["kernel[cmdline]"] = lambda host: _equal(
        "cmdline", manifest.cmdline, host.file("/proc/cmdline").content_string.strip())
    for key, value in sorted(manifest.sysctls.items()):
        path = "/proc/sys/" + key.replace(".", "/")
        checks[f"sysctl[{key}]"] = (lambda p, k, v: lambda host: _equal(
            k, v, " ".join(host.file(p).content_string.split())))(path, key, value)

    def profiles(host: Any) -> dict[str, str]:
        return parse_profiles(host.file("/sys/kernel/security/apparmor/profiles").content_string)

    for name, mode in sorted(manifest.apparmor_profiles.items()):
        checks[f"apparmor[{name}]"] = (lambda n, m: lambda host: _equal(
            n, m, profiles(host).get(n, "absent")))(name, mode)
    for key, value in sorted(manifest.sshd.items()):
        checks[f"sshd[{key}]"] = (lambda k, v: lambda host: _equal(
            k, v, parse_sshd(host.check_output("sshd -T")).get(k, "absent")))(key, value)
    # sshd and networkd run before SSH answers; dockerd may still be starting then, so of it
    # only the (static) enablement is a fact.
    services = {"ssh": True, "systemd-networkd": True}
    if manifest.runtime_config:
        services["docker"] = False
    for service, must_run in services.items():
        def state(host: Any, name: str = service, must_run: bool = must_run) -> None:
            unit = host.service(name)
            _equal(f"{name}.service enabled", "True", str(unit.is_enabled))
            if must_run:
                _equal(f"{name}.service running", "True", str(unit.is_running))
        checks[f"service[{service}]"] = state
    return checks


def _strict_host(spec: str, config: pytest.Config) -> Any:
    import testinfra

    host = testinfra.get_host(spec, ssh_identity_file=config.getoption("ssh_identity_file"))
    backend = host.backend
    target = Target(backend.host.user or "root", backend.host.name,
                    int(backend.host.port or 22))
    identity = config.getoption("ssh_identity_file") or "~/.ssh/id_ed25519"
    # testinfra's paramiko backend builds its client lazily (a cached property); giving it
    # ours first means every command runs over a strictly checked connection.
    backend.__dict__["client"] = open_client(
        target, known_hosts=config.getoption("hardhost_known_hosts"),
        identity=Path(identity).expanduser())
    return host


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    manifest_path = config.getoption("hardhost_manifest", None)
    if manifest_path is None:
        return
    trust_key = config.getoption("hardhost_trust_key")
    if trust_key is None:
        raise pytest.UsageError("--hardhost-manifest needs --hardhost-trust-key")
    hosts = config.getoption("hosts", None)
    if not hosts:
        raise pytest.UsageError("--hardhost-manifest needs --hosts=paramiko://USER@HOST:PORT")
    manifest, _ = read_verified(manifest_path, load_trusted_keys(trust_key))
    for spec in hosts.split(","):
        if not spec.startswith("paramiko://"):
            raise pytest.UsageError(f"{spec}: the hardhost plugin uses the paramiko backend")
        host = _strict_host(spec, config)
        name = spec.removeprefix("paramiko://")
        for fact, check in facts(manifest).items():
            items.append(HardhostFact.from_parent(session, name=f"{name}::{fact}", host=host,
                                                  check=check))
