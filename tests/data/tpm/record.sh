#!/bin/sh
# Re-record the TPM quote fixtures with a real swtpm and tpm2-tools 5.4:
#   sh tests/data/tpm/record.sh tests/data/tpm
# For each AK type (rsa: RSASSA-PKCS1v1.5/SHA-256, ecc: ECDSA P-256/SHA-256) it writes the
# AK public key (ak.pem, and ak.pub as TPM2B_PUBLIC), its name, a fresh nonce, and the three
# files `tpm2_quote -m msg -s sig -o pcrs` writes. PCRs 4 and 11 are extended first, so the
# recorded values are not all zero (extend-digests.txt lists what went in). rsa/narrow/ holds
# one more quote by the RSA AK over too few PCRs (sha256:0,4,7).
set -eu
out=$(realpath "$1")
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
swtpm socket --tpm2 --tpmstate dir="$work" --server type=tcp,port="$port",bindaddr=127.0.0.1 \
	--ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear &
pid=$!
trap 'kill $pid; rm -rf "$work"' EXIT
sleep 0.5
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port"
cd "$work"
pcr4=$(printf 'hardhost fixture pcr4' | sha256sum | cut -d' ' -f1)
pcr11=$(printf 'hardhost fixture pcr11' | sha256sum | cut -d' ' -f1)
tpm2_pcrextend "4:sha256=$pcr4" "11:sha256=$pcr11"
printf '4 %s\n11 %s\n' "$pcr4" "$pcr11" > "$out/extend-digests.txt"
tpm2_createek -Q -c ek.ctx -G rsa
tpm2_flushcontext -t
handle=0x81010010
for alg in rsa ecc; do
	mkdir -p "$out/$alg"
	if [ "$alg" = rsa ]; then scheme=rsassa; else scheme=ecdsa; fi
	tpm2_createak -Q -C ek.ctx -c ak.ctx -G "$alg" -g sha256 -s "$scheme" -u ak.pub -n ak.name
	tpm2_flushcontext -t
	tpm2_evictcontrol -Q -C o -c ak.ctx "$handle"
	tpm2_readpublic -Q -c "$handle" -f pem -o "$out/$alg/ak.pem"
	cp ak.pub ak.name "$out/$alg/"
	nonce=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
	printf '%s\n' "$nonce" > "$out/$alg/nonce"
	tpm2_quote -Q -c "$handle" -l sha256:0,4,7,9,11,12,13 -q "$nonce" -g sha256 \
		-m "$out/$alg/msg" -s "$out/$alg/sig" -o "$out/$alg/pcrs"
	if [ "$alg" = rsa ]; then
		mkdir -p "$out/rsa/narrow"
		printf '%s\n' "$nonce" > "$out/rsa/narrow/nonce"
		tpm2_quote -Q -c "$handle" -l sha256:0,4,7 -q "$nonce" -g sha256 \
			-m "$out/rsa/narrow/msg" -s "$out/rsa/narrow/sig" -o "$out/rsa/narrow/pcrs"
	fi
	handle=0x81010011
done
