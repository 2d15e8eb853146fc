"""Evidence output as the fixed script prints it, made here: the host side of the parser's
tests is a fake by necessity (a real host that answers garbage cannot be made on demand)."""

from __future__ import annotations

import base64
import json

from hardhost.verifier.evidence import SECTIONS

BOOT_ID = "7664476a-5708-4b0a-a30b-77d0966ac018"
MOUNTINFO = (
    "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro,user_xattr\n"
    "23 22 0:21 / /etc rw,relatime shared:2 - overlay overlay rw,lowerdir=/root/etc\n"
    r"40 22 0:30 / /mnt/with\040space rw - tmpfs tmpfs rw" "\n"
)


def listing(*names: bytes, count: int | None = None) -> str:
    """An upper-layer section as the script prints it: the count, then the names,
    NUL-terminated and base64-encoded."""
    encoded = base64.b64encode(b"".join(n + b"\0" for n in names)).decode()
    return f"{len(names) if count is None else count}\n{encoded}\n"


def fake_output(nonce: str = "", **overrides: str) -> bytes:
    body = {
        "boot_id": BOOT_ID + "\n",
        "kernel_release": "6.1.0-50-amd64\n",
        "cmdline": "root=/dev/mapper/root ro\n",
        "namespaces": "mnt init\npid init\nnet init\nproc live\n",
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
        "failed_units": "",
        "overlay_etc": listing(b"machine-id", b"ssh/evil\nname"),
        "overlay_var": "absent\n",
        # A dockerd host: no /etc/containers, and no podman to read an override of it.
        "container_policy": "absent\n",
        "container_overrides": "absent\n",
        "workloads": "absent\n",
        "end": "",
    }
    body.update(overrides)
    tag = f"{nonce}:" if nonce else ""
    return "".join(f"\n@@hardhost:{tag}{name}@@\n{body[name]}" for name in SECTIONS).encode()


def container_line(name: str, image_ref: str = "", image_id: str = "",
                   runtime: str = "crun") -> str:
    """A container's line of the workloads section, as podman's `json` function prints it."""
    return "container " + json.dumps({"name": name, "image_ref": image_ref,
                                      "image_id": image_id, "runtime": runtime},
                                     separators=(",", ":"))


def image_line(image_id: str, repo_digests: list[str] | None) -> str:
    """An image's line of the workloads section; None is Go's nil slice (`null`)."""
    return "image " + json.dumps({"id": image_id, "repo_digests": repo_digests},
                                 separators=(",", ":"))


def workloads(*lines: str, count: int | None = None) -> str:
    """The workloads section: the count of running containers (by default, those listed),
    then the lines."""
    listed = sum(line.startswith("container ") for line in lines)
    return "".join(f"{line}\n" for line in (f"count {listed if count is None else count}",
                                             *lines))
