# hardhost TPM enrollment, step 1 (arguments: HANDLE AK_ALGORITHM), sent after
# tpm_enroll_common.sh: read the EK certificate, create the EK and an AK under it, and print
# them with the public area of whatever already sits at the handle, each base64-encoded after
# a marker line. Nothing persistent changes: the new AK exists only as a context file the
# verifier keeps.
if [ "$#" -ne 2 ]; then echo "usage: sh -s -- HANDLE rsa|ecc" >&2; exit 2; fi
begin "$1" "$2"
if [ "$2" = rsa ]; then scheme=rsassa; else scheme=ecdsa; fi
if tpm2_nvreadpublic 0x01c00002 >/dev/null 2>&1; then index=0x01c00002 ekalg=rsa
elif tpm2_nvreadpublic 0x01c0000a >/dev/null 2>&1; then index=0x01c0000a ekalg=ecc
else echo "no EK certificate at NV index 0x01c00002 (RSA) or 0x01c0000a (ECC)" >&2; exit 3
fi
tpm2_nvread -Q -o ek.crt "$index"
tpm2_createek -Q -c ek.ctx -G "$ekalg"
flush
tpm2_createak -Q -C ek.ctx -c ak.ctx -G "$2" -g sha256 -s "$scheme" -u ak.pub -n ak.name
flush
tpm2_readpublic -Q -c "$1" -o held.pub >/dev/null 2>&1 || : > held.pub
section() { printf '\n@@hardhost:%s@@\n' "$1"; }
section ek_index; printf '%s' "$index"
for file in ek.crt ak.pub ak.name ak.ctx held.pub; do
	section "$(echo "$file" | tr . _)"
	base64 -w0 "$file"
done
section end
