# hardhost TPM enrollment: what both enrollment scripts share. The verifier sends this text
# first, then tpm_enroll_create.sh or tpm_enroll_activate.sh, as one script to `sh -s`.
# Without a resource manager (swtpm in tests) loaded objects outlive each tool, and a TPM
# may have only three object slots, so the scripts flush after each step; with /dev/tpmrm0
# flushing is a no-op.
set -eu
export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
flush() { tpm2_flushcontext -t >/dev/null 2>&1 || true; }
cleanup() {
	if [ -f "$dir/session.ctx" ]; then
		tpm2_flushcontext "$dir/session.ctx" >/dev/null 2>&1 || true
	fi
	flush
	rm -rf "$dir"
}
# begin HANDLE ALGORITHM: HANDLE must be a persistent handle and ALGORITHM rsa or ecc; then
# work in a private folder, removed on exit with the TPM objects and session loaded there.
begin() {
	case $1 in
	0x81[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
	*) echo "AK handle: not a persistent handle" >&2; exit 2 ;;
	esac
	case $2 in
	rsa | ecc) ;;
	*) echo "algorithm: not rsa or ecc" >&2; exit 2 ;;
	esac
	umask 077
	dir=$(mktemp -d)
	trap cleanup EXIT
	cd "$dir"
}
