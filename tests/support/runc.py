"""Real runc bundles whose root is an empty folder with the host's /usr and /etc bound
read-only, so host binaries run in a container (a bundle rooted at / fails at pivot_root)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUNC = shutil.which("runc", path="/usr/sbin:/usr/bin")


def make_bundle(directory: Path, argv: Sequence[str], *,
                seccomp: dict[str, Any] | None = None, host_network: bool = True) -> Path:
    assert RUNC is not None, "runc is not installed (make test installs it)"
    rootfs = directory / "rootfs"
    for name in ("usr", "etc", "proc", "dev", "sys", "tmp"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if not (rootfs / link).is_symlink():
            (rootfs / link).symlink_to(f"usr/{link}")
    subprocess.run([RUNC, "spec", "--bundle", str(directory)], check=True)
    config = json.loads((directory / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = list(argv)
    config["process"]["cwd"] = "/tmp"
    config["mounts"] += [
        {"destination": "/usr", "type": "bind", "source": "/usr",
         "options": ["rbind", "ro", "nosuid", "nodev"]},
        {"destination": "/etc", "type": "bind", "source": "/etc",
         "options": ["rbind", "ro", "nosuid", "nodev"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    if host_network:  # the test talks to the workload over the host's loopback
        config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"]
                                         if n["type"] != "network"]
    if seccomp is not None:
        config["linux"]["seccomp"] = seccomp
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def container_id() -> str:
    return f"hardhost-test-{uuid.uuid4().hex[:12]}"


def run_bundle(bundle: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the bundle to completion; the container is deleted afterwards."""
    assert RUNC is not None
    name = container_id()
    try:
        return subprocess.run([RUNC, "run", "--bundle", str(bundle), name],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([RUNC, "delete", "--force", name], capture_output=True)
