"""The kernel command line of an image: fixed boot arguments, the root hash, spec extras."""

from __future__ import annotations

from hardhost.builder.spec import Spec
from hardhost.image import layout


def kernel_cmdline(spec: Spec, root_hash: str) -> str:
    root_uuid, verity_uuid = layout.slot_uuids(root_hash)
    args = [
        f"root={layout.ROOT_DEVICE}",
        f"rootfstype={spec.image.filesystem}",
        "ro",
        "fsck.mode=skip",
        f"console={spec.kernel.console}",
        f"panic={layout.PANIC_REBOOT_SECONDS}",
        "apparmor=1",
        "security=apparmor",
        f"{layout.CMDLINE_ROOTHASH}={root_hash}",
        f"{layout.CMDLINE_DATA}={layout.by_partuuid(root_uuid)}",
        f"{layout.CMDLINE_HASH}={layout.by_partuuid(verity_uuid)}",
        f"{layout.CMDLINE_STATE}={layout.STATE_DEVICE}",
        *spec.kernel.cmdline,
    ]
    return " ".join(args)
