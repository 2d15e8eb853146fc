"""`hardhost manifest verify` and `hardhost manifest show`: a build's signed manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hardhost.cli.common import Commands, add_command
from hardhost.core.errors import TRUST, USAGE
from hardhost.core.outputs import printable


def register(commands: Commands) -> None:
    from hardhost.image.manifest import MAX_VALIDITY_DAYS

    manifest = add_command(
        commands, "manifest", help="verify or show a signed manifest",
        description="Check a build's manifest.dsse.json: a DSSE envelope around an in-toto "
                    f"statement. Exit {TRUST.code} for a bad signature, an untrusted key, a "
                    "truncated or malformed file, a changed or missing artifact, a manifest "
                    "created in the future (beyond 5 minutes of clock skew), valid for more "
                    f"than {MAX_VALIDITY_DAYS} days, or expired. Exit {USAGE.code} when FILE "
                    "or the trusted key is missing or not a regular file.")
    actions = manifest.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    for name, func, text in (
            ("verify", _cmd_manifest_verify, "verify the signature, expiry and artifacts"),
            ("show", _cmd_manifest_show, "verify, then print what a host must show")):
        sub = add_command(actions, name, help=text,
                          description=f"{text[0].upper()}{text[1:]}. FILE must be signed by a "
                                      "key given with --trust-key.")
        sub.add_argument("file", type=Path, metavar="FILE", help="manifest.dsse.json")
        sub.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                         help="trusted public key (PEM), or a folder of *.pub keys")
        sub.set_defaults(func=func)
        if name == "verify":
            sub.add_argument("--no-artifacts", dest="artifacts", action="store_false",
                             help="check the signature and validity only. By default every "
                                  "artifact the manifest names must be a regular file beside "
                                  "FILE (not a symbolic link) with the signed digest; a "
                                  f"missing one is exit {TRUST.code}")
        else:
            sub.add_argument("--json", action="store_true", help="print the statement as JSON")


def _cmd_manifest_verify(args: argparse.Namespace) -> int:
    from hardhost.core.errors import TrustError
    from hardhost.image.manifest import ArtifactMissing, check_artifacts, read_verified
    from hardhost.image.signing import load_trusted_keys

    manifest, keyid = read_verified(args.file, load_trusted_keys(args.trust_key))
    name = printable(manifest.name)
    if not args.artifacts:
        print(f"{args.file}: good signature by {keyid[:16]}, {name}, expires "
              f"{manifest.expires}; artifacts not checked (--no-artifacts)")
        return 0
    try:
        checked = check_artifacts(manifest, args.file.parent)
    except ArtifactMissing as error:
        raise TrustError(f"{error}, or pass --no-artifacts to check the signature "
                         "alone") from None
    print(f"{args.file}: good signature by {keyid[:16]}, {name}, expires "
          f"{manifest.expires}; all {len(checked)} artifacts match")
    return 0


def _cmd_manifest_show(args: argparse.Namespace) -> int:
    from hardhost.image.manifest import read_verified
    from hardhost.image.signing import load_trusted_keys

    manifest, keyid = read_verified(args.file, load_trusted_keys(args.trust_key))
    statement = manifest.statement()
    if args.json:
        print(json.dumps(statement, indent=2, sort_keys=True))
        return 0
    predicate = statement["predicate"]
    # Signed is not harmless: escape what a terminal would act on.
    print(f"manifest of {printable(manifest.name)}, signed by {keyid[:16]}")
    for key in sorted(predicate):
        value = predicate[key]
        if isinstance(value, dict):
            print(f"{printable(key)}:")
            for inner in sorted(value):
                print(f"  {printable(inner)} = {printable(str(value[inner]))}")
        else:
            print(f"{printable(key)}: {printable(str(value))}")
    print("subjects:")
    for subject in manifest.subjects:
        print(f"  {subject.name}  sha256:{subject.sha256}")
    return 0
