"""Image size: each artifact of a build, and the 20 largest paths inside its root image.

    sudo .venv/bin/python bench/size.py OUTDIR/NAME

The root image is mounted read-only (loop) to walk it; that needs root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ARTIFACTS = ("vmlinuz", "initrd.img", "root.img", "root.verity", "sbom.spdx.json")


def largest(root: Path, count: int = 20) -> list[tuple[int, str]]:
    sizes: list[tuple[int, str]] = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                sizes.append((path.stat().st_size, "/" + str(path.relative_to(root))))
    return sorted(sizes, reverse=True)[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, metavar="OUTDIR/NAME")
    args = parser.parse_args()
    for name in ARTIFACTS:
        path = args.image / name
        if path.exists():
            print(f"{name:<16} {path.stat().st_size / 2**20:8.1f} MiB")
    with tempfile.TemporaryDirectory(prefix="hardhost-size-") as mountpoint:
        subprocess.run(["mount", "-o", "ro,loop", str(args.image / "root.img"), mountpoint],
                       check=True)
        try:
            print("\nlargest paths in root.img (uncompressed):")
            for size, path in largest(Path(mountpoint)):
                print(f"{size / 2**20:8.1f} MiB  {path}")
        finally:
            subprocess.run(["umount", mountpoint], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
