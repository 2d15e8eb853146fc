"""Names shared by the image (templates, kernel command line) and the VM that boots it.

The disk order is a contract: `vm start` attaches the drives in this order, and the
initramfs finds them by these names from the kernel command line.
"""

from __future__ import annotations

# virtio-blk disks, in the order qemu attaches them.
DATA_DEVICE = "/dev/vda"  # root.img, read-only
HASH_DEVICE = "/dev/vdb"  # root.verity, read-only
STATE_DEVICE = "/dev/vdc"  # per-instance persistent state (ext4)

VERITY_NAME = "root"
ROOT_DEVICE = f"/dev/mapper/{VERITY_NAME}"

# Under /run so that the initramfs's mounts move into the booted system with /run itself.
RUNTIME_DIR = "/run/hardhost"
STATE_MOUNT = f"{RUNTIME_DIR}/state"
OVERLAY_DIR = f"{RUNTIME_DIR}/overlay"  # OVERLAY_DIR/{etc,var}/upper is the drift since boot
OVERLAID_DIRS = ("etc", "var")

# Files on the state disk, relative to its root. Only what must survive a reboot lives there.
STATE_HOST_KEY = "ssh/ssh_host_ed25519_key"
STATE_MACHINE_ID = "machine-id"

# Not `roothash=`: that name makes systemd's veritysetup-generator wait 90 s for GPT
# partitions named after the hash, a layout these images do not use.
CMDLINE_ROOTHASH = "hardhost.roothash"
CMDLINE_DATA = "hardhost.data"
CMDLINE_HASH = "hardhost.hash"
CMDLINE_STATE = "hardhost.state"

DATA_BLOCK_SIZE = 4096
