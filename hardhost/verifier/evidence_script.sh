# hardhost evidence script: fixed and read-only. It changes nothing on the host.
#
# The verifier prepends one line, `nonce=HEX`, a fresh random value per run, which every
# section marker carries: no text on the host (a file name, a profile name, a unit) can
# forge a section without it. Arguments are the manifest's mutable-path globs, `etc:GLOB`
# or `var:GLOB`; upper-layer entries they match are left out of the listings.
#
# Kernel state is read from the session's own procfs with shell builtins, after checking
# that this shell runs in init's mount namespace and that /proc is live (a static file
# cannot know this shell's PID). The whole mount table is reported, so any mount that
# could shadow what the later sections read (a binary, a /proc/sys file, an upper layer)
# is itself evidence. A command that fails makes the script's exit status non-zero, and
# its stderr reaches the verifier apart from the sections.
export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
failed=0
section() { printf '\n@@hardhost:%s:%s@@\n' "$nonce" "$1"; }
# cat with builtins only: a mount over /usr/bin/cat cannot change what this reads.
show() {
	while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done < "$1" \
		|| failed=1
}
must() { "$@" || failed=1; }

section boot_id; show /proc/sys/kernel/random/boot_id
section kernel_release; show /proc/sys/kernel/osrelease
section cmdline; show /proc/cmdline
section namespaces
for ns in mnt pid net; do
	if [ "/proc/self/ns/$ns" -ef "/proc/1/ns/$ns" ]; then echo "$ns init"; else echo "$ns other"; fi
done
read -r pid rest < /proc/self/stat || failed=1
if [ "$pid" = "$$" ]; then echo "proc live"; else echo "proc stale"; fi
section mountinfo; show /proc/self/mountinfo
section verity; must veritysetup status root
# Write-only and unreadable entries make grep exit 2; the values themselves are checked.
section sysctl; grep -rs '' /proc/sys/kernel /proc/sys/fs /proc/sys/user /proc/sys/dev/tty \
	/proc/sys/net/core /proc/sys/net/ipv4 /proc/sys/net/ipv6/conf/all \
	/proc/sys/net/ipv6/conf/default
section apparmor_enabled; show /sys/module/apparmor/parameters/enabled
section apparmor_profiles; show /sys/kernel/security/apparmor/profiles
section sshd; must sshd -T
section seccomp
if [ -d /usr/lib/hardhost/seccomp ]; then
	must find /usr/lib/hardhost/seccomp -maxdepth 1 -type f -name '*.json' -exec sha256sum {} +
fi
section runtime_config
if [ -e /etc/docker/daemon.json ]; then must sha256sum /etc/docker/daemon.json; fi
section subuid; if [ -e /etc/subuid ]; then show /etc/subuid; fi
section subgid; if [ -e /etc/subgid ]; then show /etc/subgid; fi
section listening; must ss -Hlntu
section services; must systemctl list-units --type=service --state=running --no-legend --plain
section failed_units; must systemctl list-units --state=failed --no-legend --plain
# Each upper layer: the number of changed entries outside the allowed globs, then at most
# 1000 of their names, NUL-separated and base64-encoded, so that no name (newlines,
# invalid UTF-8, a forged marker) can change the structure; "absent" without a layer.
upper_layer() {
	name=$1; shift
	upper="/run/hardhost/overlay/$name/upper"
	if [ ! -d "$upper" ]; then echo absent; return; fi
	count=$#
	while [ "$count" -gt 0 ]; do
		glob=$1; shift; count=$((count - 1))
		case $glob in "$name":*) set -- "$@" -o -path "$upper/${glob#*:}" ;; esac
	done
	if [ $# -gt 0 ]; then shift; set -- ! "(" "$@" ")"; fi
	find "$upper" -mindepth 1 "$@" -printf . | wc -c || failed=1
	find "$upper" -mindepth 1 "$@" -printf '%P\0' | head -z -n 1000 | base64 -w 0 || failed=1
	echo
}
section overlay_etc; upper_layer etc "$@"
section overlay_var; upper_layer var "$@"
section end
exit "$failed"
