"""pytest plugin `hardhost`: a signed manifest becomes one test per fact, per host.

    pytest --hosts=paramiko://root@host:22 --ssh-identity-file=KEY \\
        --hardhost-manifest manifest.dsse.json --hardhost-trust-key signing.pub \\
        --hardhost-known-hosts known_hosts

Each host's evidence is collected once, when the tests are collected, over hardhost's own
strictly checked SSH transport, and checked exactly as `hardhost attest` checks it: every
check of the comparison is one test with a readable id (`HOST::sysctl[kernel.kptr_restrict]`),
failing with the finding's expected and observed values. `--hosts` and `--ssh-identity-file`
(and `--ssh-config`) are pytest-testinfra's options; no command runs through testinfra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hardhost.core.errors import HardhostError
from hardhost.core.outputs import printable
from hardhost.verifier import (
    Check,
    Connection,
    Finding,
    HostManifest,
    Target,
    examine_host,
    load_trusted_keys,
    read_verified,
)

SCHEME = "paramiko://"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hardhost", "attest hosts against a hardhost manifest")
    group.addoption("--hardhost-manifest", type=Path, metavar="FILE",
                    help="signed manifest.dsse.json whose facts become tests")
    group.addoption("--hardhost-trust-key", type=Path, metavar="PUB",
                    help="trusted manifest signing key, or a folder of *.pub keys")
    group.addoption("--hardhost-known-hosts", type=Path, metavar="FILE",
                    default=Path("~/.ssh/known_hosts").expanduser(),
                    help="known_hosts holding the hosts' keys (checked strictly)")


class FactFailed(AssertionError):
    """A fact that does not hold, or a host that could not be examined: the message says all,
    so no traceback is shown."""


def describe(finding: Finding) -> str:
    # Both values came from the host or its manifest: escaped, never sent raw to a terminal.
    return (f"{printable(finding.id)} ({finding.severity.value}): expected "
            f"'{printable(finding.expected)}', observed '{printable(finding.observed)}'")


class HardhostFact(pytest.Item):
    """One check of one host, done already; running the test reports its outcome."""

    def __init__(self, *, check: Check | None = None, error: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check, self.error = check, error

    def runtest(self) -> None:
        if self.error:
            raise FactFailed(self.error)
        if self.check is not None and not self.check.holds:
            raise FactFailed("\n".join(describe(f) for f in self.check.findings))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | Any:
        if isinstance(excinfo.value, FactFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.nodeid


class HardhostHost(pytest.Collector):
    """One host: its evidence collected once, and one test per check of it."""

    def __init__(self, *, target: Target, manifest: HostManifest, conn: Connection,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target, self.manifest, self.conn = target, manifest, conn

    def collect(self) -> list[pytest.Item]:
        try:
            examination = examine_host(self.target, self.manifest, self.conn)
        except HardhostError as exc:
            # One host that cannot be reached or trusted is its own failure, not the run's.
            return [HardhostFact.from_parent(self, name="connect", nodeid=f"{self.nodeid}::connect",
                                             error=f"{exc} (exit code {exc.exit_code})")]
        return [HardhostFact.from_parent(self, name=check.name,
                                         nodeid=f"{self.nodeid}::{check.name}", check=check)
                for check in examination.checks]


def _target(spec: str) -> Target:
    if not spec.startswith(SCHEME) or "?" in spec:
        raise pytest.UsageError(f"{spec}: the hardhost plugin takes hosts as "
                                f"{SCHEME}USER@HOST:PORT")
    try:
        return Target.parse(spec.removeprefix(SCHEME))
    except HardhostError as exc:
        raise pytest.UsageError(f"--hosts: {exc}") from None


def _connection(config: pytest.Config) -> Connection:
    identity = config.getoption("ssh_identity_file", None)
    ssh_config = config.getoption("ssh_config", None)
    return Connection(config.getoption("hardhost_known_hosts"),
                      Path(identity).expanduser() if identity else None,
                      ssh_config=Path(ssh_config).expanduser() if ssh_config else None)


# First, so that -k and -m select among the facts as among any other tests.
@pytest.hookimpl(tryfirst=True)
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
        raise pytest.UsageError(f"--hardhost-manifest needs --hosts={SCHEME}USER@HOST:PORT")
    targets = [_target(spec) for spec in hosts.split(",")]
    try:
        manifest, _ = read_verified(manifest_path, load_trusted_keys(trust_key))
    except HardhostError as exc:
        raise pytest.UsageError(str(exc)) from None
    conn = _connection(config)
    for target in targets:
        host = HardhostHost.from_parent(session, name=str(target), nodeid=str(target),
                                        target=target, manifest=manifest, conn=conn)
        items.extend(host.collect())
