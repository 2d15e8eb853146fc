"""What AppArmor rules name, shared by generation, reading back and the offline check: the
capabilities and socket types AppArmor knows, and the error for a profile that cannot be made
or read.
"""

from __future__ import annotations

from hardhost.core.errors import UsageError

# Linux capabilities by their AppArmor names (include/uapi/linux/capability.h, Linux 6.1).
CAPABILITIES = frozenset({
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot",
    "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource",
    "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
    "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend",
    "audit_read", "perfmon", "bpf", "checkpoint_restore",
})
SOCK_TYPES = frozenset({"stream", "dgram", "raw", "rdm", "seqpacket", "packet"})
# profiles/record.py writes a socket type it has no name for as its number.
SOCK_TYPE_NUMBERS = {"1": "stream", "2": "dgram", "3": "raw", "4": "rdm", "5": "seqpacket",
                     "10": "packet"}


class ProfileError(UsageError):
    """A trace, name or profile that cannot become, or be read as, an AppArmor profile."""
