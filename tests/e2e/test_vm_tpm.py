"""`vm start --tpm`: container-host's disk booted under OVMF with a swtpm vTPM, manufactured
by hardhost.vm.vtpm, that measures the boot, survives a guest reboot and stops with the VM.

Every OVMF boot costs about a minute under TCG, so the boot tests share one instance and
run in file order: boot, reboot, power-off and start, stop, then a restart whose swtpm is
made to crash. (What `vm start --tpm` refuses before a boot is in tests/test_vm_trust.py.)
"""

from __future__ import annotations

import base64
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import disk, eventlog, pcr
from hardhost.builder.stages.uki import UKI_NAME
from hardhost.verifier.reset import reboot
from hardhost.verifier.tpm_ek import load_ca_bundle, verify_ek_certificate
from hardhost.verifier.transport import Target, connect
from hardhost.vm import harness as vm
from hardhost.vm import vtpm
from tests.support.keys import KeyPair
from tests.support.net import free_port
from tests.support.pcr import READ_SCRIPT, BootEvidence, mismatch, read_evidence
from tests.support.vms import (
    BOOT_TIMEOUT,
    BuiltImage,
    ensure_answering,
    rerun_if_the_guest_stalls,
    start_vm,
)

NAME = "e2e-vmtpm"
MEMORY_MIB = 1024  # vm.start's default, the machine the golden PCR 0 is looked up for

# tpm2-tools in the guest, on the kernel's resource manager: the clock (resetCount) and the
# EK certificate swtpm_setup wrote at NV index 0x01c00002 (TCG EK Credential Profile 2.3).
TPM_SCRIPT = """\
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
test -c /dev/tpmrm0 && echo "tpmrm present"
echo "boot_id $(cat /proc/sys/kernel/random/boot_id)"
echo "reset_count $(tpm2_readclock | sed -n 's/^ *reset_count: *//p')"
echo "ek $(tpm2_nvread 0x01c00002 | base64 -w0)"
"""

# A signature by a key with an (empty) password: an authorization the TPM's dictionary-attack
# protection covers, as the attestation key's are. After one, losing power without
# TPM2_Shutdown counts against the lockout limit.
DA_PROTECTED_USE = """\
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
cd "$(mktemp -d)"
tpm2_createprimary -Q -C o -c primary.ctx
tpm2_create -Q -C primary.ctx -G ecc -u key.pub -r key.priv -c key.ctx
echo message > message
tpm2_sign -Q -c key.ctx -g sha256 -o signature message && echo signed
"""
LOCKOUT_COUNTER = """\
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
tpm2_getcap properties-variable | sed -n 's/^TPM2_PT_LOCKOUT_COUNTER: *//p'
"""


@dataclass(frozen=True)
class TpmVm:
    image: Path
    instance: vm.Instance
    target: Target
    identity: Path
    seconds_to_ssh: float
    trust_key: Path

    def script(self, text: str) -> str:
        with connect(self.target, known_hosts=self.instance.known_hosts,
                     identity=self.identity, timeout=30) as session:
            result = session.run_script(text, timeout=180)
        assert result.exit_status == 0, result.stderr.decode(errors="replace")
        return result.stdout.decode()

    def evidence(self) -> BootEvidence:
        return read_evidence(self.script(READ_SCRIPT), self.seconds_to_ssh)

    def tpm_facts(self) -> dict[str, str]:
        facts = {}
        for line in self.script(TPM_SCRIPT).splitlines():
            key, _, value = line.partition(" ")
            facts[key] = value
        return facts


@pytest.fixture(scope="module")
def tpm_vm(container_host: BuiltImage, client_key: KeyPair) -> Iterator[TpmVm]:
    image = container_host.directory
    port = free_port()
    vm.stop(NAME, purge=True)
    started = time.monotonic()
    instance = start_vm(image, trust_key=container_host.trust_key, name=NAME, port=port,
                        tpm=True)
    seconds = time.monotonic() - started
    print(f"vm start --tpm: SSH after {seconds:.0f} s")
    try:
        yield TpmVm(image, instance, Target("root", "127.0.0.1", port), client_key.private,
                    seconds, container_host.trust_key)
    finally:
        vm.stop(NAME, purge=True)


def assert_predicted(machine: TpmVm, evidence: BootEvidence) -> None:
    """Every PCR the build predicts, and the golden PCR 0 and 7 of this firmware on this
    machine configuration, as the guest reads them from its TPM."""
    golden = pcr.firmware_golden(vm.OVMF_CODE,
                                 pcr.machine_key(memory_mib=MEMORY_MIB, cpus=vm.CPUS))
    # The image's disk boots the systemd-boot of the build machine's systemd-boot-efi.
    predicted = pcr.predict_pcrs(machine.image / UKI_NAME, loader=disk.SYSTEMD_BOOT,
                                 phases=evidence.phases, firmware=golden)
    print(f"read PCR 0 {evidence.pcrs[0]}; pcrphase reached: "
          f"{':'.join(evidence.phases) or 'none'}")
    for index, value in predicted.items():
        assert evidence.pcrs[index] == value.value, mismatch(
            index, value, eventlog.events_for(evidence.log, index))
    # systemd-boot and systemd-stub each measured the load options; no sysext.
    assert evidence.pcrs[12] != pcr.ZERO and evidence.pcrs[13] == pcr.ZERO


