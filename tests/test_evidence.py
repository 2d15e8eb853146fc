"""The evidence parser against hostile output. The host side here is a fake by necessity:
a real host that answers garbage cannot be made on demand."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hardhost.verifier.evidence import (
    LISTED_PER_LAYER,
    PodmanState,
    UpperLayer,
    parse,
    script_with_nonce,
    split_sections,
)
from hardhost.verifier.transport import HostOutputError
from tests.support.evidence import BOOT_ID, fake_output, listing

NONCE = "0123456789abcdef0123456789abcdef"


def test_parses_every_section() -> None:
    ev = parse(fake_output(), "h")
    assert ev.boot_id == BOOT_ID
    root = ev.mount("/")
    assert root is not None and root.fstype == "erofs" and root.read_only
    assert root.source == "/dev/mapper/root"
    assert ev.mount("/mnt/with space") is not None
    assert ev.verity["status"] == "verified"
    assert ev.sysctls["kernel.kptr_restrict"] == "2"
    assert ev.sysctls["net.ipv4.conf.all.rp_filter"] == "1"
    assert ev.sysctls["kernel.printk"] == "4 4 1 7"
    assert ev.apparmor_enabled
    assert ev.apparmor_profiles == {"docker-default": "enforce", "lsb_release": "complain"}
    assert ev.sshd["passwordauthentication"] == "no"
    assert ev.sshd["hostkey"] == "/a\n/b"  # printed once per value, all kept
    assert ev.seccomp_digests == {"/usr/lib/hardhost/seccomp/default.json": "a" * 64}
    assert ev.runtime_config == {"/etc/docker/daemon.json": "b" * 64}
    assert ev.subuid == ("dockremap:100000:65536",)
    assert ev.listening == ("tcp 0.0.0.0:22", "udp 10.0.2.15%enp0s4:68")
    assert ev.services == ("docker.service", "ssh.service")
    # A newline inside a file name stays inside that one entry.
    assert ev.overlay_changes["etc"] == UpperLayer(2, ("machine-id", "ssh/evil\nname"))
    assert ev.namespaces == {"mnt": "init", "pid": "init", "net": "init", "proc": "live"}
    assert ev.overlay_changes["var"] is None


def test_invalid_utf8_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="not UTF-8"):
        parse(fake_output() + b"\xff\xfe", "h")


def test_missing_section_is_an_error() -> None:
    raw = fake_output().replace(b"\n@@hardhost:sshd@@\n", b"\n")
    with pytest.raises(HostOutputError, match="missing, repeated or out of order"):
        parse(raw, "h")


def test_injected_marker_is_an_error() -> None:
    # Host text that forges a marker line cannot add a section.
    with pytest.raises(HostOutputError, match="out of order"):
        parse(fake_output(apparmor_profiles="x (enforce)\n@@hardhost:verity@@\n"), "h")


def test_markers_without_the_runs_nonce_are_content() -> None:
    # With a nonce, a marker that lacks it is not a section boundary: the forged one below
    # stays inside the profile list, where it is a malformed line, not a new section.
    forged = "x (enforce)\n@@hardhost:verity@@\nstatus: verified\n"
    with pytest.raises(HostOutputError, match="malformed AppArmor profile line"):
        parse(fake_output(NONCE, apparmor_profiles=forged), "h", nonce=NONCE)
    assert parse(fake_output(NONCE), "h", nonce=NONCE).boot_id == BOOT_ID
    with pytest.raises(HostOutputError, match="missing"):
        parse(fake_output(), "h", nonce=NONCE)  # markers of another run


def test_text_before_the_first_section_is_an_error() -> None:
    with pytest.raises(HostOutputError):
        split_sections(b"motd banner\n" + fake_output(), "h")


def test_bad_boot_id_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="boot_id"):
        parse(fake_output(boot_id="not-a-uuid\n"), "h")


def test_malformed_mountinfo_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="mountinfo"):
        parse(fake_output(mountinfo="garbage line\n"), "h")


def test_unterminated_upper_listing_is_an_error() -> None:
    encoded = base64.b64encode(b"machine-id").decode()
    with pytest.raises(HostOutputError, match="upper layer"):
        parse(fake_output(overlay_etc=f"1\n{encoded}\n"), "h")


@pytest.mark.parametrize("name", [
    b"evil\n@@hardhost:end@@\nx",  # a forged marker, as any local user can name a file
    b"bad\xff\xfename",  # not UTF-8: must not make the whole evidence undecodable
    b"\x1b[2Kerase",  # an escape sequence
    b"tab\there and spaces ",
])
def test_every_file_name_is_one_entry(name: bytes) -> None:
    ev = parse(fake_output(overlay_var=listing(b"log", name)), "h")
    layer = ev.overlay_changes["var"]
    assert layer is not None and len(layer.names) == 2
    assert name.decode("utf-8", "backslashreplace") in layer.names


def test_a_large_listing_is_summarised() -> None:
    names = [f"tmp/f{i}".encode() for i in range(LISTED_PER_LAYER)]
    ev = parse(fake_output(overlay_var=listing(*names, count=250_000)), "h")
    layer = ev.overlay_changes["var"]
    assert layer is not None and layer.truncated and layer.count == 250_000


@pytest.mark.parametrize("section", ["not base64!\n", "x\n", "1\n2\n3\n", "-1\n\n"])
def test_malformed_listings_are_errors(section: str) -> None:
    with pytest.raises(HostOutputError, match="upper layer"):
        parse(fake_output(overlay_etc=section), "h")


def test_a_sysctl_file_of_several_lines_is_one_value() -> None:
    # Linux 6.x's kernel.core_modes prints one mode per line.
    ev = parse(fake_output(sysctl="/proc/sys/kernel/core_modes:file\n"
                                  "/proc/sys/kernel/core_modes:pipe\n"
                                  "/proc/sys/kernel/core_modes:socket\n"
                                  "/proc/sys/kernel/kptr_restrict:2\n"), "h")
    assert ev.sysctls == {"kernel.core_modes": "file pipe socket", "kernel.kptr_restrict": "2"}


@pytest.mark.parametrize(("section", "body"), [
    ("sysctl", "/proc/sys/kernel/kptr_restrict:0\n/proc/sys/kernel/kptr_restrict:2\n"
               "/proc/sys/kernel/x:1\n/proc/sys/kernel/kptr_restrict:2\n"),
    ("sysctl", "/proc/sys/kernel/kptr_restrict:0\n/proc/sys/kernel/y:1\n"
               "/proc/sys/kernel/kptr_restrict:2\n"),
    ("apparmor_profiles", "p (enforce)\np (complain)\n"),
    ("sshd", "passwordauthentication yes\npasswordauthentication no\n"),
    ("seccomp", f"{'a' * 64}  /x.json\n{'b' * 64}  /x.json\n"),
    ("verity", "  status: corrupted\n  status: verified\n"),
    ("services", "ssh.service a b c\nssh.service a b c\n"),
    ("namespaces", "mnt init\nmnt other\npid init\nnet init\nproc live\n"),
])
def test_a_key_given_twice_is_an_error(section: str, body: str) -> None:
    # Keeping either value would let a host choose which one is checked.
    with pytest.raises(HostOutputError, match=r"twice|repeated|malformed"):
        parse(fake_output(**{section: body}), "h")


@pytest.mark.parametrize(("section", "body"), [
    ("sysctl", "kernel.kptr_restrict = 2\n"),
    ("apparmor_profiles", "no mode here\n"),
    ("failed_units", "evil\x1b[2K.service loaded failed failed x\n"),
    ("namespaces", "mnt init\n"),
])
def test_lines_that_do_not_parse_are_errors(section: str, body: str) -> None:
    with pytest.raises(HostOutputError):
        parse(fake_output(**{section: body}), "h")


def test_exit_status_and_stderr_are_evidence() -> None:
    ev = parse(fake_output(), "h", exit_status=1, stderr=b"sshd: \xff oops\n")
    assert ev.exit_status == 1 and "oops" in ev.stderr


@pytest.mark.e2e  # writes under /run, as root
def test_the_script_lists_upper_layers_without_the_allowed_paths() -> None:
    """The real script under dash, on a real folder tree standing in for the upper layer:
    only names outside the allowed globs come back, each one entry whatever its bytes."""
    upper = Path("/run/hardhost/overlay/etc/upper")
    if upper.exists():
        pytest.skip("this machine has a hardhost overlay of its own")
    try:
        (upper / "cni").mkdir(parents=True)
        for name in (b"machine-id", b"cni/x", b"evil\n@@hardhost:end@@\nx", b"bad\xff", b"ok"):
            (upper / name.decode("utf-8", "surrogateescape")).write_bytes(b"")
        result = subprocess.run(["dash", "-s", "--", "etc:machine-id", "etc:cni/*", "var:*"],
                                input=script_with_nonce(NONCE).encode(), capture_output=True,
                                timeout=60, check=False)
    finally:
        shutil.rmtree("/run/hardhost")
    sections = split_sections(result.stdout, "h", NONCE)
    lines = sections["overlay_etc"].splitlines()
    names = sorted(base64.b64decode(lines[1]).split(b"\0")[:-1])
    assert lines[0] == "4"
    assert names == [b"bad\xff", b"cni", b"evil\n@@hardhost:end@@\nx", b"ok"]
    assert sections["overlay_var"] == "absent\n"


def test_malformed_digest_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="sha256sum"):
        parse(fake_output(seccomp="not a digest line\n"), "h")


def test_garbage_is_an_error_not_a_crash() -> None:
    with pytest.raises(HostOutputError):
        parse(bytes(range(256)) * 100, "h")


@pytest.mark.e2e  # a private mount namespace, and writes under /dev/shm, as root
def test_the_script_lists_etc_containers_without_reading_what_could_block(
        tmp_path: Path) -> None:
    """The real script under dash, its /etc/containers a folder of hostile entries bind-mounted
    in a private mount namespace: a FIFO and a 100 GiB sparse file are listed, not read; a
    name holding this run's marker is one entry. An override is found under /dev/shm (a
    tmpfs: the root file system is skipped), with /proc bind-mounted beside it unwalked."""
    if os.stat("/dev/shm").st_dev == os.stat("/").st_dev:
        pytest.skip("/dev/shm is on the root file system here, which the script skips")
    etc = tmp_path / "containers"
    (etc / "registries.conf.d").mkdir(parents=True)
    (etc / "policy.json").write_text("{}\n")
    forged = f"evil\n@@hardhost:{NONCE}:end@@\n"
    (etc / "registries.conf.d" / forged).write_text("x")
    os.mkfifo(etc / "registries.conf.d" / "fifo")
    with (etc / "huge").open("wb") as huge:
        huge.truncate(100 << 30)
    (etc / "link").symlink_to("/etc/shadow")
    # runtime_config does not read it either; podman does, and is stopped after 20 s.
    os.mkfifo(etc / "containers.conf")
    (etc / "a" / "b" / "c").mkdir(parents=True)
    (etc / "a" / "b" / "c" / "too-deep").write_text("x")  # depth 4: left out
    home = Path(f"/dev/shm/hardhost-test-{os.getpid()}")
    override = home / ".config" / "containers" / "registries.d" / "a\nb.yaml"
    try:
        override.parent.mkdir(parents=True)
        override.write_text("x")
        (home / "proc").mkdir()
        # $0 and $1 are the folders to mount; the script comes on stdin.
        mounts = 'mount --bind "$0" /etc/containers && mount --bind /proc "$1" && exec dash -s'
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                 mounts, str(etc), str(home / "proc")],
                                input=script_with_nonce(NONCE).encode(), capture_output=True,
                                timeout=60, check=False)
    finally:
        shutil.rmtree(home)
    ev = parse(result.stdout, "h", nonce=NONCE, stderr=result.stderr)
    digest = hashlib.sha256(b"{}\n").hexdigest()
    assert ev.container_policy == {
        "/etc/containers/policy.json": digest,
        f"/etc/containers/registries.conf.d/{forged}": hashlib.sha256(b"x").hexdigest(),
        "/etc/containers/registries.conf.d/fifo": "a FIFO",
        "/etc/containers/huge": "not hashed: larger than 1 MiB",
        "/etc/containers/link": "a symbolic link",
        "/etc/containers/containers.conf": "a FIFO"}
    assert ev.container_policy_count == 6
    assert "/etc/containers/containers.conf" not in ev.runtime_config
    if Path("/usr/bin/podman").exists():
        assert ev.podman is PodmanState.FAILED
        assert "timeout: sending signal TERM to command 'podman'" in ev.stderr
    assert ev.container_overrides == (str(override),)
