"""PCR helpers: systemd-measure, pesign and osslsigncode as references for the predictions,
and a real OVMF + swtpm boot of a disk through the VM harness, read back over SSH."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import eventlog, pcr
from hardhost.core.run import output, run
from hardhost.verifier.transport import Target, connect
from hardhost.vm import harness as vm
from tests.support.net import free_port
from tests.support.tools import need
from tests.support.uki import Inputs

MEASURE = Path("/lib/systemd/systemd-measure")  # systemd 252 ships it outside $PATH
OVMF_CODE = vm.OVMF_CODE
# vm start boots with 1024 MiB; booting here with 2048 exercises the other recorded firmware.
MEMORY_MIB = 2048
MACHINE = pcr.machine_key(memory_mib=MEMORY_MIB, cpus=vm.CPUS)
VM_NAME = "e2e-pcr"
BOOT_TIMEOUT = 400  # seconds; an OVMF + swtpm boot to SSH takes about a minute under TCG


def image_inputs(folder: Path, scratch: Path) -> Inputs:
    scratch.mkdir(parents=True, exist_ok=True)
    osrel = scratch / "os-release"
    osrel.write_text('PRETTY_NAME="hardhost"\nID=debian\nVERSION_ID="12"\n')
    cmdline = json.loads((folder / "build.json").read_text())["cmdline"]
    return Inputs(folder / "vmlinuz", folder / "initrd.img", osrel, cmdline)


def systemd_measure(inputs: Inputs, scratch: Path, phases: tuple[str, ...],
                    extra: dict[str, Path] | None = None) -> str:
    if not MEASURE.is_file():
        pytest.fail(f"{MEASURE} not found: apt-get install systemd")
    cmdline = scratch / "cmdline.txt"
    cmdline.write_text(inputs.cmdline)
    args: list[str | Path] = [MEASURE, "calculate", f"--linux={inputs.linux}",
                              f"--osrel={inputs.osrel}", f"--cmdline={cmdline}",
                              f"--initrd={inputs.initrd}", "--bank=sha256",
                              f"--phase={':'.join(phases)}"]
    args += [f"--{name}={path}" for name, path in (extra or {}).items()]
    match = re.fullmatch(r"11:sha256=([0-9a-f]{64})", output(args).strip())
    assert match is not None
    return match.group(1)


PHASE_CASES = [(), ("sysinit",), pcr.PHASES_INITRAMFS_TOOLS, pcr.PHASE_ORDER]


def pesign_digest(path: Path) -> str:
    text = output([need("pesign", "pesign"), "-h", "-d", "sha256", "-i", path])
    match = re.search(r"^hash: ([0-9a-f]{64})$", text, re.M)
    assert match is not None, text
    return match.group(1)


def signed_digest(path: Path) -> str:
    """The digest the signer put in the signature, as osslsigncode reads it back."""
    # verify exits 1 for a certificate it cannot chain to a CA, after printing the digests.
    result = run([need("osslsigncode", "osslsigncode"), "verify", "-in", path], capture=True,
                 check=False)
    text = result.stdout.decode(errors="replace")
    match = re.search(r"Current message digest\s*:\s*([0-9A-F]{64})", text)
    assert match is not None, text
    return match.group(1).lower()


READ_SCRIPT = """\
timeout 120 systemctl is-system-running --wait >/dev/null 2>&1
for unit in systemd-pcrphase-sysinit.service systemd-pcrphase.service; do
    echo "unit $unit $(systemctl show -P Result "$unit") $(systemctl show -P ActiveState "$unit")"
done
for index in 0 4 7 9 11 12 13; do
    echo "pcr $index $(cat /sys/class/tpm/tpm0/pcr-sha256/$index)"
done
echo "log $(base64 -w0 /sys/kernel/security/tpm0/binary_bios_measurements)"
"""
# The phase each systemd-pcrphase unit extends once it has run (systemd 252 units/).
UNIT_PHASES = {"systemd-pcrphase-sysinit.service": "sysinit",
               "systemd-pcrphase.service": "ready"}


@dataclass(frozen=True)
class BootEvidence:
    seconds_to_ssh: float
    pcrs: dict[int, str]
    phases: tuple[str, ...]
    log: list[eventlog.LoggedEvent]


def read_evidence(text: str, seconds: float) -> BootEvidence:
    pcrs, phases, log = {}, [], b""
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "pcr":
            index, value = rest.split()
            pcrs[int(index)] = value.lower()
        elif kind == "unit":
            unit, result, state = [*rest.split(), "", ""][:3]
            if result == "success" and state == "active":
                phases.append(UNIT_PHASES[unit])
        elif kind == "log":
            log = base64.b64decode(rest)
    return BootEvidence(seconds, pcrs, tuple(phases), eventlog.parse(log))


def boot_and_read(disk_image: Path, identity: Path) -> BootEvidence:
    """Boot `disk_image` through the VM harness, under OVMF with a vTPM, from a copy under an
    overlay as vm start stages a disk, and read PCRs, pcrphase results and the event log
    over SSH."""
    need("qemu-system-x86_64", "qemu-system-x86")
    need("swtpm", "swtpm")
    if not OVMF_CODE.is_file():
        pytest.fail(f"{OVMF_CODE} not found: apt-get install {vm.OVMF_PACKAGE}")
    vm.stop(VM_NAME, purge=True)
    inst = dataclasses.replace(vm.instance(VM_NAME), ssh_port=free_port())
    inst.directory.mkdir(mode=0o700, parents=True)
    run(["cp", "--sparse=always", disk_image, inst.base_disk])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", inst.base_disk,
         inst.disk])
    try:
        start = time.monotonic()
        vm.boot_staged(inst, "", memory_mib=MEMORY_MIB, timeout=BOOT_TIMEOUT, tpm=True)
        seconds = time.monotonic() - start
        with connect(Target("root", "127.0.0.1", inst.ssh_port), known_hosts=inst.known_hosts,
                     identity=identity) as session:
            result = session.run_script(READ_SCRIPT, timeout=180)
    finally:
        vm.stop(VM_NAME, purge=True)
    assert result.exit_status == 0, result.stderr.decode(errors="replace")
    return read_evidence(result.stdout.decode(), seconds)


def mismatch(index: int, predicted: pcr.PCRValue, logged: list[pcr.Event]) -> str:
    lines = [f"PCR {index}: predicted {predicted.value}"]
    lines += [f"  predicted {e.digest[:16]} {e.type} {e.description}" for e in predicted.events]
    lines += [f"  logged    {e.digest[:16]} {e.type} {e.description}" for e in logged]
    return "\n".join(lines)
