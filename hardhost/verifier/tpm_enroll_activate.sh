# hardhost TPM enrollment, step 2 (arguments: HANDLE EK_ALGORITHM CREDENTIAL AK_CONTEXT, the
# last two base64), sent after tpm_enroll_common.sh: activate the credential with the EK's
# policy (PolicySecret on the endorsement hierarchy, the TCG default EK template's policy),
# and only then persist the AK at its handle, evicting the former AK there (step 1 showed the
# verifier what it was). Prints the recovered secret, base64-encoded after a marker line.
if [ "$#" -ne 4 ]; then echo "usage: sh -s -- HANDLE rsa|ecc CREDENTIAL AK_CONTEXT" >&2; exit 2; fi
begin "$1" "$2"
printf '%s' "$3" | base64 -d > cred.bin
printf '%s' "$4" | base64 -d > ak.ctx
tpm2_createek -Q -c ek.ctx -G "$2"
flush
tpm2_startauthsession -Q --policy-session -S session.ctx
tpm2_policysecret -Q -S session.ctx -c e
tpm2_activatecredential -Q -c ak.ctx -C ek.ctx -i cred.bin -o secret.bin -P session:session.ctx
tpm2_flushcontext session.ctx >/dev/null
rm session.ctx
flush
if tpm2_readpublic -Q -c "$1" >/dev/null 2>&1; then tpm2_evictcontrol -Q -C o -c "$1"; fi
tpm2_evictcontrol -Q -C o -c ak.ctx "$1"
flush
printf '\n@@hardhost:secret@@\n'
base64 -w0 secret.bin
printf '\n@@hardhost:end@@\n'
