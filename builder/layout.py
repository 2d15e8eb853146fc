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

# The mount table of a booted image, as the verifier must find it: every mount the image
# makes, by mount point and filesystem type. Anything else mounted on the host is drift,
# because a mount can shadow any file the evidence reads (a binary, a /proc/sys value, an
# overlay's upper layer).
#
# Made by the initramfs and fstab, on every boot:
BASE_MOUNTS: dict[str, str] = {
    "/": "erofs",  # or squashfs: replaced by the spec's filesystem
    "/etc": "overlay",
    "/var": "overlay",
    f"{OVERLAY_DIR}/etc": "tmpfs",
    f"{OVERLAY_DIR}/var": "tmpfs",
    STATE_MOUNT: "ext4",
    "/tmp": "tmpfs",
    # systemd 252's API file systems (mount_table[] in src/shared/mount-setup.c)
    "/proc": "proc",
    "/sys": "sysfs",
    "/dev": "devtmpfs",
    "/dev/pts": "devpts",
    "/dev/shm": "tmpfs",
    "/run": "tmpfs",
    "/run/lock": "tmpfs",
    "/sys/fs/cgroup": "cgroup2",
    "/sys/kernel/security": "securityfs",
}
DOCKER_MOUNTS: dict[str, str] = {"/var/lib/docker": "tmpfs"}
# Mounted by systemd when the kernel offers them; their absence is no drift.
OPTIONAL_MOUNTS: dict[str, str] = {
    "/sys/fs/pstore": "pstore",
    "/sys/fs/bpf": "bpf",
    "/dev/mqueue": "mqueue",
    "/dev/hugepages": "hugetlbfs",
    "/sys/kernel/debug": "debugfs",
    "/sys/kernel/tracing": "tracefs",
    "/sys/kernel/config": "configfs",
    "/sys/fs/fuse/connections": "fusectl",
    "/proc/sys/fs/binfmt_misc": "autofs",
    # On a UEFI boot (image.boot = "uki"), systemd mounts the firmware's variables.
    "/sys/firmware/efi/efivars": "efivarfs",
}
# Areas where services mount and unmount at run time (systemd's per-unit credentials,
# logind's per-user runtime folders, the container runtime's storage and namespaces). A
# mount there shadows nothing the evidence reads. Globs over the mount point, whose `*`
# matches `/` too.
RUNTIME_MOUNT_AREAS: tuple[str, ...] = (
    "/run/credentials/*",
    "/run/user/*",
)
DOCKER_RUNTIME_MOUNT_AREAS: tuple[str, ...] = (
    "/var/lib/docker/*",
    "/run/docker/*",
    "/run/containerd/*",
    "/run/netns/*",
)


def overlay_upper(name: str) -> str:
    """The upper layer of overlay `name`: what changed under /`name` since boot."""
    return f"{OVERLAY_DIR}/{name}/upper"
