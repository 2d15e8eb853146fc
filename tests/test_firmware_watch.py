"""The e2e suite's watch for OVMF hung after a guest restart (tests/support/vms.py): which
instances it finds hung, on a state folder with FAKE qemu processes (a sleeping Python
whose command line names the instance, as the harness's pid check reads it), and its
restart of a real, paused qemu."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.core.run import process_cmdline, run
from hardhost.vm import harness as vm
from tests.support.vms import (
    FIRMWARE_SILENCE,
    HUNG_CONSOLE,
    RESET_PRESSED,
    STARTED_AGAIN,
    firmware_hangs,
    reset_did_not_help,
    start_again,
)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    root = tmp_path / "hardhost" / "vms"
    root.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []

    def add(name: str, console: bytes, *, age: float, firmware: bool = True) -> None:
        folder = root / name
        folder.mkdir()
        args = [sys.executable, "-c", "import time; time.sleep(120)", "qemu",
                f"hardhost-{name}", *(["if=pflash"] if firmware else [])]
        process = subprocess.Popen(args)
        processes.append(process)
        (folder / "qemu.pid").write_text(f"{process.pid}\n")
        serial = folder / "serial.log"
        serial.write_bytes(console)
        os.utime(serial, (time.time() - age, time.time() - age))

    old = FIRMWARE_SILENCE + 30
    add("hung", b"login: [  121.9] reboot: Restarting system\n", age=old)
    add("panicked", b"[    9.04] Rebooting in 5 seconds..\n", age=old)
    add("restarting", b"[  121.9] reboot: Restarting system\n", age=5)
    add("booted", b"reboot: Restarting system\nBdsDxe: starting Boot0001\nlogin: ", age=old)
    add("direct", b"reboot: Restarting system\n", age=old, firmware=False)
    add("named", b"login: reboot: Restarting system is what I typed", age=old)
    pressed = f"reboot: Restarting system\n\n{RESET_PRESSED}\n".encode()
    add("still-hung", pressed, age=old)
    add("just-pressed", pressed, age=5)
    add("recovered", pressed + b"BdsDxe: starting Boot0001\n", age=old)
    (root / "stopped").mkdir()
    (root / "stopped" / "serial.log").write_bytes(b"reboot: Restarting system\n")
    try:
        yield root
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_only_silent_firmware_after_a_restart_is_hung(state: Path) -> None:
    hung = sorted(inst.name for inst in firmware_hangs(state, time.time()))
    # Not: a restart seconds ago, a firmware that went on to boot, a direct boot (no OVMF),
    # a line that only contains the words, an instance whose qemu is gone.
    assert hung == ["hung", "panicked"]


def test_a_reset_that_did_not_help_is_told_from_one_that_still_may(state: Path) -> None:
    gave_up = sorted(path.name for path in state.iterdir()
                     if reset_did_not_help(vm.instance(path.name), time.time()))
    # Not: a press seconds ago, a firmware that printed again after it, or any guest whose
    # console never showed a press.
    assert gave_up == ["still-hung"]


@pytest.fixture
def paused_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[vm.Instance]:
    """A real qemu for instance "hung", daemonized as the harness starts it, but paused
    before its first instruction (-S): it needs no disk, and takes no CPU."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    inst = vm.instance("hung")
    inst.directory.mkdir(parents=True)
    run(["qemu-system-x86_64", "-name", f"hardhost-{inst.name}", "-machine", "q35",
         "-accel", "tcg", "-nodefaults", "-display", "none", "-monitor", "none", "-S",
         "-qmp", f"unix:{inst.qmp_socket},server=on,wait=off",
         "-serial", f"file:{inst.serial_log}", "-daemonize", "-pidfile", str(inst.pid_file)])
    inst.serial_log.write_bytes(f"reboot: Restarting system\n{RESET_PRESSED}\n".encode())
    try:
        yield inst
    finally:
        vm.stop(inst.name)


def test_a_qemu_the_reset_did_not_revive_is_started_again(paused_qemu: vm.Instance) -> None:
    before = paused_qemu.pid()
    assert before is not None
    argv = process_cmdline(before)
    assert start_again(paused_qemu)
    after = paused_qemu.pid()
    assert after is not None and after != before
    assert process_cmdline(after) == argv and not process_cmdline(before)
    kept = (paused_qemu.directory / HUNG_CONSOLE).read_text()
    assert RESET_PRESSED in kept and kept.rstrip().endswith(STARTED_AGAIN)
    assert not reset_did_not_help(paused_qemu, time.time() + 2 * FIRMWARE_SILENCE)


def test_a_qemu_its_test_stopped_is_not_started_again(paused_qemu: vm.Instance) -> None:
    pid = paused_qemu.pid()
    assert pid is not None
    vm.stop(paused_qemu.name)
    assert not start_again(paused_qemu)
    assert paused_qemu.pid() is None and not paused_qemu.pid_file.exists()
    assert not process_cmdline(pid)
