"""Running pytest with the hardhost plugin as its users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_plugin(tmp_path: Path, port: int | list[int], identity: Path, manifest: Path,
               trust_key: Path, known_hosts: Path) -> subprocess.CompletedProcess[str]:
    hosts = ",".join(f"paramiko://root@127.0.0.1:{p}"
                     for p in (port if isinstance(port, list) else [port]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
         f"--hosts={hosts}", f"--ssh-identity-file={identity}",
         f"--hardhost-manifest={manifest}", f"--hardhost-trust-key={trust_key}",
         f"--hardhost-known-hosts={known_hosts}", "--rootdir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
