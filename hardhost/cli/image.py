"""`hardhost image sign`: sign a container image for podman hosts that pull signed images only."""

from __future__ import annotations

import argparse
from pathlib import Path

from hardhost.cli.common import Commands, add_command


def register(commands: Commands) -> None:
    image = add_command(
        commands, "image", help="sign container images for podman hosts",
        description="Container images for hosts whose spec sets containers.engine = "
                    "\"podman\" with allowed_registries: such a host pulls an image only when "
                    "a GPG key of its containers.signing_keys signed it.")
    actions = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    sign = add_command(
        actions, "sign", help="sign an image in its registry with a GPG key (skopeo)",
        description="Sign the image at REF with skopeo copy --sign-by (GPG simple signing; "
                    "Debian 12's skopeo has no sigstore), copying it onto itself, so the "
                    "registry gains nothing but skopeo writes the signature into the "
                    "lookaside folder DIR/REGISTRY/, the folder the host reads as "
                    "LOOKASIDE/REGISTRY/: publish DIR at the spec's containers.lookaside URL. "
                    "Make a key with: gpg --batch --passphrase '' --quick-gen-key 'CI "
                    "<ci@example>' ed25519 sign never; give the host its public half: gpg "
                    "--armor --export FINGERPRINT > keys/ci.gpg. A signature names REF's full "
                    "reference and its digest: the host refuses the image under another name, "
                    "and the tag once it is moved to another digest.")
    sign.add_argument("reference", metavar="REF",
                      help="REGISTRY/REPOSITORY:TAG, the name hosts pull the image by")
    sign.add_argument("--key", required=True, metavar="FINGERPRINT",
                      help="fingerprint of the GPG secret key that signs (40 hex digits)")
    sign.add_argument("--lookaside", type=Path, required=True, metavar="DIR",
                      help="local folder of the signature store; the signature goes under "
                           "DIR/REGISTRY/")
    sign.add_argument("--digest", metavar="sha256:HEX",
                      help="sign the image of this digest (tagged REF by the copy), not "
                           "whatever REF points to when skopeo reads it")
    sign.add_argument("--identity", metavar="REF",
                      help="the reference hosts pull the image by, when it is not REF (a "
                           "mirror, or another address of the registry): the signature names "
                           "it and lives under DIR/ITS-REGISTRY/")
    sign.add_argument("--gnupg-home", type=Path, metavar="DIR",
                      help="GnuPG home holding the secret key (default: $GNUPGHOME's or "
                           "~/.gnupg)")
    sign.add_argument("--passphrase-file", type=Path, metavar="FILE",
                      help="the key's passphrase (gpg cannot ask for it here)")
    sign.add_argument("--authfile", type=Path, metavar="FILE",
                      help="registry credentials (containers-auth.json(5)) for the copy")
    sign.add_argument("--no-tls-verify", dest="tls_verify", action="store_false",
                      help="talk to the registry over plain HTTP or unverified TLS (a "
                           "loopback test registry); the signature still protects the image")
    sign.set_defaults(func=_cmd_image_sign)


def _cmd_image_sign(args: argparse.Namespace) -> int:
    import os

    from hardhost.builder.workload_signing import parse_reference, sign

    gnupg_home = args.gnupg_home
    if gnupg_home is None and os.environ.get("GNUPGHOME"):
        # The runner's clean environment drops the caller's variables: pass this one on.
        gnupg_home = Path(os.environ["GNUPGHOME"])
    reference = parse_reference(args.reference)
    identity = parse_reference(args.identity) if args.identity else None
    digest = sign(reference, fingerprint=args.key, lookaside=args.lookaside,
                  digest=args.digest, gnupg_home=gnupg_home, tls_verify=args.tls_verify,
                  authfile=args.authfile, passphrase_file=args.passphrase_file,
                  identity=identity)
    named = identity or reference
    print(f"{reference}@{digest} signed by {args.key} as {named}; signature under "
          f"{args.lookaside / named.registry}")
    return 0
