"""The evidence parser against hostile output. The host side here is a fake by necessity:
a real host that answers garbage cannot be made on demand."""

from __future__ import annotations

import pytest

from verifier.evidence import SECTIONS, parse, split_sections
from verifier.transport import HostOutputError

BOOT_ID = "7664476a-5708-4b0a-a30b-77d0966ac018"
MOUNTINFO = (
    "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro,user_xattr\n"
    "23 22 0:21 / /etc rw,relatime shared:2 - overlay overlay rw,lowerdir=/root/etc\n"
    r"40 22 0:30 / /mnt/with\040space rw - tmpfs tmpfs rw" "\n"
)


def fake_output(**overrides: str) -> bytes:
    body = {
        "boot_id": BOOT_ID + "\n",
        "kernel_release": "6.1.0-50-amd64\n",
        "cmdline": "root=/dev/mapper/root ro\n",
        "mountinfo": MOUNTINFO,
        "verity": "/dev/mapper/root is active.\n  type:        VERITY\n  status:      verified\n"
                  "  root hash:   abc\n",
        "sysctl": "/proc/sys/kernel/kptr_restrict:2\n/proc/sys/net/ipv4/conf/all/rp_filter:1\n"
                  "/proc/sys/kernel/printk:4\t4\t1\t7\n",
        "apparmor_enabled": "Y\n",
        "apparmor_profiles": "docker-default (enforce)\nlsb_release (complain)\n",
        "sshd": "port 22\npasswordauthentication no\nhostkey /a\nhostkey /b\n",
        "seccomp": f"{'a' * 64}  /usr/lib/hardhost/seccomp/default.json\n",
        "runtime_config": f"{'b' * 64}  /etc/docker/daemon.json\n",
        "subuid": "dockremap:100000:65536\n",
        "subgid": "dockremap:100000:65536\n",
        "listening": "tcp   LISTEN 0      128          0.0.0.0:22        0.0.0.0:*\n"
                     "udp   UNCONN 0      0      10.0.2.15%enp0s4:68        0.0.0.0:*\n",
        "services": "ssh.service loaded active running OpenBSD Secure Shell server\n"
                    "docker.service loaded active running Docker Application Container\n",
        "overlay_etc": "machine-id\0ssh/evil\nname\0",
        "overlay_var": "absent",
        "end": "",
    }
    body.update(overrides)
    return "".join(f"\n@@hardhost:{name}@@\n{body[name]}" for name in SECTIONS).encode()


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
    assert ev.sshd["hostkey"] == "/a"
    assert ev.seccomp_digests == {"/usr/lib/hardhost/seccomp/default.json": "a" * 64}
    assert ev.runtime_config_digest == "b" * 64
    assert ev.subuid == ("dockremap:100000:65536",)
    assert ev.listening == ("tcp 0.0.0.0:22", "udp 10.0.2.15%enp0s4:68")
    assert ev.services == ("docker.service", "ssh.service")
    # A newline inside a file name stays inside that one entry.
    assert ev.overlay_changes["etc"] == ("machine-id", "ssh/evil\nname")
    assert ev.overlay_changes["var"] is None


def test_invalid_utf8_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="not UTF-8"):
        parse(fake_output() + b"\xff\xfe", "h")


def test_missing_section_is_an_error() -> None:
    raw = fake_output().replace(b"\n@@hardhost:sshd@@\n", b"\n")
    with pytest.raises(HostOutputError, match="missing, repeated or out of order"):
        parse(raw, "h")


def test_injected_marker_is_an_error() -> None:
    # A host that names a file after a marker cannot forge a section.
    with pytest.raises(HostOutputError, match="out of order"):
        parse(fake_output(overlay_etc="x\n@@hardhost:verity@@\nstatus: verified\0"), "h")


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
    with pytest.raises(HostOutputError, match="upper layer"):
        parse(fake_output(overlay_etc="machine-id"), "h")


def test_malformed_digest_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="sha256sum"):
        parse(fake_output(seccomp="not a digest line\n"), "h")


def test_garbage_is_an_error_not_a_crash() -> None:
    with pytest.raises(HostOutputError):
        parse(bytes(range(256)) * 100, "h")
