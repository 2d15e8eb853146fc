"""`hardhost update`: one host to a new image through its idle slot, kept only when the new
boot passes attestation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hardhost.cli.common import (
    DATABASE_HELP,
    Commands,
    add_command,
    connection,
    connection_options,
    database,
    json_errors,
    positive,
    tpm_options,
    tpm_policy,
)
from hardhost.core.durations import MAX_TIMEOUT
from hardhost.core.errors import FAILED, OK, TRUST, UNREACHABLE, USAGE


def register(commands: Commands) -> None:
    update = add_command(
        commands, "update", help="update a host to a new image, rolled back unless it attests",
        description="Update TARGET to the image in --image. Its manifest must verify against "
                    "--trust-key and its root.img, root.verity and uki.efi match it, or "
                    f"nothing is sent (exit {TRUST.code}). TARGET is attested on the image it "
                    "runs, found in --manifests by the root hash it reports (a host on an "
                    f"image no manifest there signs is exit {TRUST.code}; a drifted host is "
                    f"refused, exit {FAILED.code}); a new version older than the running one "
                    f"is refused (exit {USAGE.code}) unless --allow-downgrade. Then, over the "
                    "same SSH connection, the root and its hash tree are written to the idle "
                    "slot and read back, the slot gets the partition UUIDs of the new root "
                    "hash, and the UKI goes to the ESP, its sha256 checked there before a "
                    "rename makes it the newest boot entry, with systemd-boot's boot counter "
                    "(boot.tries of the new image's spec). A fault before that rename (a "
                    "changed byte, a full ESP, a dropped connection) leaves the host booting "
                    "its running image, and says so. The host reboots; a new image that "
                    "cannot boot uses up its tries and systemd-boot starts the old slot by "
                    "itself. A new boot is attested against the new manifest (with --tpm, "
                    "its quote against the new PCRs): a pass blesses it "
                    "(systemd-bless-boot good) and the host is 'updated' (exit "
                    f"{OK.code}); a failure marks it bad, reboots into the old slot and "
                    "attests that: 'rolled-back', with the failed boot's findings (exit "
                    f"{FAILED.code}). A host that does not come back is exit "
                    f"{UNREACHABLE.code}. The outcome is recorded in the history.")
    update.add_argument("target", metavar="TARGET", help="user@host[:port]")
    update.add_argument("--image", type=Path, required=True, metavar="DIR",
                        help="the new image: a build's OUTDIR/NAME")
    update.add_argument("--manifests", type=Path, required=True, metavar="STORE",
                        help="the manifest store: a folder of image folders "
                             "(NAME/manifest.dsse.json) or of manifest files (*.dsse.json); "
                             "each must verify against --trust-key")
    update.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                        help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    update.add_argument("--allow-downgrade", action="store_true",
                        help="install a version older than the running one")
    update.add_argument("--reboot-timeout", type=positive, default=900, metavar="SECONDS",
                        help="how long to wait for each reboot, tries that fall back "
                             f"included (default: 900, at most {MAX_TIMEOUT:g})")
    update.add_argument("--history", type=database, default=None, metavar="DB",
                        help=f"the history to record the outcome in: {DATABASE_HELP} "
                             "(default: ~/.local/state/hardhost/history.db)")
    update.add_argument("--json", action="store_true",
                        help="print the outcome as JSON: outcome (updated, rolled-back or "
                             "current), versions, and each attestation's verdict")
    connection_options(update)
    tpm_options(update, "each attestation of the update quotes the TPM: the running image "
                        "before, the new boot against the new image's PCRs")
    update.set_defaults(func=_cmd_update, trust_on_first_use=False)


@json_errors
def _cmd_update(args: argparse.Namespace) -> int:
    from hardhost.image.signing import load_trusted_keys
    from hardhost.verifier import history
    from hardhost.verifier.tpm_attest import predictions
    from hardhost.verifier.transport import Target
    from hardhost.verifier.update import Outcome, describe, load_image, load_store, update
    from hardhost.verifier.verdict import now, render

    target = Target.parse(args.target)
    trusted = load_trusted_keys(args.trust_key)
    new = load_image(args.image, trusted)  # before anything else: exit 4 offline
    store = load_store(args.manifests, trusted)
    if args.tpm:
        predictions(new.manifest, str(args.image))
    db = args.history or history.default_path()
    history.prepare(db, create_folder=args.history is None)
    conn = connection(args, tpm_policy(args))
    started = now()
    result = update(target, new, store, conn, allow_downgrade=args.allow_downgrade,
                    reboot_timeout=args.reboot_timeout)
    verdicts = [v for v in (result.before, result.new_boot, result.after) if v is not None]
    history.record_update(db, started, f"update {args.image}", result.host,
                          str(result.outcome), result.from_version, result.to_version,
                          result.reason, verdicts)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        if result.new_boot is not None and result.outcome is Outcome.ROLLED_BACK:
            print(render(result.new_boot))
        print(describe(result))
    return FAILED.code if result.outcome is Outcome.ROLLED_BACK else OK.code
