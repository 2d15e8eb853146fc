"""Build time: hardhost against the raw pipeline it wraps, on the same machine, in one run.

    sudo .venv/bin/python bench/build.py [--spec images/container-host.toml]

Measures a cold hardhost build (empty cache), a warm rebuild after changing one sysctl, one
after changing one profile (the default seccomp profile, by allowing the keyring calls), the
sysctl rebuild again with the tree on disk (--workspace disk; the others use the default,
which assembles it in memory when there is room), and the raw pipeline run by hand on the
same inputs: mmdebstrap into a folder, mkfs.erofs (with hardhost's compression settings),
veritysetup. Prints the seconds and the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hardhost.builder.spec import load_spec  # noqa: E402
from hardhost.builder.stages.bootstrap import sources  # noqa: E402
from hardhost.builder.stages.rootfs import EROFS_CLUSTER, LZ4HC_LEVEL  # noqa: E402
from hardhost.image.signing import keygen  # noqa: E402


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def with_swappiness(spec_text: str, value: int) -> str:
    """The spec with one sysctl changed. A value the hardened baseline does not already
    have: an unchanged file would (rightly) leave every stage cached."""
    return spec_text.replace("[sysctl]", f'[sysctl]\n"vm.swappiness" = {value}', 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "images/container-host.toml")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/build.py builds images: run it as root", file=sys.stderr)
        return 2
    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory(prefix="hardhost-bench-", dir="/var/tmp") as name:
        work = Path(name)
        private, _ = keygen(work / "keys")
        (work / "id.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJlbmNoa2V5Zm9yYnVp"
                                     "bGR0aW1pbmdvbmx5MDEyMzQ1Njc4 bench\n")
        hardhost = [sys.executable, "-m", "hardhost", "build", "--key", str(private),
                    "--authorized-key", str(work / "id.pub"), "--force", "-o", str(work / "out")]
        cache = {"HARDHOST_CACHE_DIR": str(work / "cache")}
        cold = timed([*hardhost, str(args.spec)], cache)
        changed = work / "changed.toml"
        changed.write_text(with_swappiness(args.spec.read_text(), 10))
        warm = timed([*hardhost, str(changed)], cache)
        profile = work / "profile.toml"
        profile.write_text(args.spec.read_text() + "\n[seccomp]\nallow_keyring = true\n")
        warm_profile = timed([*hardhost, str(profile)], cache)
        # The same warm rebuild with the tree on disk, as on a machine with little memory.
        # A fresh value again, so the root image is not taken from the cache.
        on_disk = work / "disk.toml"
        on_disk.write_text(with_swappiness(args.spec.read_text(), 20))
        warm_disk = timed([*hardhost, "--workspace", "disk", str(on_disk)], cache)

        raw_tree = work / "raw-tree"
        dist = spec.distribution
        packages = ",".join(spec.packages.include)
        # The same archives as the build: the release, its updates and security updates.
        raw = timed(["mmdebstrap", "--variant=minbase", f"--include={packages}", dist.suite,
                     str(raw_tree), *sources(spec)])
        raw += timed(["mkfs.erofs", f"-zlz4hc,{LZ4HC_LEVEL}", f"-C{EROFS_CLUSTER}", "--quiet",
                      str(work / "raw.img"), str(raw_tree)])
        raw += timed(["veritysetup", "format", str(work / "raw.img"), str(work / "raw.verity")])
    print(f"spec: {args.spec.name}")
    print(f"hardhost cold build      {cold:7.1f} s")
    print(f"warm, one sysctl changed {warm:7.1f} s   ({warm / cold:.2f} x cold)")
    print(f"warm, one profile changed {warm_profile:6.1f} s   ({warm_profile / cold:.2f} x cold)")
    print(f"warm, one sysctl changed, tree on disk {warm_disk:6.1f} s   "
          f"({warm_disk / cold:.2f} x cold)")
    print(f"raw mmdebstrap+mkfs.erofs+veritysetup {raw:7.1f} s")
    print(f"cold build / raw pipeline: {cold / raw:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
