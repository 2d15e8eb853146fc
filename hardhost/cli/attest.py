"""`hardhost attest`: one host against its signed manifest, optionally with a TPM quote."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hardhost.cli.common import (
    Commands,
    add_command,
    connection,
    connection_options,
    json_errors,
    positive,
    tpm_options,
    tpm_policy,
)
from hardhost.core.durations import MAX_TIMEOUT
from hardhost.core.errors import FAILED, OK, TRUST
from hardhost.core.inputs import read_bytes


def register(commands: Commands) -> None:
    attest = add_command(
        commands, "attest", help="attest a host against its signed manifest",
        description=f"Verify MANIFEST (exit {TRUST.code} if bad; the host is not contacted), "
                    "connect to TARGET with a strict host key, collect its boot-state evidence "
                    "with one fixed read-only script, and compare it with the manifest. Exit "
                    f"{OK.code} when every fact holds, {FAILED.code} on drift. With --reset, a "
                    "drifted host is rebooted, and attested again once it answers with a new "
                    "boot_id. With --tpm, the "
                    "host's TPM also quotes its PCRs over a fresh nonce (tpm2_quote, over the "
                    "same SSH session), and the verifier checks the quote's signature by the "
                    "host's enrolled attestation key, the nonce, the PCR digest, and every PCR "
                    "against the values the manifest predicts. The first --tpm attestation of "
                    "a host enrolls its AK: its EK certificate must chain to --tpm-ca, and "
                    "credential activation proves the AK lives in that TPM. A quote by any "
                    f"other key later is exit {TRUST.code}, until --tpm-reenroll.")
    attest.add_argument("target", metavar="TARGET", help="user@host[:port]")
    attest.add_argument("--manifest", type=Path, required=True, metavar="FILE",
                        help="the image's manifest.dsse.json")
    attest.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                        help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    connection_options(attest)
    attest.add_argument("--trust-on-first-use", action="store_true",
                        help="accept an unknown host key once and record it in --known-hosts "
                             "(a changed key is still refused)")
    attest.add_argument("--json", action="store_true",
                        help="print the verdict as JSON; when the host cannot be attested, a "
                             "JSON document with status \"error\", the error and the exit "
                             "code")
    attest.add_argument("--reset", action="store_true",
                        help="on drift, reboot the host and attest it again")
    attest.add_argument("--reset-timeout", type=positive, default=300, metavar="SECONDS",
                        help="how long to wait for the host to return (default: 300, at most "
                             f"{MAX_TIMEOUT:g})")
    tpm_options(attest, "with --reset, the quote after the reboot must show a new TPM "
                        "resetCount")
    attest.set_defaults(func=_cmd_attest)


@json_errors
def _cmd_attest(args: argparse.Namespace) -> int:
    from hardhost.image.manifest import read_verified
    from hardhost.image.signing import load_trusted_keys
    from hardhost.verifier.attestation import attest, attest_and_reset, manifest_digest
    from hardhost.verifier.tpm_attest import predictions
    from hardhost.verifier.transport import Target
    from hardhost.verifier.verdict import render

    target = Target.parse(args.target)
    read_bytes(args.manifest, what="manifest")  # a missing one is a typo (2), not trust (4)
    # The manifest is verified before the host is contacted: a bad one is exit 4, offline.
    manifest, _ = read_verified(args.manifest, load_trusted_keys(args.trust_key))
    digest = manifest_digest(args.manifest)
    if args.tpm:
        predictions(manifest, str(args.manifest))  # an image without PCRs fails offline
    conn = connection(args, tpm_policy(args))
    if args.reset:
        first, second = attest_and_reset(target, manifest, digest, conn, args.reset_timeout)
    else:
        first, second = attest(target, manifest, digest, conn), None
    final = second or first
    if args.json:
        document = ({"before": first.to_dict(), "after": second.to_dict()} if second
                    else first.to_dict())
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(render(first))
        if second:
            print(render(second))
    return OK.code if final.status == "pass" else FAILED.code
