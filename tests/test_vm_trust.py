"""`vm start` boots only what the signed manifest vouches for, with the manifest's command
line. Every refusal here happens before qemu would start: `run` is replaced by a recorder
that stops the start, so no guest boots."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import paramiko
import pytest

from hardhost.core.errors import HardhostError, ToolMissing, TrustError, UsageError
from hardhost.image.manifest import MANIFEST_NAME, read_verified
from hardhost.image.signing import keygen, load_private_key, load_trusted_keys
from hardhost.vm import harness as vm
from hardhost.vm import vtpm
from tests.support.images import CMDLINE, fake_image, manifest_for, resign, sign_into
from tests.support.keys import SigningKeys
from tests.support.net import free_port
from tests.support.paths import REPO


class QemuWouldStart(HardhostError):
    """Raised instead of running qemu: the start got past every check."""


@pytest.fixture
def qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The qemu command lines `vm.start` would run; instances live under tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    started: list[list[str]] = []

    from hardhost.core.run import run as real_run

    def record(argv: list[str], **kwargs: object) -> object:
        if str(argv[0]) != "qemu-system-x86_64":  # qemu-img and sfdisk stage the disk
            return real_run(argv, **kwargs)  # type: ignore[arg-type]
        started.append([str(a) for a in argv])
        raise QemuWouldStart("qemu would start here")

    def provision(inst: vm.Instance) -> paramiko.PKey:
        with inst.state_fs.open("wb") as f:  # a state file system's size, its bytes unread
            f.truncate(vm.STATE_FS_BYTES)
        return paramiko.Ed25519Key.from_private_key_file(str(_host_key(tmp_path)))

    monkeypatch.setattr(vm, "run", record)
    monkeypatch.setattr(vm, "which", lambda tool: tool)
    monkeypatch.setattr(vm, "_require_tpm_tools", lambda: None)
    monkeypatch.setattr(vm, "_prepare_tpm", lambda inst: None)
    monkeypatch.setattr(vtpm.Swtpm, "start", lambda self: None)
    monkeypatch.setattr(vm, "_provision_state", provision)
    return started


def _host_key(tmp_path: Path) -> Path:
    path = tmp_path / "host_key"
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)
    return path


def start(image: Path, keys: SigningKeys | Path, *, tpm: bool = False,
          direct: bool = True) -> None:
    trust = keys if isinstance(keys, Path) else keys.public
    vm.start(image, trust_key=trust, name="unit-trust", ssh_port=free_port(), tpm=tpm,
             direct=direct and not tpm)


def appended(argv: list[str]) -> str:
    return argv[argv.index("-append") + 1]


def test_boots_the_signed_command_line_not_build_json(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    # build.json is not signed: whoever can write the folder could open a root shell.
    (image / "build.json").write_text(json.dumps({"cmdline": CMDLINE + " init=/bin/sh"}))
    with pytest.raises(QemuWouldStart):
        start(image, signing_keys)
    (argv,) = qemu
    assert appended(argv) == CMDLINE
    inst = vm.instance("unit-trust")
    kernel = Path(argv[argv.index("-kernel") + 1])
    initrd = Path(argv[argv.index("-initrd") + 1])
    # The verified copies boot, not the folder's files, which could change after the check.
    assert kernel == inst.kernel and initrd == inst.initrd
    assert kernel.read_bytes() == (image / "vmlinuz").read_bytes()
    assert initrd.read_bytes() == (image / "initrd.img").read_bytes()
    assert f"file={inst.disk},if=none,id=disk,format=qcow2" in argv


@pytest.mark.parametrize("name", ["vmlinuz", "initrd.img", "disk.img"])
def test_a_changed_artifact_is_refused_before_qemu(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]], name: str) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    with (image / name).open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(TrustError) as info:
        start(image, signing_keys)
    assert qemu == []
    assert info.value.exit_code == 4
    assert str(info.value).startswith(f"{image}/{name}: ")
    assert "does not match the" in str(info.value)
    inst = vm.instance("unit-trust")
    assert not inst.kernel.exists() and not inst.initrd.exists()


def test_a_changed_disk_is_refused_for_a_firmware_boot(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    with (image / "disk.img").open("r+b") as f:  # another UKI on the ESP, say
        f.seek(3 * 2**20)
        f.write(b"another UKI")
    with pytest.raises(TrustError, match=r"image/disk\.img: its sha256 does not match"):
        start(image, signing_keys, direct=False)
    assert qemu == []
    inst = vm.instance("unit-trust")
    assert not inst.base_disk.exists() and not inst.disk.exists()


def test_a_firmware_boot_runs_the_verified_disk_copy_under_an_overlay(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    built = (image / "disk.img").read_bytes()
    with pytest.raises(QemuWouldStart):
        start(image, signing_keys, direct=False)
    (argv,) = qemu
    inst = vm.instance("unit-trust")
    assert f"file={inst.disk},if=none,id=disk,format=qcow2" in argv
    assert "-append" not in argv and "-kernel" not in argv
    assert any(arg.startswith("if=pflash,format=raw,unit=0,") for arg in argv)
    assert inst.base_disk.read_bytes() == built
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(inst.disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["backing-filename"] == str(inst.base_disk)
    # The state went into the overlay, never into the built image or the verified copy.
    assert (image / "disk.img").read_bytes() == built == inst.base_disk.read_bytes()
    assert info["actual-size"] > 0
    assert "-drive" in argv and f"file={inst.ovmf_vars}" in " ".join(argv)


def test_a_disk_the_manifest_does_not_sign_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    manifest, _ = read_verified(image / MANIFEST_NAME, load_trusted_keys(signing_keys.public))
    unsigned = tuple(s.name for s in manifest.subjects if s.name != "disk.img")
    sign_into(image, manifest_for(image, unsigned), signing_keys.key)
    with pytest.raises(TrustError, match=r"signs no digest for disk\.img"):
        start(image, signing_keys, direct=False)
    assert qemu == []


def test_direct_and_tpm_together_are_refused(tmp_path: Path,
                                             signing_keys: SigningKeys) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    with pytest.raises(UsageError, match="one of --direct and --tpm"):
        vm.start(image, trust_key=signing_keys.public, name="unit-trust",
                 ssh_port=free_port(), tpm=True, direct=True)


def test_a_qcow2_only_image_says_how_to_get_a_raw_disk(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    (image / "disk.img").rename(image / "disk.qcow2")
    with pytest.raises(UsageError, match="build it again without --format qcow2"):
        start(image, signing_keys, direct=False)


def test_keep_disk_needs_a_disk_to_keep(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    with pytest.raises(UsageError, match="has no disk to keep"):
        vm.start(image, trust_key=signing_keys.public, name="unit-trust",
                 ssh_port=free_port(), keep_disk=True)
    assert qemu == []


def test_a_manifest_by_an_untrusted_key_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    _, other_public = keygen(tmp_path / "other")
    image = fake_image(tmp_path / "image", signing_keys.key)
    with pytest.raises(TrustError):
        start(image, other_public)
    assert qemu == []


def test_a_manifest_re_signed_by_another_key_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    """Whoever changes the kernel and signs a matching manifest with their own key gets
    nowhere without that key being trusted."""
    private, _ = keygen(tmp_path / "attacker")
    image = fake_image(tmp_path / "image", signing_keys.key)
    manifest, _ = read_verified(image / MANIFEST_NAME, load_trusted_keys(signing_keys.public))
    (image / "vmlinuz").write_bytes(b"another kernel")
    resign(image, manifest, load_private_key(private), ("vmlinuz",))
    with pytest.raises(TrustError):
        start(image, signing_keys)
    assert qemu == []


def test_a_changed_command_line_in_the_signed_payload_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    envelope = json.loads((image / MANIFEST_NAME).read_text())
    payload = base64.b64decode(envelope["payload"])
    assert b"apparmor=1" in payload
    envelope["payload"] = base64.b64encode(payload.replace(
        b"apparmor=1", b"init=/bin/sh")).decode()
    (image / MANIFEST_NAME).write_text(json.dumps(envelope))
    with pytest.raises(TrustError):
        start(image, signing_keys)
    assert qemu == []


def test_a_folder_without_a_manifest_is_not_an_image(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    (image / MANIFEST_NAME).unlink()
    with pytest.raises(UsageError) as info:
        start(image, signing_keys)
    assert str(info.value) == f"{image}: not a built image (missing {MANIFEST_NAME})"
    assert qemu == []


def refusal_within_seconds(image: Path, keys: SigningKeys) -> HardhostError:
    caught: list[BaseException] = []

    def attempt() -> None:
        try:
            start(image, keys)
        except BaseException as exc:  # handed back to the test thread
            caught.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert caught, "vm start did not return within 10 s"
    assert isinstance(caught[0], HardhostError), caught[0]
    return caught[0]


def test_a_fifo_for_a_kernel_is_refused_without_waiting(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    (image / "vmlinuz").unlink()
    os.mkfifo(image / "vmlinuz")
    error = refusal_within_seconds(image, signing_keys)
    assert isinstance(error, TrustError) and "not a regular file" in str(error)
    assert qemu == []


def test_a_kernel_linked_to_a_device_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    (image / "initrd.img").unlink()
    (image / "initrd.img").symlink_to("/dev/zero")
    error = refusal_within_seconds(image, signing_keys)
    assert isinstance(error, TrustError) and "not a regular file" in str(error)
    assert qemu == []


def test_a_disk_that_is_a_fifo_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, qemu: list[list[str]]) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    (image / "disk.img").unlink()
    os.mkfifo(image / "disk.img")
    error = refusal_within_seconds(image, signing_keys)
    assert isinstance(error, TrustError)
    assert qemu == []


def hardhost(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_exits_4_for_a_changed_kernel(tmp_path: Path, signing_keys: SigningKeys) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    (image / "vmlinuz").write_bytes(b"a kernel nobody signed")
    result = hardhost("vm", "start", str(image), "--direct", "--name", "unit-trust-cli",
                      "--ssh-port", str(free_port()), "--trust-key", str(signing_keys.public),
                      state=tmp_path / "state")
    assert result.returncode == 4
    assert result.stderr.startswith(f"hardhost: {image}/vmlinuz: its sha256 does not match "
                                    "the signed manifest's")
    assert result.stderr.rstrip().endswith("rebuild the image or restore the file")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "state/hardhost/vms/unit-trust-cli/qemu.pid").exists()


def test_cli_needs_a_trust_key(tmp_path: Path, signing_keys: SigningKeys) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    result = hardhost("vm", "start", str(image), "--name", "unit-trust-cli", "--ssh-port",
                      str(free_port()), state=tmp_path / "state")
    assert result.returncode == 2
    assert "--trust-key" in result.stderr


# --- vm start --tpm: refused before anything starts ----------------------------------------


def test_missing_tpm_tools_name_their_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              signing_keys: SigningKeys) -> None:
    image = fake_image(tmp_path / "image", signing_keys.key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "qemu-system-x86_64").symlink_to("/bin/true")
    (tools / "qemu-img").symlink_to("/bin/true")
    monkeypatch.setattr("hardhost.core.run.CLEAN_PATH", str(tools))
    for tool, package in (("swtpm", "swtpm"), ("swtpm_setup", "swtpm-tools"),
                          ("swtpm_localca", "swtpm-tools")):
        with pytest.raises(ToolMissing, match=re.escape(
                f"{tool}: not found. Fix with: apt-get install {package}")):
            vm.start(image, trust_key=signing_keys.public, name="unit-vmtpm",
                     ssh_port=free_port(), tpm=True)
        (tools / tool).symlink_to("/bin/true")
    monkeypatch.setattr(vm, "OVMF_CODE", tmp_path / "OVMF_CODE_4M.fd")
    with pytest.raises(ToolMissing, match="Fix with: apt-get install ovmf"):
        vm.start(image, trust_key=signing_keys.public, name="unit-vmtpm",
                 ssh_port=free_port(), tpm=True)
