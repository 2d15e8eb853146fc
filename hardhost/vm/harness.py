"""`hardhost vm start|stop`: boot a built image's disk under qemu, SSH forwarded to loopback.

Each instance keeps its state under ~/.local/state/hardhost/vms/NAME: its disk (a verified
copy of the image's disk.img, base.img, under a copy-on-write overlay, disk.qcow2, that takes
every write, so the built image stays pristine), the state file system (the SSH host key
and machine-id, made at the instance's first start and written into the disk's state
partition before each boot, so the host is known without trust on first use), the serial
log, the pid file and known_hosts.

The disk boots the way a machine boots it: OVMF starts systemd-boot from the ESP, which
starts the newest UKI whose tries are not used up. With `--tpm`, a swtpm vTPM measures that
chain; the instance then also keeps the firmware's variable store, the vTPM's state and the
local CA that certified its EK (see `hardhost.vm.vtpm`). A direct boot (`--direct`) skips the
firmware: qemu starts the image's kernel and initrd with the manifest's command line, which
finds slot A on the same disk. The tests boot that way when they need no TPM, because it
reaches SSH several seconds sooner under TCG.

Nothing in the image folder is trusted but what its signed manifest vouches for: the
manifest must verify against a key the caller names, the command line comes from it (not
from the unsigned build.json), and every file the guest boots must match its digest. The
disk, the kernel and the initrd are copied into the instance's folder and the copies are
checked and booted, so the folder cannot swap them between the check and qemu's read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.core.errors import (
    CommandFailed,
    HardhostError,
    ToolMissing,
    TrustError,
    Unreachable,
    UsageError,
)
from hardhost.core.inputs import decode_json
from hardhost.core.log import complete_step
from hardhost.core.run import process_cmdline, run, which
from hardhost.image import layout
from hardhost.image.manifest import (
    MANIFEST_NAME,
    HostManifest,
    check_named_artifacts,
    read_verified,
    require_subjects,
)
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.transport import fingerprint, public_key_from_line, wait_for_host_key
from hardhost.vm import qmp, vtpm

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
STATE_FS_BYTES = 16 * 2**20  # the state partition may be larger; the rest stays unused

# Debian's ovmf package: the 4 MiB flash layout, Secure Boot off. builder.pcr.KNOWN_FIRMWARE
# holds the PCR 0 and 7 recorded from this code file.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_PACKAGE = "ovmf"
POWER_OFF_TIMEOUT = 45.0  # seconds; a TCG guest takes about 8 to shut down
CPUS = 2  # with the memory size, part of builder.pcr.machine_key(): PCR 0 depends on both
# What each boot reads from the image folder, copied into the instance's folder and checked
# there: the disk always, and for a direct boot the kernel and initrd qemu loads itself.
DIRECT_COPIED = (layout.KERNEL, layout.INITRD)
# Kernels and initrds are tens of MiB: a bigger "kernel" is not one, and is not copied. A
# disk is two slots of at most 64 GiB each, and sparse.
MAX_BOOT_FILE = 1 << 30
MAX_DISK_FILE = 1 << 38
_ZERO_MIB = bytes(1 << 20)


def state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "hardhost" / "vms"


@dataclass(frozen=True)
class Instance:
    name: str
    directory: Path
    ssh_port: int = 0

    @property
    def state_fs(self) -> Path:
        """The state file system (host key, machine-id), written into each fresh disk."""
        return self.directory / "state.img"

    @property
    def base_disk(self) -> Path:
        """The verified copy of the image's disk.img, read-only."""
        return self.directory / "base.img"

    @property
    def disk(self) -> Path:
        """The instance's disk: a qcow2 overlay on `base_disk` holding every write."""
        return self.directory / "disk.qcow2"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def host_public_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key.pub"

    @property
    def kernel(self) -> Path:
        """The verified copy of the image's kernel that a direct boot runs."""
        return self.directory / layout.KERNEL

    @property
    def initrd(self) -> Path:
        return self.directory / layout.INITRD

    @property
    def ovmf_vars(self) -> Path:
        """The firmware's variable store, copied once: boot entries persist like a disk's."""
        return self.directory / "OVMF_VARS.fd"

    @property
    def tpm_state(self) -> Path:
        return self.directory / "tpm" / "state"

    @property
    def tpm_local_ca(self) -> vtpm.LocalCa:
        return vtpm.LocalCa(self.directory / "tpm" / "ca")

    @property
    def tpm_ca(self) -> Path:
        """The CA bundle that certifies this instance's EK, for `attest --tpm --tpm-ca`."""
        return self.tpm_local_ca.bundle

    @property
    def swtpm(self) -> vtpm.Swtpm:
        return vtpm.Swtpm(self.tpm_state, self.directory / "swtpm.sock",
                          self.directory / "swtpm.pid", self.directory / "swtpm.log")

    def pid(self) -> int | None:
        """The qemu pid, if that process is still this instance's qemu."""
        return vtpm.running_pid(self.pid_file, b"qemu", self.name.encode())


