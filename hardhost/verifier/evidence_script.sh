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
# its stderr reaches the verifier apart from the sections. The only writes are podman's own
# (its locks and state under /run and /var), when the `workloads` section asks it.
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
# The engine's configuration: dockerd's, or podman's (the manifest may expect either). A path
# that is not a regular file is not read (a FIFO would block); it is reported as absent.
section runtime_config
for config in /etc/docker/daemon.json /etc/containers/containers.conf; do
	if [ -f "$config" ]; then must timeout -v 20 sha256sum -- "$config"; fi
done
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
# Every entry of /etc/containers but its folders, as NUL-terminated records, base64-encoded
# as above: `SHA256  PATH` for a regular file of at most 1 MiB, else `TYPE  PATH` (find's %y
# letter; `f` is a larger file). Nothing else is read: a FIFO would block, and a huge sparse
# file would take minutes to hash. The count of entries first, then at most 200 records.
# Inside a pipe a failure cannot set `failed`: what failed says so on stderr (timeout -v).
container_policy() {
	policy=/etc/containers
	if [ ! -d "$policy" ]; then echo absent; return; fi
	set -- "$policy" -xdev -maxdepth 3 ! -type d
	find "$@" -printf . | wc -c || failed=1
	{
		find "$@" -type f -size -1048577c -print0 | head -z -n 200 \
			| timeout -v 20 xargs -0r sha256sum -z --
		find "$@" ! "(" -type f -size -1048577c ")" -printf '%y  %p\0'
	} | head -z -n 200 | base64 -w 0 || failed=1
	echo
}
# Files that would override /etc/containers for a podman run with HOME in the folder above
# them: containers/image and containers/common read $HOME/.config/containers first, even
# for root, and root can point HOME anywhere writable. Searched wherever such a file can be
# made at run time, and every file system mounted there, never inside procfs or sysfs (a
# bind mount of /proc under /tmp would make the walk endless). A folder on the root file
# system is skipped: the `mount` checks require that to be the verified read-only image
# (a mount below it is a finding of its own), and walking a writable root's /root would be
# most of this script's time. The count of names, then at most 100 of them, as above;
# `absent` without podman, the one reader of these files the image may hold.
container_overrides() {
	if [ ! -x /usr/bin/podman ]; then echo absent; return; fi
	rootdev=$(stat -c %d /) || failed=1
	for top in /root /home /tmp /var /run /dev/shm; do
		if [ -d "$top" ] && [ "$(stat -c %d "$top")" != "$rootdev" ]; then
			set -- "$@" "$top"
		fi
	done
	if [ $# -eq 0 ]; then printf '0\n\n'; return; fi
	conf='*/.config/containers'
	# The -path "$conf*" before the others halves the time of the walk: one pattern per entry.
	set -- "$@" -ignore_readdir_race -type d "(" -fstype proc -o -fstype sysfs ")" -prune \
		-o -path "$conf*" "(" -path "$conf/policy.json" -o -path "$conf/registries.conf" \
		-o -path "$conf/registries.conf.d/*" -o -path "$conf/registries.d/*" \
		-o -path "$conf/containers.conf" -o -path "$conf/containers.conf.d/*" \
		-o -path "$conf" ! -type d ")"
	found=$(timeout -v 20 find "$@" -printf . | wc -c)
	echo "$found"
	# The walk is the cost of this section: a second one only to name what the first found.
	if [ "$found" -gt 0 ]; then
		timeout -v 20 find "$@" -printf '%p\0' | head -z -n 100 | base64 -w 0 || failed=1
	fi
	echo
}
# podman's running containers. Every value goes through podman's `json` template function,
# which escapes newlines and control characters, so each container and each image is one
# line of JSON whatever its name or reference holds; only 64-hex ids reach the next command.
# The number of running containers comes first, so that a list cut at 200 shows as such;
# `failed` instead when podman could not say (a FIFO for its containers.conf blocks it).
container_format='container {"name":{{json .Name}},"image_ref":{{json .ImageName}},'\
'"image_id":{{json .Image}},"runtime":{{json .OCIRuntime}}}'
image_format='image {"id":{{json .ID}},"repo_digests":{{json .RepoDigests}}}'
hex_id='[0-9a-f]\{64\}'
workloads() {
	if [ ! -x /usr/bin/podman ]; then echo absent; return; fi
	if ! running=$(timeout -v 20 podman ps -q --no-trunc); then
		failed=1
		echo failed
		return
	fi
	echo "count $(printf '%s' "$running" | grep -c '')"
	set -- $(printf '%s\n' "$running" | grep -x "$hex_id" | head -n 200)
	if [ $# -eq 0 ]; then return; fi
	timeout -v 20 podman container inspect --format "$container_format" "$@" || failed=1
	set -- $(timeout -v 20 podman container inspect --format '{{.Image}}' "$@" \
		| grep -x "$hex_id" | sort -u)
	if [ $# -eq 0 ]; then return; fi
	timeout -v 20 podman image inspect --format "$image_format" "$@" || failed=1
}
section container_policy; container_policy
section container_overrides; container_overrides
section workloads; workloads
section end
exit "$failed"
