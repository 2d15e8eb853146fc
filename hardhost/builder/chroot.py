"""Run a command inside the image tree, with /dev, /proc and /sys mounted for it.

The mounts live in a private mount namespace (`unshare --mount`), so they vanish with the
command, even when it fails or is killed: nothing is left mounted inside the tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hardhost.core.run import run

# The script gets the tree and the command as positional arguments: no value is ever
# interpolated into the shell text.
_ENTER = (
    'root=$1; shift; '
    'mount --rbind /dev "$root/dev" && '
    'mount -t proc proc "$root/proc" && '
    'mount -t sysfs sysfs "$root/sys" && '
    'exec chroot "$root" "$@"'
)


def run_in_tree(tree: Path, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                stream: bool = False) -> None:
    run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _ENTER,
         "sh", str(tree), *argv], env=env, stream=stream)