def instance(name: str) -> Instance:
    if not _NAME.match(name):
        raise UsageError(f"{name!r}: an instance name is letters, digits, '.', '_' and '-'")
    return Instance(name, state_root() / name)


def _provision_state(inst: Instance) -> paramiko.PKey:
    """Make the state file system once: a fresh host key and machine-id. Later starts
    reuse it."""
    if inst.state_fs.exists() and inst.host_public_key.exists():
        return public_key_from_line(inst.host_public_key.read_text())
    private = Ed25519PrivateKey.generate()
    public_line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    staging = Path(tempfile.mkdtemp(prefix="state-", dir=inst.directory))
    try:
        ssh_dir = staging / Path(layout.STATE_HOST_KEY).parent
        ssh_dir.mkdir(mode=0o700)
        key_file = staging / layout.STATE_HOST_KEY
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
        (staging / f"{layout.STATE_HOST_KEY}.pub").write_text(f"{public_line}\n")
        (staging / layout.STATE_MACHINE_ID).write_text(f"{uuid.uuid4().hex}\n")
        partial = inst.directory / "state.img.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, STATE_FS_BYTES)
        os.close(fd)
        run(["mkfs.ext4", "-q", "-F", "-L", layout.STATE_LABEL, "-O", "^has_journal",
             "-E", "root_owner=0:0", "-d", staging, partial])
        partial.rename(inst.state_fs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    inst.host_public_key.write_text(f"{public_line}\n")
    log.info("  provisioned host key %s", public_line.split()[0])
    return public_key_from_line(public_line)


def _check_port_free(port: int) -> None:
    """Refuse a port something listens on. The probe binds as qemu's forward does, with
    SO_REUSEADDR: connections the last qemu on this port closed linger in TIME_WAIT for a
    minute, and without it they would make a port qemu can take look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"port {port} on 127.0.0.1 is already in use") from None


def _booted(direct: bool) -> tuple[str, ...]:
    return (DIRECT_COPIED if direct else ()) + (layout.DISK,)


def verified_manifest(image_dir: Path, trust_key: Path, *, direct: bool = False
                      ) -> HostManifest:
    """The manifest of the image at `image_dir`, verified against `trust_key` (a PEM public
    key or a folder of *.pub), and signing every file a boot reads.

    Raises `UsageError` for a folder that is not a built image (or has its disk only as
    qcow2) and `TrustError` for a manifest that does not verify or signs too little.
    """
    trusted = load_trusted_keys(trust_key)
    booted = _booted(direct)
    if not (image_dir / layout.DISK).exists() and (image_dir / layout.DISK_QCOW2).exists():
        raise UsageError(f"{image_dir}: vm start boots {layout.DISK}; this image has only "
                         f"{layout.DISK_QCOW2}: build it again without --format qcow2")
    missing = [name for name in (MANIFEST_NAME, *booted) if not (image_dir / name).exists()]
    if missing:
        raise UsageError(f"{image_dir}: not a built image (missing {', '.join(missing)})")
    path = image_dir / MANIFEST_NAME
    manifest, _key_id = read_verified(path, trusted)
    require_subjects(manifest, path, booted, "the boot reads")
    return manifest


def _copy_boot_file(source: Path, target: Path, limit: int = MAX_BOOT_FILE) -> None:
    """Copy `source` to `target` (mode 0600, replaced whole), leaving MiBs of zeros as holes.
    `source` must be a regular file: a FIFO is opened without waiting for a writer and
    refused like a device."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"{source}: cannot read: {exc.strerror}") from None
    with contextlib.closing(os.fdopen(fd, "rb", buffering=0)) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TrustError(f"{source}: not a regular file; the boot reads only files "
                             "whose digests the manifest signs")
        if info.st_size > limit:
            raise TrustError(f"{source}: larger than {limit} bytes, which no such file of "
                             "an image is")
        os.set_blocking(fd, True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(out, "wb") as g:
                copied = 0
                while chunk := f.read(1 << 20):
                    copied += len(chunk)
                    if copied > limit:
                        raise TrustError(f"{source}: grew past {limit} bytes while it was "
                                         "copied")
                    if chunk == _ZERO_MIB[:len(chunk)]:
                        g.seek(len(chunk), os.SEEK_CUR)
                    else:
                        g.write(chunk)
                g.truncate(copied)
            partial.replace(target)
        except OSError as exc:
            raise HardhostError(f"{target}: cannot copy {source}: {exc.strerror}") from None
        finally:
            partial.unlink(missing_ok=True)


def stage_boot_files(inst: Instance, image_dir: Path, manifest: HostManifest, *,
                     direct: bool = False, keep_disk: bool = False) -> None:
    """Copy what the boot reads from `image_dir` into the instance's folder and check the
    copies against `manifest`: the disk (unless `keep_disk`: the instance's disk as it was
    left, updated or not), and for a `direct` boot the kernel and initrd. A fresh disk gets
    a new overlay."""
    copied = (DIRECT_COPIED if direct else ()) + (() if keep_disk else (layout.DISK,))
    targets = {layout.DISK: inst.base_disk}
    try:
        for name in copied:
            target = targets.get(name, inst.directory / name)
            limit = MAX_DISK_FILE if name == layout.DISK else MAX_BOOT_FILE
            _copy_boot_file(image_dir / name, target, limit)
            try:
                check_named_artifacts(_renamed(manifest, name, target.name), inst.directory,
                                      (target.name,))
            except TrustError as exc:
                # Name the image's file, which the user can act on, not the copy.
                raise TrustError(f"{image_dir / name}: its sha256 does not match the signed "
                                 f"manifest's ({exc}); rebuild the image or restore the "
                                 "file") from None
    except TrustError:
        for name in copied:  # nothing of a refused image is left to boot by mistake
            targets.get(name, inst.directory / name).unlink(missing_ok=True)
        raise
    if keep_disk:
        if not inst.disk.is_file():
            raise UsageError(f"vm {inst.name} has no disk to keep; start it without "
                             "--keep-disk")
        return
    inst.base_disk.chmod(0o400)
    inst.disk.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", inst.base_disk,
         inst.disk])
    inst.disk.chmod(0o600)


