"""Built images and the qemu instances booted from them for the e2e tests, with a restart for
a guest that stalled under TCG (the fixtures are in tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hardhost.builder.spec import Spec
from hardhost.core.errors import HardhostError, Unreachable
from hardhost.core.run import process_cmdline, run
from hardhost.image.manifest import MANIFEST_NAME
from hardhost.verifier.transport import Target, public_key_from_line, wait_for_host_key
from hardhost.vm import harness as vm
from hardhost.vm import qmp
from tests.support.net import free_port
from tests.support.paths import REPO

BOOT_TIMEOUT = 400  # seconds; TCG boots take about 30 s, a loaded CI machine much longer
ANSWER_TIMEOUT = 240  # seconds a module's guest gets to answer before a test restarts it

# Under TCG on a shared two-core machine a guest has been seen to stall: one reached its
# login prompt and never answered SSH; one never came back from a reboot. A stalled guest is
# restarted once and the test runs once more, reported as a rerun; a product fault fails
# both times. Only failures that name a guest that did not answer are rerun.
# A guest whose vCPUs were starved long enough for its kernel to report soft lockups has also
# let a command run past its deadline ("did not finish within").
STALLED = [r"SSH did not answer", r"did not come back", r"cannot connect",
           r"did not finish within"]
rerun_if_the_guest_stalls = pytest.mark.flaky(reruns=1, only_rerun=STALLED)


@dataclass(frozen=True)
class BuiltImage:
    spec: Spec
    directory: Path
    trust_key: Path  # the public key its manifest verifies against

    @property
    def record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.directory / "build.json").read_text())
        return data


@dataclass(frozen=True)
class BootedHost:
    image: BuiltImage
    instance: vm.Instance
    target: Target
    identity: Path

    @property
    def known_hosts(self) -> Path:
        return self.instance.known_hosts


def attest_json(host: BootedHost, trust_key: Path, *,
                timeout: int = 90) -> tuple[int, dict[str, Any]]:
    """`hardhost attest --json` of `host` against its image's manifest: the exit code and
    the verdict."""
    result = subprocess.run(
        [sys.executable, "-m", "hardhost", "attest", str(host.target), "--manifest",
         str(host.image.directory / MANIFEST_NAME), "--trust-key", str(trust_key),
         "--known-hosts", str(host.known_hosts), "--identity", str(host.identity),
         "--timeout", str(timeout), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    assert "Traceback" not in result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, data


def console_tail(serial: Path, size: int) -> str:
    """The last `size` bytes of a guest's serial log, as text."""
    with serial.open("rb") as f:
        f.seek(max(0, serial.stat().st_size - size))
        return f.read().decode(errors="replace")


def report_stall(name: str, error: Exception) -> None:
    """Say, with the guest's last console output, that a stalled guest is being restarted."""
    serial = vm.instance(name).serial_log
    tail = console_tail(serial, 1500) if serial.exists() else "(no serial log)"
    warnings.warn(f"{error}; restarting vm {name} once. Its console ended with:\n{tail}",
                  stacklevel=2)


def start_vm(image_dir: Path, *, trust_key: Path, name: str, port: int,
             tpm: bool = False, firmware: bool = False) -> vm.Instance:
    """vm.start, and once more if the guest stalled before SSH answered. Without `tpm` or
    `firmware`, the kernel boots directly, which reaches SSH sooner under TCG."""
    direct = not (tpm or firmware)
    try:
        return vm.start(image_dir, trust_key=trust_key, name=name, ssh_port=port,
                        timeout=BOOT_TIMEOUT, tpm=tpm, direct=direct)
    except Unreachable as error:
        report_stall(name, error)
        vm.stop(name)  # the host key and vTPM stay
        return vm.start(image_dir, trust_key=trust_key, name=name, ssh_port=port,
                        timeout=BOOT_TIMEOUT, tpm=tpm, direct=direct)


def ensure_answering(instance: vm.Instance, image_dir: Path, *, trust_key: Path,
                     tpm: bool = False, firmware: bool = False) -> None:
    """Before each test of a module that shares one guest: a guest that stalled in an earlier
    test (or is still rebooting from it) answers again, so one stall fails one test only."""
    key = public_key_from_line(instance.host_public_key.read_text())
    try:
        wait_for_host_key("127.0.0.1", instance.ssh_port, key, timeout=ANSWER_TIMEOUT,
                          alive=lambda: instance.pid() is not None)
    except Unreachable as error:
        report_stall(instance.name, error)
        vm.stop(instance.name)
        start_vm(image_dir, trust_key=trust_key, name=instance.name, port=instance.ssh_port,
                 tpm=tpm, firmware=firmware)


def boot(image: BuiltImage, name: str, identity: Path) -> Iterator[BootedHost]:
    port = free_port()
    vm.stop(name, purge=True)
    instance = start_vm(image.directory, trust_key=image.trust_key, name=name, port=port)
    try:
        yield BootedHost(image, instance, Target("root", "127.0.0.1", port), identity)
    finally:
        vm.stop(name, purge=True)