def processes_under(directory: Path) -> list[int]:
    """Pids whose command line names `directory`: an instance's qemu and swtpm do."""
    needle = os.fsencode(directory)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # a process that ended while we looked
    return found


@pytest.mark.e2e
def test_a_tpm_boot_answers_with_its_key_and_measures_the_uki(tpm_vm: TpmVm) -> None:
    # vm.start returned, so sshd showed the provisioned key; the session below is strict.
    key = tpm_vm.instance.host_public_key.read_text().split()[1]
    assert key in tpm_vm.instance.known_hosts.read_text()
    assert tpm_vm.tpm_facts()["tpmrm"] == "present"
    assert_predicted(tpm_vm, tpm_vm.evidence())
    # OVMF, the kernel and systemd bring this to about a minute under TCG.
    assert tpm_vm.seconds_to_ssh < BOOT_TIMEOUT


@pytest.mark.e2e
def test_the_ek_certificate_chains_to_the_instance_ca(tpm_vm: TpmVm) -> None:
    inst = tpm_vm.instance
    assert (inst.tpm_state / "tpm2-00.permall").is_file()
    assert stat.S_IMODE(inst.tpm_ca.stat().st_mode) == 0o644
    for key in inst.tpm_local_ca.private_keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    ek = base64.b64decode(tpm_vm.tpm_facts()["ek"])
    verify_ek_certificate(ek, load_ca_bundle(inst.tpm_ca))


@pytest.mark.e2e
@rerun_if_the_guest_stalls
def test_a_guest_reboot_keeps_the_running_tpm(tpm_vm: TpmVm) -> None:
    inst = tpm_vm.instance
    ensure_answering(inst, tpm_vm.image, trust_key=tpm_vm.trust_key, tpm=True)
    before = tpm_vm.tpm_facts()
    swtpm_pid = inst.swtpm.pid()
    assert swtpm_pid is not None
    started = time.monotonic()
    boot_id = reboot(tpm_vm.target, known_hosts=inst.known_hosts, identity=tpm_vm.identity,
                     timeout=BOOT_TIMEOUT)
    print(f"guest reboot to SSH: {time.monotonic() - started:.0f} s")
    after = tpm_vm.tpm_facts()
    assert after["boot_id"] == boot_id != before["boot_id"]
    # The same swtpm process, so the same TPM: a TPM Reset counted, the EK kept.
    assert inst.swtpm.pid() == swtpm_pid
    assert int(after["reset_count"]) == int(before["reset_count"]) + 1
    assert after["ek"] == before["ek"]
    assert_predicted(tpm_vm, tpm_vm.evidence())


@pytest.mark.e2e
@rerun_if_the_guest_stalls
def test_stop_powers_the_guest_off_so_its_tpm_counts_no_power_loss(tpm_vm: TpmVm) -> None:
    inst = tpm_vm.instance
    ensure_answering(inst, tpm_vm.image, trust_key=tpm_vm.trust_key, tpm=True)
    assert tpm_vm.script(DA_PROTECTED_USE).strip() == "signed"
    before = int(tpm_vm.script(LOCKOUT_COUNTER), 16)
    started = time.monotonic()
    vm.stop(NAME)
    print(f"vm stop (power button to qemu's exit): {time.monotonic() - started:.0f} s")
    assert processes_under(inst.directory) == []
    start_vm(tpm_vm.image, trust_key=tpm_vm.trust_key, name=NAME, port=tpm_vm.target.port,
             tpm=True)
    # Killed instead, the TPM would count one more failure: three, and it locks the AK out.
    assert int(tpm_vm.script(LOCKOUT_COUNTER), 16) == before


@pytest.mark.e2e
def test_stop_stops_swtpm_and_keeps_the_vtpm(tpm_vm: TpmVm) -> None:
    inst = tpm_vm.instance
    assert len(processes_under(inst.directory)) == 2  # qemu and swtpm
    vm.stop(NAME)
    assert processes_under(inst.directory) == []
    assert not inst.swtpm.pid_file.exists() and not inst.swtpm.socket.exists()
    assert inst.tpm_ca.is_file() and (inst.tpm_state / "tpm2-00.permall").is_file()


def _kill_swtpm_once_booting(inst: vm.Instance, stop: threading.Event) -> None:
    """SIGKILL the instance's swtpm a moment after qemu has started on it: a crash."""
    while not stop.wait(0.1):
        pid = inst.swtpm.pid()
        if pid is not None and inst.pid() is not None:
            time.sleep(2)
            os.kill(pid, signal.SIGKILL)
            return


@pytest.mark.e2e
def test_a_crashed_swtpm_is_reported_with_its_log(tpm_vm: TpmVm) -> None:
    vm.stop(NAME)  # this test may run alone
    inst = vm.instance(NAME)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_swtpm_once_booting, args=(inst, stop))
    killer.start()
    try:
        with pytest.raises(vtpm.VtpmError) as caught:
            vm.start(tpm_vm.image, trust_key=tpm_vm.trust_key, name=NAME,
                     ssh_port=free_port(), timeout=BOOT_TIMEOUT, tpm=True)
    finally:
        stop.set()
        killer.join()
    message = str(caught.value)
    assert message == f"vm {NAME}: its swtpm stopped; see its log {inst.swtpm.log_file}"
    assert processes_under(inst.directory) == []
