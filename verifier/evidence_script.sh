# hardhost evidence script: fixed and read-only. It takes no arguments and changes nothing.
# Each section starts with a marker line; the verifier requires every section exactly once,
# in this order, so anything a host injects into its output fails to parse.
export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
section() { printf '\n@@hardhost:%s@@\n' "$1"; }
section boot_id; cat /proc/sys/kernel/random/boot_id
section kernel_release; uname -r
section cmdline; cat /proc/cmdline
section mountinfo; cat /proc/self/mountinfo
section verity; veritysetup status root 2>&1
section sysctl; grep -rs '' /proc/sys/kernel /proc/sys/fs /proc/sys/user /proc/sys/dev/tty \
	/proc/sys/net/core /proc/sys/net/ipv4 /proc/sys/net/ipv6/conf/all \
	/proc/sys/net/ipv6/conf/default 2>/dev/null
section apparmor_enabled; cat /sys/module/apparmor/parameters/enabled 2>&1
section apparmor_profiles; cat /sys/kernel/security/apparmor/profiles 2>&1
section sshd; sshd -T 2>&1
section seccomp; find /usr/lib/hardhost/seccomp -maxdepth 1 -type f -name '*.json' \
	-exec sha256sum {} + 2>/dev/null
section runtime_config; sha256sum /etc/docker/daemon.json 2>/dev/null
section subuid; cat /etc/subuid 2>/dev/null
section subgid; cat /etc/subgid 2>/dev/null
section listening; ss -Hlntu 2>&1
section services; systemctl list-units --type=service --state=running --no-legend --plain 2>&1
# Upper layers list NUL-terminated paths; a missing layer prints "absent" with no NUL.
for dir in etc var; do
	section "overlay_$dir"
	upper="/run/hardhost/overlay/$dir/upper"
	if [ -d "$upper" ]; then find "$upper" -mindepth 1 -printf '%P\0'; else printf absent; fi
done
section end
