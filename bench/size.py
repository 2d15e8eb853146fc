"""Image size: each artifact of a build, the 20 largest paths inside its root image, and the
same root image made from the unpruned tree, for comparison.

    sudo .venv/bin/python bench/size.py OUTDIR/NAME [--spec images/NAME.toml]

With --spec, the spec's cached mmdebstrap tree (from an earlier build) is compressed as it
comes, with the same filesystem settings, so the pruning's effect shows as a ratio.
Mounting the root image and reading the cache need root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hardhost.builder.cache import cache_root  # noqa: E402
from hardhost.builder.spec import Compression, Filesystem, load_spec  # noqa: E402
from hardhost.builder.stages.bootstrap import bootstrap_key  # noqa: E402
from hardhost.builder.stages.rootfs import EROFS_CLUSTER, LZ4HC_LEVEL  # noqa: E402

ARTIFACTS = ("vmlinuz", "initrd.img", "root.img", "root.verity", "uki.efi", "disk.img",
             "sbom.spdx.json")


def largest(root: Path, count: int = 20) -> list[tuple[int, str]]:
    sizes: list[tuple[int, str]] = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                sizes.append((path.stat().st_size, "/" + str(path.relative_to(root))))
    return sorted(sizes, reverse=True)[:count]


def unpruned_image(spec_path: Path, work: Path) -> int:
    """Bytes of a root image made from the spec's cached, unpruned mmdebstrap tree."""
    spec = load_spec(spec_path)
    tarball = cache_root() / "bootstrap" / f"{bootstrap_key(spec)}.tar"
    if not tarball.exists():
        raise SystemExit(f"{tarball}: not cached; build {spec_path} once first")
    tree = work / "tree"
    tree.mkdir()
    subprocess.run(["tar", "--extract", "--numeric-owner", "--file", str(tarball),
                    "--directory", str(tree)], check=True)
    image = work / "unpruned.img"
    compression = spec.image.effective_compression
    if spec.image.filesystem is Filesystem.EROFS:
        level = f",{LZ4HC_LEVEL}" if compression is Compression.LZ4HC else ""
        subprocess.run(["mkfs.erofs", f"-z{compression}{level}", f"-C{EROFS_CLUSTER}",
                        "--quiet", str(image), str(tree)], check=True)
    else:
        subprocess.run(["mksquashfs", str(tree), str(image), "-noappend", "-comp",
                        str(compression), "-quiet", "-no-progress"], check=True)
    return image.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, metavar="OUTDIR/NAME")
    parser.add_argument("--spec", type=Path, help="compare with the unpruned tree of SPEC")
    args = parser.parse_args()
    for name in ARTIFACTS:
        path = args.image / name
        if path.exists():
            info = path.stat()
            # disk.img is sparse: its empty slot B and free space take no blocks.
            stored = f" ({info.st_blocks * 512 / 2**20:.1f} MiB stored)" if (
                info.st_blocks * 512 < info.st_size) else ""
            print(f"{name:<16} {info.st_size / 2**20:8.1f} MiB{stored}")
    with tempfile.TemporaryDirectory(prefix="hardhost-size-") as mountpoint:
        subprocess.run(["mount", "-o", "ro,loop", str(args.image / "root.img"), mountpoint],
                       check=True)
        try:
            print("\nlargest paths in root.img (uncompressed):")
            for size, path in largest(Path(mountpoint)):
                print(f"{size / 2**20:8.1f} MiB  {path}")
        finally:
            subprocess.run(["umount", mountpoint], check=True)
    if args.spec:
        with tempfile.TemporaryDirectory(prefix="hardhost-size-", dir="/var/tmp") as name:
            unpruned = unpruned_image(args.spec, Path(name))
        pruned = (args.image / "root.img").stat().st_size
        print(f"\nroot.img from the unpruned tree: {unpruned / 2**20:.1f} MiB; pruned: "
              f"{pruned / 2**20:.1f} MiB ({pruned / unpruned:.2f} x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
