"""Names shared by the image (templates, kernel command line, disk), the VM that boots it
and the verifier that updates it.

The disk layout is a contract: the initramfs finds each partition by the UUID or label on the
kernel command line, never by device name, and an update writes a slot by its label.
"""

from __future__ import annotations

import uuid

# The artifacts of a built image, by file name in its output folder. The manifest signs
# them; `vm start` boots them; nothing else names them.
KERNEL = "vmlinuz"
INITRD = "initrd.img"
ROOT_IMAGE = "root.img"  # the read-only erofs or squashfs root
ROOT_VERITY = "root.verity"  # its dm-verity hash tree
UKI = "uki.efi"  # kernel, initrd and command line in one EFI binary
DISK = "disk.img"  # GPT: ESP (systemd-boot + UKI), slots A and B, state
DISK_QCOW2 = "disk.qcow2"  # the same disk for hypervisors (`hardhost build --format qcow2`)
SBOM = "sbom.spdx.json"
BUILD_RECORD = "build.json"  # unsigned: timings and sizes, never trusted

# Partition types of the Discoverable Partitions Specification (UAPI.2), x86-64.
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_VERITY_TYPE = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
LINUX_DATA_TYPE = "0fc63daf-8483-4772-8e79-3d69d8477de4"  # the state: no DPS type fits it

SLOTS = ("a", "b")
ESP_LABEL = "hardhost-esp"
STATE_LABEL = "hardhost-state"
# The order of the partitions, by label; the number of each is its index + 1.
PARTITION_ORDER = (ESP_LABEL, "hardhost-root-a", "hardhost-verity-a", "hardhost-root-b",
                   "hardhost-verity-b", STATE_LABEL)


def root_label(slot: str) -> str:
    return f"hardhost-root-{slot}"


def verity_label(slot: str) -> str:
    return f"hardhost-verity-{slot}"


def slot_uuids(root_hash: str) -> tuple[str, str]:
    """The partition UUIDs of a slot holding the image with `root_hash`: the first 128 bits
    of the hash for the root, the last 128 for its verity partition, as the Discoverable
    Partitions Specification derives them. A slot's UUIDs change with the image it holds,
    so a command line can only ever find its own image."""
    raw = bytes.fromhex(root_hash)
    if len(raw) != 32:
        raise ValueError(f"{root_hash[:80]!r} is not a sha256 root hash")
    return str(uuid.UUID(bytes=raw[:16])), str(uuid.UUID(bytes=raw[16:]))


def by_partuuid(partuuid: str) -> str:
    return f"/dev/disk/by-partuuid/{partuuid}"


def by_partlabel(label: str) -> str:
    return f"/dev/disk/by-partlabel/{label}"


STATE_DEVICE = by_partlabel(STATE_LABEL)
# Where an update mounts the ESP while it installs a UKI, and the verifier while it blesses
# a boot; systemd-bless-boot looks there. Nothing mounts it at boot.
ESP_MOUNT = "/efi"
# systemd-boot boot entries (Type #2: one UKI each) on the ESP, EFI/Linux/hardhost-N.efi
# with N one more at each update: systemd-boot starts the highest N whose tries are not
# used up. An entry under assessment is hardhost-N+LEFT[-DONE].efi.
ENTRY_DIR = "EFI/Linux"
ENTRY_PREFIX = "hardhost-"
FIRST_ENTRY = f"{ENTRY_PREFIX}1.efi"
LOADER = "EFI/BOOT/BOOTX64.EFI"  # systemd-boot, on the removable-media path
LOADER_CONF = "loader/loader.conf"

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
# panic=: seconds before a failed boot restarts the machine: a kernel panic, and (initramfs-
# tools reads the same argument) a root that cannot be opened or verified, which would
# otherwise wait at a root shell on the console. Each restart uses up one of a new image's
# tries.
PANIC_REBOOT_SECONDS = 10

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
PODMAN_MOUNTS: dict[str, str] = {"/var/lib/containers": "tmpfs"}
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
    # On a UEFI boot (not a --direct one), systemd mounts the firmware's variables.
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
# podman's storage (overlay layers, each container's shm) and its CNI network namespaces:
# podman mounts a tmpfs on /run/netns itself (seen in a booted podman host), then binds
# each namespace inside it.
PODMAN_RUNTIME_MOUNT_AREAS: tuple[str, ...] = (
    "/var/lib/containers/*",
    "/run/containers/*",
    "/run/netns",
    "/run/netns/*",
)


def overlay_upper(name: str) -> str:
    """The upper layer of overlay `name`: what changed under /`name` since boot."""
    return f"{OVERLAY_DIR}/{name}/upper"
