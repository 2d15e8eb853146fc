# hardhost update: the host's side of an A/B update, run as root over SSH by the verifier.
# One action per run, chosen by the first argument; every other argument is checked by
# the verifier before it is sent (labels from a fixed set, decimal sizes, hex digests,
# UUIDs). Each action prints one "key value" line per fact, and "ok" last; a failure
# prints one "error ..." line and exits 1. Nothing here trusts the host's own state
# beyond what it reads from the kernel and the disk.
#
#   slots ROOT_HASH            which slot runs ROOT_HASH, and the idle slot's sizes
#   clean ROOT_HASH            remove every boot entry that does not boot ROOT_HASH
#   write LABEL SIZE           copy SIZE bytes from stdin onto partition LABEL, print the
#                              sha256 of what the partition then holds
#   uuid LABEL UUID            give partition LABEL its new partition UUID
#   entry NAME SIZE            copy SIZE bytes from stdin to the ESP as EFI/Linux/NAME,
#                              through a temporary file, print its sha256
#   bless good|bad             mark the running boot entry (systemd-bless-boot)
set -u
export LC_ALL=C
PATH=/usr/sbin:/usr/bin:/sbin:/bin

ESP_LABEL=hardhost-esp
ESP=/efi
ENTRIES="$ESP/EFI/Linux"

fail() {
	printf 'error %s\n' "$*"
	exit 1
}

partition() {
	dev=$(readlink -f "/dev/disk/by-partlabel/$1") || fail "no partition labelled $1"
	[ -b "$dev" ] || fail "no partition labelled $1"
	printf '%s\n' "$dev"
}

mount_esp() {
	esp=$(partition "$ESP_LABEL")
	mountpoint -q "$ESP" && umount "$ESP"
	mount -t vfat -o "rw,nosuid,nodev,noexec,umask=0077" "$esp" "$ESP" \
		|| fail "cannot mount the ESP $esp on $ESP"
}

umount_esp() {
	sync
	umount "$ESP" || fail "cannot unmount the ESP from $ESP"
}

# The root hash the running boot opened its root with, from the kernel's command line.
running_hash() {
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		hardhost.roothash=*) printf '%s\n' "${arg#*=}"; return ;;
		esac
	done
}

action=${1:-}
shift || true
case "$action" in
slots)
	[ "$(running_hash)" = "$1" ] || fail "the host does not run root hash $1"
	data=""
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		hardhost.data=*) data=$(readlink -f "${arg#*=}") ;;
		esac
	done
	[ -b "$data" ] || fail "the running root partition is not a block device"
	for slot in a b; do
		if [ "$(partition "hardhost-root-$slot")" = "$data" ]; then
			printf 'running %s\n' "$slot"
		else
			printf 'idle %s\n' "$slot"
			printf 'root_size %s\n' "$(blockdev --getsize64 "$(partition "hardhost-root-$slot")")"
			printf 'verity_size %s\n' "$(blockdev --getsize64 "$(partition "hardhost-verity-$slot")")"
		fi
	done
	[ -r /sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f ] \
		&& printf 'assessing 1\n'
	printf 'ok\n'
	;;
clean)
	mount_esp
	mkdir -p "$ENTRIES" || fail "cannot make $ENTRIES"
	newest=0
	for entry in "$ENTRIES"/hardhost-*.efi; do
		[ -f "$entry" ] || continue
		if grep -a -q -F "hardhost.roothash=$1 " "$entry"; then
			# hardhost-N.efi, or hardhost-N+LEFT[-DONE].efi while under assessment
			n=${entry##*/hardhost-}
			n=${n%%[+.]*}
			case "$n" in
			'' | *[!0-9]*) ;;
			*) [ "$n" -gt "$newest" ] && newest=$n ;;
			esac
			printf 'kept %s\n' "${entry##*/}"
		else
			rm -f "$entry" || fail "cannot remove $entry"
			printf 'removed %s\n' "${entry##*/}"
		fi
	done
	rm -f "$ENTRIES"/.hardhost-*.partial
	printf 'newest %s\n' "$newest"
	printf 'free %s\n' "$(df -P -B1 "$ESP" | awk 'NR == 2 { print $4 }')"
	umount_esp
	printf 'ok\n'
	;;
write)
	dev=$(partition "$1")
	size=$2
	[ "$size" -le "$(blockdev --getsize64 "$dev")" ] || fail "$1 is smaller than $size bytes"
	head -c "$size" | dd of="$dev" bs=1M iflag=fullblock conv=fsync status=none \
		|| fail "cannot write $1"
	# Read back past the page cache: the digest is of what the disk holds.
	mib=$(( (size + 1048575) / 1048576 ))
	digest=$(dd if="$dev" bs=1M count="$mib" iflag=direct status=none | head -c "$size" \
		| sha256sum) || fail "cannot read $1 back"
	printf 'sha256 %s\n' "${digest%% *}"
	printf 'ok\n'
	;;
uuid)
	dev=$(partition "$1")
	name=${dev##*/}
	number=$(cat "/sys/class/block/$name/partition") || fail "$dev is not a partition"
	disk=$(readlink -f "/sys/class/block/$name/..")
	disk=/dev/${disk##*/}
	[ -b "$disk" ] || fail "no disk holds $dev"
	sfdisk --quiet --no-reread --no-tell-kernel --part-uuid "$disk" "$number" "$2" \
		>/dev/null || fail "cannot set the partition UUID of $1"
	printf 'ok\n'
	;;
entry)
	name=$1
	size=$2
	mount_esp
	partial="$ENTRIES/.$name.partial"
	if ! head -c "$size" > "$partial" || ! sync; then
		rm -f "$partial"
		umount_esp
		fail "cannot write $name to the ESP (full?)"
	fi
	digest=$(sha256sum < "$partial")
	printf 'sha256 %s\n' "${digest%% *}"
	printf 'partial %s\n' ".$name.partial"
	umount_esp
	printf 'ok\n'
	;;
install)
	# install PARTIAL NAME: the digest was checked; the rename is the switch.
	mount_esp
	[ -f "$ENTRIES/$1" ] || fail "no $1 on the ESP"
	mv "$ENTRIES/$1" "$ENTRIES/$2" || fail "cannot rename $1 to $2"
	umount_esp
	printf 'ok\n'
	;;
bless)
	mount_esp
	/usr/lib/systemd/systemd-bless-boot "$1" || {
		umount "$ESP"
		fail "systemd-bless-boot $1 failed"
	}
	umount_esp
	if [ "$1" = good ]; then
		systemctl stop hardhost-boot-deadline.timer || fail "cannot stop the boot deadline"
	fi
	printf 'ok\n'
	;;
*)
	fail "unknown action $action"
	;;
esac