def _renamed(manifest: HostManifest, name: str, new: str) -> HostManifest:
    """`manifest` with the subject `name` under the name of its copy."""
    return dataclasses.replace(manifest, subjects=tuple(
        dataclasses.replace(s, name=new) if s.name == name else s for s in manifest.subjects))


def _state_partition(inst: Instance) -> tuple[int, int]:
    """The offset and size in bytes of the state partition of the instance's base disk,
    from its GPT (the copy whose digest the manifest signs)."""
    table = decode_json(run(["sfdisk", "--json", inst.base_disk], capture=True).stdout,
                        origin=f"the partition table of {inst.base_disk}")
    try:
        partitions = table["partitiontable"]["partitions"]
        sector = int(table["partitiontable"].get("sectorsize", 512))
        for part in partitions:
            if part.get("name") == layout.STATE_LABEL:
                return int(part["start"]) * sector, int(part["size"]) * sector
    except (KeyError, TypeError, ValueError):
        pass
    raise UsageError(f"{inst.base_disk}: no {layout.STATE_LABEL} partition in its GPT")


def _write_state(inst: Instance) -> None:
    """Write the instance's state file system into the state partition of its overlay, before
    the first boot of a fresh disk."""
    offset, size = _state_partition(inst)
    state_size = inst.state_fs.stat().st_size
    if state_size > size:
        raise UsageError(f"{inst.base_disk}: its state partition ({size} bytes) cannot hold "
                         f"the instance's state ({state_size} bytes)")
    run(["qemu-img", "convert", "-n", "-f", "raw", inst.state_fs, "--target-image-opts",
         f"driver=raw,offset={offset},size={state_size},file.driver=qcow2,"
         f"file.file.filename={inst.disk}"])


