"""`hardhost vm start|stop`: boot a built image under qemu, SSH forwarded to loopback.

Each instance keeps its state under ~/.local/state/hardhost/vms/NAME: the state disk (the
SSH host key and machine-id, made here before the first boot so the host is known without
trust on first use), the serial log, the pid file and known_hosts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder import layout
from builder.build import ARTIFACTS
from builder.errors import HardhostError, Unreachable, UsageError
from builder.log import complete_step
from builder.run import run, which
from verifier.transport import fingerprint, public_key_from_line, wait_for_host_key

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
STATE_DISK_BYTES = 16 * 2**20


def state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "hardhost" / "vms"


@dataclass(frozen=True)
class Instance:
    name: str
    directory: Path
    ssh_port: int = 0

    @property
    def state_disk(self) -> Path:
        return self.directory / "state.img"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def host_public_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key.pub"

    def pid(self) -> int | None:
        """The qemu pid, if that process is still this instance's qemu."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"qemu" in cmdline and self.name.encode() in cmdline else None


def instance(name: str) -> Instance:
    if not _NAME.match(name):
        raise UsageError(f"{name!r}: an instance name is letters, digits, '.', '_' and '-'")
    return Instance(name, state_root() / name)


def _provision_state(inst: Instance) -> paramiko.PKey:
    """Make the state disk once: a fresh host key and machine-id. Later starts reuse it."""
    if inst.state_disk.exists() and inst.host_public_key.exists():
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
        os.ftruncate(fd, STATE_DISK_BYTES)
        os.close(fd)
        run(["mkfs.ext4", "-q", "-F", "-L", "hardhost-state", "-O", "^has_journal",
             "-E", "root_owner=0:0", "-d", staging, partial])
        partial.rename(inst.state_disk)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    inst.host_public_key.write_text(f"{public_line}\n")
    log.info("  provisioned host key %s", public_line.split()[0])
    return public_key_from_line(public_line)


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"port {port} on 127.0.0.1 is already in use") from None


def _read_image(image_dir: Path) -> str:
    missing = [name for name in (*ARTIFACTS, "build.json") if not (image_dir / name).is_file()]
    if missing:
        raise UsageError(f"{image_dir}: not a built image (missing {', '.join(missing)})")
    try:
        cmdline = json.loads((image_dir / "build.json").read_text())["cmdline"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{image_dir}/build.json: unreadable or without cmdline") from None
    if not isinstance(cmdline, str):
        raise UsageError(f"{image_dir}/build.json: cmdline is not a string")
    return cmdline


def qemu_argv(inst: Instance, image_dir: Path, cmdline: str, *, ssh_port: int, accel: str,
              memory_mib: int) -> list[str]:
    image = image_dir.resolve()
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else [
        "-accel", "tcg,thread=multi", "-cpu", "max"]
    drives: list[str] = []
    # The order is the contract with the initramfs: vda data, vdb hashes, vdc state.
    for drive_id, path, readonly in (("data", image / "root.img", True),
                                     ("hash", image / "root.verity", True),
                                     ("state", inst.state_disk, False)):
        ro = ",readonly=on" if readonly else ""
        drives += ["-drive", f"file={path},if=none,id={drive_id},format=raw{ro}",
                   "-device", f"virtio-blk-pci,drive={drive_id}"]
    return [
        "qemu-system-x86_64", "-name", f"hardhost-{inst.name}", "-machine", "q35",
        *accel_args, "-smp", "2", "-m", str(memory_mib),
        "-nodefaults", "-display", "none", "-monitor", "none",
        "-serial", f"file:{inst.serial_log}",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", cmdline, *drives,
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-object", "rng-random,filename=/dev/urandom,id=rng0",
        "-device", "virtio-rng-pci,rng=rng0",
        "-daemonize", "-pidfile", str(inst.pid_file),
    ]


def start(image_dir: Path, *, name: str, ssh_port: int, accel: str = "tcg",
          memory_mib: int = 1024, timeout: float = 300) -> Instance:
    """Boot `image_dir` and return once its sshd answers with the provisioned host key."""
    inst = instance(name)
    cmdline = _read_image(image_dir)
    which("qemu-system-x86_64")
    if inst.pid() is not None:
        raise UsageError(f"vm {name} is already running; stop it with: hardhost vm stop {name}")
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise UsageError("--accel kvm: /dev/kvm is not usable here; use --accel tcg")
    _check_port_free(ssh_port)
    inst = Instance(name, inst.directory, ssh_port)
    inst.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with complete_step(f"Starting vm {name} from {image_dir}") as step:
        host_key = _provision_state(inst)
        inst.known_hosts.write_text(
            f"[127.0.0.1]:{ssh_port} {host_key.get_name()} {host_key.get_base64()}\n")
        inst.serial_log.unlink(missing_ok=True)
        run(qemu_argv(inst, image_dir, cmdline, ssh_port=ssh_port, accel=accel,
                      memory_mib=memory_mib))
        log.info("  qemu running (%s); waiting for SSH on 127.0.0.1:%d", accel, ssh_port)
        try:
            wait_for_host_key("127.0.0.1", ssh_port, host_key, timeout=timeout,
                              alive=lambda: inst.pid() is not None)
        except HardhostError as exc:
            _kill(inst)
            if isinstance(exc, Unreachable):
                raise Unreachable(f"vm {name}: SSH did not answer within {timeout:.0f}s; "
                                  f"see the serial log {inst.serial_log}") from None
            raise
        step.note = f"host key {fingerprint(host_key)}"
    return inst


def _kill(inst: Instance, grace: float = 10.0) -> bool:
    pid = inst.pid()
    if pid is None:
        inst.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while inst.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if inst.pid() is not None:
        os.kill(pid, signal.SIGKILL)
    inst.pid_file.unlink(missing_ok=True)
    return True


def stop(name: str, *, purge: bool = False) -> None:
    inst = instance(name)
    if _kill(inst):
        log.info("vm %s stopped", name)
    else:
        log.info("vm %s was not running", name)
    if purge and inst.directory.exists():
        shutil.rmtree(inst.directory)
        log.info("vm %s state removed", name)
