"""e2e fixtures: a real container-host build and a qemu instance booted from it (the helpers
behind them are in tests/support/vms.py)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Generator, Iterator

import pytest

from hardhost.builder.build import build
from hardhost.builder.spec import load_spec, with_authorized_keys
from hardhost.vm import harness as vm
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES
from tests.support.vms import (
    BootedHost,
    BuiltImage,
    FirmwareHangWatch,
    boot,
    console_tail,
)

CONSOLE_TAIL = 3000  # characters of each guest's console shown with a failed test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """A failed e2e test shows the end of the console of each guest that wrote to it during
    the test: a guest that stalled in CI can be told apart from a product fault only so."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or report.when == "teardown":
        return
    since = time.time() - report.duration - 1
    root = vm.state_root()
    for serial in sorted(root.glob("*/serial.log")) if root.is_dir() else ():
        if serial.stat().st_mtime >= since:
            report.sections.append((f"console of vm {serial.parent.name}",
                                    console_tail(serial, CONSOLE_TAIL)))


@pytest.fixture(scope="session", autouse=True)
def firmware_hang_watch() -> Iterator[FirmwareHangWatch]:
    with FirmwareHangWatch() as watch:
        yield watch
    if watch.pressed:
        warnings.warn(f"reset pressed on hung firmware of: {', '.join(watch.pressed)}",
                      stacklevel=1)
    if watch.started_again:
        warnings.warn("qemu started again after the reset did not help: "
                      f"{', '.join(watch.started_again)}", stacklevel=1)


@pytest.fixture(scope="session")
def container_host(tmp_path_factory: pytest.TempPathFactory, client_key: KeyPair,
                   signing_keys: SigningKeys) -> BuiltImage:
    spec = load_spec(IMAGES / "container-host.toml")
    spec = with_authorized_keys(spec, (client_key.public_line,), "test")
    out = tmp_path_factory.mktemp("images")
    return BuiltImage(spec, build(spec, out, key=signing_keys.key), signing_keys.public)


@pytest.fixture(scope="module")
def booted(container_host: BuiltImage, client_key: KeyPair) -> Iterator[BootedHost]:
    yield from boot(container_host, "e2e-main", client_key.private)


@pytest.fixture(scope="session")
def version_2(container_host: BuiltImage, signing_keys: SigningKeys,
              tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """container-host at version 2, for both update modules: the same spec, so only
    os-release (and with it the root and the UKI) differs."""
    spec = dataclasses.replace(container_host.spec, version="2")
    out = tmp_path_factory.mktemp("version-2")
    return BuiltImage(spec, build(spec, out, key=signing_keys.key), signing_keys.public)