def _boot_args(inst: Instance, cmdline: str, *, direct: bool, tpm: bool) -> list[str]:
    if direct:
        return ["-kernel", str(inst.kernel), "-initrd", str(inst.initrd), "-append", cmdline]
    # No -kernel: OVMF starts systemd-boot from the disk's ESP, which starts the UKI; with a
    # TPM, each is measured into PCR 4 and systemd-stub measures the UKI into PCR 11.
    args = [
        "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
        "-drive", f"if=pflash,format=raw,unit=1,file={inst.ovmf_vars}",
    ]
    if tpm:
        args += ["-chardev", f"socket,id=chrtpm,path={inst.swtpm.socket}",
                 "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
    return args


def qemu_argv(inst: Instance, cmdline: str, *, ssh_port: int, accel: str,
              memory_mib: int, direct: bool = False, tpm: bool = False) -> list[str]:
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else [
        "-accel", "tcg,thread=multi", "-cpu", "max"]
    # The disk first in the boot order: each failed boot attempt before it would add events
    # to PCR 4. romfile= drops iPXE, so the firmware has no network boot to try either.
    nic = "virtio-net-pci,netdev=net0" + ("" if direct else ",romfile=")
    return [
        "qemu-system-x86_64", "-name", f"hardhost-{inst.name}", "-machine", "q35",
        *accel_args, "-smp", str(CPUS), "-m", str(memory_mib),
        "-nodefaults", "-display", "none", "-monitor", "none",
        "-qmp", f"unix:{inst.qmp_socket},server=on,wait=off",
        "-serial", f"file:{inst.serial_log}",
        *_boot_args(inst, cmdline, direct=direct, tpm=tpm),
        "-drive", f"file={inst.disk},if=none,id=disk,format=qcow2",
        # -kernel takes boot index 0 itself: a direct boot gives the disk none.
        "-device", "virtio-blk-pci,drive=disk" + ("" if direct else ",bootindex=0"),
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", nic,
        "-object", "rng-random,filename=/dev/urandom,id=rng0",
        "-device", "virtio-rng-pci,rng=rng0",
        "-daemonize", "-pidfile", str(inst.pid_file),
    ]


def _require_firmware() -> None:
    for firmware in (OVMF_CODE, OVMF_VARS):
        if not firmware.is_file():
            raise ToolMissing(str(firmware), OVMF_PACKAGE)


def _require_tpm_tools() -> None:
    for tool in ("swtpm", "swtpm_setup", "swtpm_localca"):
        which(tool)


def _copy(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    partial.chmod(0o600)
    partial.replace(target)


def _prepare_tpm(inst: Instance) -> None:
    """The vTPM, manufactured once."""
    if inst.tpm_ca.exists():  # written last: its presence means a complete manufacture
        return
    with complete_step(f"Manufacturing the vTPM of vm {inst.name}"):
        shutil.rmtree(inst.tpm_state.parent, ignore_errors=True)  # one cut short before
        vtpm.manufacture(inst.tpm_state, vtpm.make_local_ca(inst.tpm_local_ca.directory))


def _alive(inst: Instance, tpm: bool) -> bool:
    return inst.pid() is not None and (not tpm or inst.swtpm.pid() is not None)


def start(image_dir: Path, *, trust_key: Path, name: str, ssh_port: int, accel: str = "tcg",
          memory_mib: int = 1024, timeout: float = 300, tpm: bool = False,
          direct: bool = False, keep_disk: bool = False) -> Instance:
    """Boot `image_dir` and return once its sshd answers with the provisioned host key.

    The image's manifest must verify against `trust_key` (a PEM public key or a folder of
    *.pub keys), and every file the boot reads must match its signed digest. Otherwise
    `TrustError`, before qemu starts.

    The disk boots through OVMF and systemd-boot; with `tpm`, under a swtpm vTPM,
    manufactured (EK and its certificate) at the instance's first TPM start, and
    `Instance.tpm_ca` then names the CA bundle that certifies the EK. `direct` boots the
    kernel and initrd with the manifest's command line instead. `keep_disk` boots the
    instance's disk as it was left (after an update, or a VM killed mid-write).
    """
    if direct and tpm:
        raise UsageError("--direct boots no firmware, so there is nothing a TPM would "
                         "measure: use one of --direct and --tpm")
    if direct and keep_disk:
        raise UsageError("--keep-disk boots the disk as it was left, through its own ESP; "
                         "a --direct boot would start the image's slot A instead")
    inst = instance(name)
    manifest = verified_manifest(image_dir, trust_key, direct=direct)
    if inst.pid() is not None:
        raise UsageError(f"vm {name} is already running; stop it with: hardhost vm stop {name}")
    which("qemu-system-x86_64")
    which("qemu-img")
    if not direct:
        _require_firmware()
    if tpm:
        _require_tpm_tools()
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise UsageError("--accel kvm: /dev/kvm is not usable here; use --accel tcg")
    _check_port_free(ssh_port)
    inst.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stage_boot_files(inst, image_dir, manifest, direct=direct, keep_disk=keep_disk)
    inst = Instance(name, inst.directory, ssh_port)
    with complete_step(f"Starting vm {name} from {image_dir}") as step:
        host_key = boot_staged(inst, manifest.cmdline, accel=accel, memory_mib=memory_mib,
                               timeout=timeout, tpm=tpm, direct=direct,
                               fresh_disk=not keep_disk)
        step.note = f"host key {fingerprint(host_key)}"
    return inst


def boot_staged(inst: Instance, cmdline: str, *, accel: str = "tcg",
                memory_mib: int = 1024, timeout: float = 300, tpm: bool = False,
                direct: bool = False, fresh_disk: bool = True) -> paramiko.PKey:
    """Boot the disk staged in the instance's folder (and for a `direct` boot its kernel and
    initrd, with `cmdline`), and return the host key once sshd answers with it on
    `inst.ssh_port`. A `fresh_disk` gets the instance's state first. Checks nothing:
    `start` verifies and stages first. On failure, the instance's qemu and swtpm are
    stopped."""
    name = inst.name
    host_key = _provision_state(inst)
    if fresh_disk:
        _write_state(inst)
    inst.known_hosts.write_text(
        f"[127.0.0.1]:{inst.ssh_port} {host_key.get_name()} {host_key.get_base64()}\n")
    inst.serial_log.unlink(missing_ok=True)
    if not direct and not inst.ovmf_vars.exists():
        _copy(OVMF_VARS, inst.ovmf_vars)
    # A killed qemu leaves its swtpm running on this instance's vTPM state: start anew.
    _stop_swtpm(inst)
    try:
        if tpm:
            _prepare_tpm(inst)
            inst.swtpm.start()
        run(qemu_argv(inst, cmdline, ssh_port=inst.ssh_port, accel=accel,
                      memory_mib=memory_mib, direct=direct, tpm=tpm))
        log.info("  qemu running (%s%s); waiting for SSH on 127.0.0.1:%d", accel,
                 ", direct" if direct else ", OVMF" + (", swtpm" if tpm else ""),
                 inst.ssh_port)
        wait_for_host_key("127.0.0.1", inst.ssh_port, host_key, timeout=timeout,
                          alive=lambda: _alive(inst, tpm))
    except HardhostError as exc:
        swtpm_died = tpm and inst.swtpm.pid() is None
        _kill(inst)
        _stop_swtpm(inst)
        swtpm_log = inst.swtpm.log_file
        # qemu reports a vTPM that refuses to start (a damaged state, say) as its own
        # failure; the reason is in swtpm's log.
        if tpm and isinstance(exc, CommandFailed) and "tpm-emulator" in exc.detail:
            raise vtpm.VtpmError(f"vm {name}: {exc.detail}; see swtpm's log "
                                 f"{swtpm_log}") from None
        if swtpm_died and not isinstance(exc, vtpm.VtpmError):
            raise vtpm.VtpmError(f"vm {name}: its swtpm stopped; see its log "
                                 f"{swtpm_log}") from None
        if isinstance(exc, Unreachable):
            raise Unreachable(f"vm {name}: SSH did not answer within {timeout:.0f}s; "
                              f"see the serial log {inst.serial_log}") from None
        raise
    return host_key


def _terminate(pid: int | None, pid_file: Path, grace: float) -> bool:
    """SIGTERM process `pid`, SIGKILL it after `grace` seconds, and return once it has
    ended; False if it was not running."""
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    cmdline = process_cmdline(pid)
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, cmdline, grace):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, cmdline, grace)
    pid_file.unlink(missing_ok=True)
    return True


