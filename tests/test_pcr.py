"""PCR predictions, checked against systemd-measure, pesign and osslsigncode and a recorded
OVMF event log. tests/e2e/test_pcr_image.py checks them on a built image's real kernel and
on a real OVMF + swtpm boot."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import eventlog, pcr, pe
from hardhost.core.run import output, run
from hardhost.verifier.transport import Target, connect, wait_for_host_key
from hardhost.vm import harness as vm
from tests.conftest import free_port
from tests.test_uki import (
    Inputs,
    build_uki,
    fake_kernel,
    make_inputs,
    need,
    need_stub,
    sign,
)

DATA = Path(__file__).parent / "data" / "uki"
MEASURE = Path("/lib/systemd/systemd-measure")  # systemd 252 ships it outside $PATH
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MEMORY_MIB, CPUS = 2048, 2
MACHINE = pcr.machine_key(memory_mib=MEMORY_MIB, cpus=CPUS)
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


@pytest.mark.parametrize("phases", PHASE_CASES, ids=lambda p: ":".join(p) or "none")
@pytest.mark.parametrize("cmdline", ["ro quiet", "root=/dev/mapper/root ro console=ttyS0 x=" +
                                     "f" * 300])
def test_pcr11_equals_systemd_measure(tmp_path: Path, cmdline: str,
                                      phases: tuple[str, ...]) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in", cmdline=cmdline, initrd=cmdline.encode() * 999)
    image = build_uki(tmp_path, inputs)
    predicted = pcr.predict_pcrs(image, phases=phases)[11]
    assert predicted.value == systemd_measure(inputs, tmp_path, phases)


def test_pcr11_measures_optional_sections_in_stub_order(tmp_path: Path) -> None:
    """A .dtb and a .splash, added after the others, are still measured after .initrd."""
    objcopy = need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    extra = {"dtb": tmp_path / "board.dtb", "splash": tmp_path / "splash.bmp"}
    extra["dtb"].write_bytes(b"\xd0\x0d\xfe\xed" + bytes(1000))
    extra["splash"].write_bytes(b"BM" + bytes(3000))
    end = max(s.virtual_end for s in pe.read(image).sections)
    args: list[str | Path] = [objcopy]
    for offset, (name, path) in enumerate(extra.items(), 1):
        args += ["--add-section", f".{name}={path}",
                 "--change-section-vma", f".{name}={end + offset * 0x100000:#x}"]
    full = tmp_path / "full.efi"
    run([*args, image, full])
    events = pcr.predict_pcrs(full)[11].events
    assert [e.description.split()[0] for e in events[::2]] == [
        ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb"]
    assert pcr.replay(events) == systemd_measure(inputs, tmp_path, (), extra)


def test_section_is_measured_at_its_virtual_size() -> None:
    data = bytes(range(256)) * 4
    short = pe.Section(".osrel", 0x1000, 100, 0, 512)
    long = pe.Section(".osrel", 0x1000, 700, 0, 512)
    image = pe.PEImage(data=data, checksum_offset=0, certificate_entry_offset=None,
                       certificate_table=(0, 0), size_of_headers=0, section_alignment=512,
                       major_image_version=0, sections=(short, long))
    assert image.memory_contents(short) == data[:100]
    assert image.memory_contents(long) == data[:512] + bytes(188)


def test_unknown_phase_is_refused(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    image = build_uki(tmp_path, make_inputs(tmp_path / "in"))
    with pytest.raises(pcr.PCRError, match="unknown boot phase 'booted'"):
        pcr.predict_pcrs(image, phases=("booted",))


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


def test_authenticode_equals_pesign(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    for path in (need_stub(), inputs.linux, image):
        assert pe.authenticode_digest(pe.read(path)).hex() == pesign_digest(path), path


def test_authenticode_equals_the_signers_digest(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    image = build_uki(tmp_path, make_inputs(tmp_path / "in"))
    signed, _cert = sign(image, tmp_path)
    assert pe.authenticode_digest(pe.read(signed)).hex() == signed_digest(signed)


def test_pcr4_events(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    image = build_uki(tmp_path, inputs)
    events = pcr.predict_pcrs(image)[4].events
    assert [(e.type, e.description) for e in events] == [
        (pcr.EventType.EV_EFI_ACTION, "Calling EFI Application from Boot Option"),
        (pcr.EventType.EV_SEPARATOR, "separator"),
        (pcr.EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "UKI"),
        (pcr.EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "kernel (.linux section)"),
    ]
    assert events[0].digest == hashlib.sha256(b"Calling EFI Application from Boot Option"
                                              ).hexdigest()
    assert events[1].digest == hashlib.sha256(bytes(4)).hexdigest()
    assert events[2].digest == pesign_digest(image)
    assert events[3].digest == pesign_digest(inputs.linux)


def test_pcr9_events(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in", cmdline="ro quiet")
    events = pcr.predict_pcrs(build_uki(tmp_path, inputs))[9].events
    assert [(e.type, e.description) for e in events] == [
        (pcr.EventType.EV_EVENT_TAG, "LOADED_IMAGE::LoadOptions"),
        (pcr.EventType.EV_EVENT_TAG, "Linux initrd"),
    ]
    # The command line as UTF-16LE with its NUL, as systemd-stub hands it to the kernel.
    assert events[0].digest == hashlib.sha256("ro quiet\0".encode("utf-16-le")).hexdigest()
    assert events[1].digest == hashlib.sha256(inputs.initrd.read_bytes()).hexdigest()


def test_kernel_without_tag_strings_logs_nothing_in_pcr9(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    inputs = make_inputs(tmp_path / "in")
    fake_kernel(inputs.linux, tags=b"Linux initrd\0")
    events = pcr.predict_pcrs(build_uki(tmp_path, inputs))[9].events
    assert [e.description for e in events] == ["Linux initrd"]


def test_predictions_and_firmware_golden_values(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    image = build_uki(tmp_path, make_inputs(tmp_path / "in"))
    code = tmp_path / "CODE.fd"
    code.write_bytes(b"firmware")
    machine = pcr.machine_key(memory_mib=512, cpus=1)
    golden = pcr.FirmwareGolden(hashlib.sha256(b"firmware").hexdigest(), "", machine, "test",
                                {0: "0a" * 32, 7: "07" * 32})
    found = pcr.firmware_golden(code, machine, {(golden.code_sha256, machine): golden})
    predicted = pcr.predict_pcrs(image, firmware=found)
    assert list(predicted) == [0, 4, 7, 9, 11, 12, 13]
    assert predicted[0].source is pcr.Source.FIRMWARE_GOLDEN
    assert predicted[7].value == "07" * 32 and predicted[7].events == ()
    assert predicted[12].value == predicted[13].value == pcr.ZERO
    for index in (4, 9, 11):
        assert predicted[index].value == pcr.replay(predicted[index].events)


def test_unknown_firmware_says_how_to_record_it(tmp_path: Path) -> None:
    code = tmp_path / "CODE.fd"
    code.write_bytes(b"other firmware")
    with pytest.raises(pcr.PCRError) as caught:
        pcr.firmware_golden(code, pcr.machine_key(memory_mib=2048, cpus=2))
    assert "no recorded PCR 0/7 values" in str(caught.value)
    assert "\n" not in str(caught.value)


def recorded_pcrs() -> dict[int, str]:
    lines = (DATA / "ovmf-pcrs.txt").read_text().split("\n")
    return {int(index): value for index, value in (line.split() for line in lines if line)}


def test_recorded_event_log_replays_to_the_recorded_pcrs() -> None:
    """A log and PCRs read from one OVMF + swtpm boot: the parser and replay agree with the
    TPM, and the firmware's PCR 0 and 7 are the golden values kept for this OVMF build."""
    logged = eventlog.parse((DATA / "ovmf-eventlog.bin").read_bytes())
    recorded = recorded_pcrs()
    for index in (0, 1, 2, 3, 4, 5, 6, 7, 9, 11):
        assert pcr.replay(eventlog.events_for(logged, index)) == recorded[index], index
    machine = pcr.machine_key(memory_mib=2048, cpus=2)
    (golden,) = [g for g in pcr.KNOWN_FIRMWARE.values()
                 if "OVMF_CODE_4M" in g.description and g.machine == machine]
    assert golden.pcrs == {0: recorded[0], 7: recorded[7]}