# OVMF under TCG on an overloaded machine has been seen to hang after a guest reboot: the
# kernel prints "reboot: Restarting system", then the firmware's boot processor spins
# forever waiting for a second vCPU to take its start-up IPI (edk2's WaitApWakeup() has no
# timeout), and the serial console stays silent. A firmware that has printed nothing for
# FIRMWARE_SILENCE seconds after a restart is hung (a good restart shows the boot manager
# within seconds), and gets the machine's reset button. A reset has sometimes not helped
# (the console stayed silent after it); FIRMWARE_SILENCE after the press, the watch then
# starts that qemu again, which has always booted. Both fit in a test's 300 s reboot
# timeout, so a hang costs a minute or two instead of a failed test and its rerun. Each
# press and restart is reported.
FIRMWARE_SILENCE = 60.0
_RESTARTING = re.compile(r"(reboot: Restarting system|Rebooting in \d+ seconds\.\.)\s*$")
RESET_PRESSED = "[e2e: firmware silent after a restart; reset pressed]"
STARTED_AGAIN = "[e2e: firmware silent after the reset too; qemu killed and started again]"
HUNG_CONSOLE = "serial.hung.log"  # the console up to a restart, kept beside the new one


def reset_did_not_help(inst: vm.Instance, now: float) -> bool:
    """Whether the console has said nothing for FIRMWARE_SILENCE seconds since the watch
    pressed reset on `inst`: its firmware hung again, and only a new qemu will boot it."""
    serial = inst.serial_log
    try:
        silent = now - serial.stat().st_mtime >= FIRMWARE_SILENCE
        return silent and console_tail(serial, 200).rstrip().endswith(RESET_PRESSED)
    except OSError:
        return False


def start_again(inst: vm.Instance) -> bool:
    """Kill the qemu of `inst` and run its command line again: a cold start of the same
    machine on the same disks, and on the same vTPM (swtpm outlives a killed qemu). The
    old console is kept as HUNG_CONSOLE. False if the instance was stopped meanwhile."""
    pid = inst.pid()
    cmdline = process_cmdline(pid) if pid is not None else b""
    if pid is None or not cmdline:
        return False
    os.kill(pid, signal.SIGKILL)
    # A killed qemu leaves its pid file; vm.stop removes it. Gone: its test stopped it.
    if not vm._wait_gone(pid, cmdline, 30) or not inst.pid_file.exists():
        return False
    argv = cmdline.split(b"\0")[:-1]
    with inst.serial_log.open("ab") as f:
        f.write(f"\n{STARTED_AGAIN}\n".encode())
    inst.serial_log.replace(inst.directory / HUNG_CONSOLE)  # qemu truncates its console
    run([arg.decode() for arg in argv])  # -daemonize: returns once the guest runs
    return True


def firmware_hangs(root: Path, now: float) -> list[vm.Instance]:
    """The running OVMF instances under `root` whose console ends in a restart and has been
    silent since for FIRMWARE_SILENCE seconds."""
    hung = []
    for serial in sorted(root.glob("*/serial.log")) if root.is_dir() else ():
        inst = vm.instance(serial.parent.name)
        pid = inst.pid()
        if pid is None or now - serial.stat().st_mtime < FIRMWARE_SILENCE:
            continue
        try:
            firmware = b"if=pflash" in Path(f"/proc/{pid}/cmdline").read_bytes()
            tail = console_tail(serial, 200)
        except OSError:
            continue
        if firmware and _RESTARTING.search(tail):
            hung.append(inst)
    return hung


class FirmwareHangWatch:
    """A thread that presses reset on each hung OVMF instance, and starts its qemu again
    when the reset did not help (see FIRMWARE_SILENCE)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.pressed: list[str] = []
        self.started_again: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="firmware-hang-watch",
                                        daemon=True)

    def __enter__(self) -> FirmwareHangWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            root = vm.state_root()
            for inst in firmware_hangs(root, time.time()):
                try:
                    qmp.reset(inst.qmp_socket, timeout=10.0)
                except (OSError, qmp.QmpError):
                    continue
                self.pressed.append(inst.name)
                # The press is itself console output: the next look sees fresh output.
                with inst.serial_log.open("ab") as f:
                    f.write(f"\n{RESET_PRESSED}\n".encode())
            for serial in sorted(root.glob("*/serial.log")) if root.is_dir() else ():
                inst = vm.instance(serial.parent.name)
                try:
                    if reset_did_not_help(inst, time.time()) and start_again(inst):
                        self.started_again.append(inst.name)
                except (OSError, HardhostError) as error:
                    warnings.warn(f"vm {inst.name}: could not start it again: {error}",
                                  stacklevel=1)
