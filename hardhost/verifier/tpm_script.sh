# hardhost TPM quote script: fixed and read-only; it changes nothing on the host.
# Arguments: NONCE (64 lowercase hex digits) and AK_HANDLE (the AK's persistent handle,
# 0x81xxxxxx), both checked by the verifier before it sends them and again here.
# It quotes the sha256 PCRs 0,4,7,9,11,12,13 in a private temporary folder and prints the three
# files tpm2_quote writes, base64-encoded, each after a marker line; the verifier requires
# every section exactly once, in order. Errors go to stderr only.
# tpm2-tools reaches the TPM through TPM2TOOLS_TCTI when it is set (swtpm in tests), and
# through its default (the kernel's /dev/tpmrm0) otherwise.
set -eu
export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
if [ "$#" -ne 2 ]; then echo "usage: sh -s -- NONCE AK_HANDLE" >&2; exit 2; fi
case $1 in
*[!0-9a-f]*) echo "nonce: not lowercase hex" >&2; exit 2 ;;
esac
if [ "${#1}" -ne 64 ]; then echo "nonce: not 64 hex digits" >&2; exit 2; fi
case $2 in
0x81[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
*) echo "AK handle: not a persistent handle" >&2; exit 2 ;;
esac
umask 077
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# In the empty private folder, -q can only be read as hex, never as a file name.
cd "$dir"
tpm2_quote -Q -c "$2" -l sha256:0,4,7,9,11,12,13 -q "$1" -g sha256 -m msg -s sig -o pcrs
section() { printf '\n@@hardhost:%s@@\n' "$1"; }
for file in msg sig pcrs; do
	section "$file"
	base64 -w0 "$file"
done
section end