def test_recorded_event_log_has_the_predicted_shape(tmp_path: Path) -> None:
    need("objcopy", "binutils")
    logged = eventlog.parse((DATA / "ovmf-eventlog.bin").read_bytes())
    predicted = pcr.predict_pcrs(build_uki(tmp_path, make_inputs(tmp_path / "in")))
    for index in (4, 9, 11):
        seen = eventlog.events_for(logged, index)
        assert [e.type for e in seen] == [e.type for e in predicted[index].events], index
    assert [e.description for e in eventlog.events_for(logged, 9)] == [
        e.description for e in predicted[9].events]
    # The constant events, and the recorded boot's kernel digest, match exactly.
    assert [e.digest for e in eventlog.events_for(logged, 4)[:2]] == [
        e.digest for e in predicted[4].events[:2]]


def test_truncated_event_log_is_refused() -> None:
    data = (DATA / "ovmf-eventlog.bin").read_bytes()
    with pytest.raises(eventlog.EventLogError, match="truncated"):
        eventlog.parse(data[:-7])


# --- e2e: a real boot -----------------------------------------------------------------------

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


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    try:
        yield process
    finally:
        _stop(process)


def boot_and_read(esp: Path, image: Path, identity: Path, scratch: Path) -> BootEvidence:
    """Boot `esp` under OVMF with a fresh swtpm, the image's disks attached as the
    initramfs expects, and read PCRs, pcrphase results and the event log over SSH."""
    qemu = need("qemu-system-x86_64", "qemu-system-x86")
    swtpm = need("swtpm", "swtpm")
    if not OVMF_CODE.is_file():
        pytest.fail(f"{OVMF_CODE} not found: apt-get install ovmf")
    tpm_dir = scratch / "tpm"
    tpm_dir.mkdir()
    variables = scratch / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, variables)
    host_key = vm._provision_state(vm.Instance("pcr-e2e", scratch))  # state.img, host key
    port = free_port()
    known_hosts = scratch / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} "
                           f"{host_key.get_base64()}\n")
    socket_path = tpm_dir / "swtpm.sock"
    tpm_argv = [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
                "--ctrl", f"type=unixio,path={socket_path}"]
    drives = []
    for path, readonly in ((image / "root.img", True), (image / "root.verity", True),
                           (scratch / "state.img", False)):
        drives += ["-drive", f"file={path},if=virtio,format=raw" + (",readonly=on"
                                                                    if readonly else "")]
    qemu_argv = [
        qemu, "-machine", "q35", "-accel", "tcg", "-m", str(MEMORY_MIB), "-smp", str(CPUS),
        "-nodefaults",
        "-display", "none", "-monitor", "none", "-serial", f"file:{scratch / 'serial.log'}",
        "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
        "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
        "-chardev", f"socket,id=chrtpm,path={socket_path}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
        # The ESP first in the boot order: a failed attempt before it would add PCR 4 events.
        "-drive", f"if=none,id=esp,file={esp},format=raw", "-device", "ahci,id=ahci",
        "-device", "ide-hd,drive=esp,bus=ahci.0,bootindex=0", *drives,
        # romfile= drops iPXE, so the firmware offers no network boot to try.
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-object", "rng-random,filename=/dev/urandom,id=rng0",
        "-device", "virtio-rng-pci,rng=rng0",
    ]
    with _running(tpm_argv, scratch / "swtpm.log") as tpm:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and tpm.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        with _running(qemu_argv, scratch / "qemu.log") as machine:
            wait_for_host_key("127.0.0.1", port, host_key, timeout=BOOT_TIMEOUT,
                              alive=lambda: machine.poll() is None)
            seconds = time.monotonic() - start
            with connect(Target("root", "127.0.0.1", port), known_hosts=known_hosts,
                         identity=identity) as session:
                result = session.run_script(READ_SCRIPT, timeout=180)
    assert result.exit_status == 0, result.stderr.decode(errors="replace")
    return read_evidence(result.stdout.decode(), seconds)


def mismatch(index: int, predicted: pcr.PCRValue, logged: list[pcr.Event]) -> str:
    lines = [f"PCR {index}: predicted {predicted.value}"]
    lines += [f"  predicted {e.digest[:16]} {e.type} {e.description}" for e in predicted.events]
    lines += [f"  logged    {e.digest[:16]} {e.type} {e.description}" for e in logged]
    return "\n".join(lines)