def _wait_gone(pid: int, cmdline: bytes, seconds: float) -> bool:
    """Whether process `pid` (still running `cmdline`) ends within `seconds`."""
    # Watch the process, not its pid file: qemu and swtpm remove their pid files while
    # they are still exiting, before they have let go of their disks and state.
    deadline = time.monotonic() + seconds
    while process_cmdline(pid) == cmdline:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _power_off(inst: Instance) -> bool:
    """Shut the guest down as a power button would, and wait for qemu to exit; False if it
    would not, and it is still running."""
    pid = inst.pid()
    if pid is None:
        return False
    cmdline = process_cmdline(pid)
    log.info("vm %s: powering off (its vTPM needs an orderly shutdown)", inst.name)
    try:
        qmp.power_down(inst.qmp_socket, timeout=10.0)
    except (OSError, qmp.QmpError) as exc:
        log.warning("vm %s: cannot press the power button (%s); killing it", inst.name, exc)
        return False
    if not _wait_gone(pid, cmdline, POWER_OFF_TIMEOUT):
        log.warning("vm %s: did not power off within %.0fs; killing it", inst.name,
                    POWER_OFF_TIMEOUT)
        return False
    inst.pid_file.unlink(missing_ok=True)
    return True


def _kill(inst: Instance, grace: float = 10.0) -> bool:
    return _terminate(inst.pid(), inst.pid_file, grace)


def _stop_swtpm(inst: Instance) -> bool:
    swtpm = inst.swtpm
    stopped = _terminate(swtpm.pid(), swtpm.pid_file, grace=5.0)
    swtpm.socket.unlink(missing_ok=True)
    return stopped


def stop(name: str, *, purge: bool = False) -> None:
    """Stop the instance's qemu and its swtpm; with `purge`, delete all its state."""
    inst = instance(name)
    # A TPM that loses power without TPM2_Shutdown counts it against its dictionary-attack
    # limit (3 for swtpm); past it, it refuses the attestation key for 1000 s of uptime
    # per count. The guest's kernel sends TPM2_Shutdown when it powers off.
    if inst.swtpm.pid() is not None and _power_off(inst):
        log.info("vm %s powered off", name)
    elif _kill(inst):
        log.info("vm %s stopped", name)
    else:
        log.info("vm %s was not running", name)
    # qemu tells swtpm to shut down as it exits; this catches a swtpm a killed qemu left.
    if _stop_swtpm(inst):
        log.info("vm %s: swtpm stopped", name)
    if purge and inst.directory.exists():
        shutil.rmtree(inst.directory)
        log.info("vm %s state removed", name)
