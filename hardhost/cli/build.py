"""`hardhost build` and `hardhost keygen`: an image from a spec, and the key that signs it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hardhost.builder.workspace import IN_MEMORY_MIN_AVAILABLE, Workspace
from hardhost.cli.common import Commands, add_command
from hardhost.cli.scan import advisory_options, pinned, policy, wants_feed
from hardhost.core.errors import UsageError
from hardhost.core.inputs import read_text
from hardhost.core.outputs import check_output_dir

if TYPE_CHECKING:
    from hardhost.advisories.gate import Gate

log = logging.getLogger("hardhost")


def register(commands: Commands) -> None:
    build = add_command(
        commands, "build", help="build an image from a TOML spec",
        description="Build SPEC into OUTDIR/NAME: disk.img (a GPT disk: an ESP with "
                    "systemd-boot and the UKI, slot A with the root and its dm-verity "
                    "partition, an empty slot B for updates, and a state partition), "
                    "vmlinuz, initrd.img, uki.efi, root.img and root.verity (what an update "
                    "writes into a slot), cmdline, sbom.spdx.json, the signed "
                    "manifest.dsse.json and build.json. Needs root. "
                    "The mmdebstrap tree, the initramfs "
                    "and the root image are cached under ~/.cache/hardhost (or "
                    "$HARDHOST_CACHE_DIR), each keyed by exactly the inputs it depends on: a "
                    "sysctl change rebuilds the root image but reuses the rest. The output "
                    "appears only when complete.")
    build.add_argument("spec", type=Path, metavar="SPEC", help="image spec, e.g. "
                       "images/container-host.toml")
    build.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                       help="folder that receives NAME/, made if absent; checked before "
                            "any stage runs")
    build.add_argument("--force", action="store_true",
                       help="replace OUTDIR/NAME if it exists (only once the new build is done)")
    build.add_argument("--authorized-key", type=Path, action="append", default=[],
                       metavar="FILE", help="add the public key lines in FILE to "
                       "[access] authorized_keys (repeatable)")
    build.add_argument("--key", type=Path, metavar="FILE",
                       help="Ed25519 private key that signs the manifest (default: the spec's "
                            "manifest.signing_key)")
    build.add_argument("--check-reproducible", action="store_true",
                       help="build twice, without cached stage outputs, and report the first "
                            "artifact that differs (exit 1)")
    build.add_argument("--no-cache", action="store_true",
                       help="run every stage after bootstrap even when its output is cached")
    build.add_argument("--refresh", action="store_true",
                       help="run the bootstrap (mmdebstrap) even when its tree is cached, so "
                            "the image gets the archive's current packages and security "
                            "updates; the cached tree is replaced only once the new one is "
                            "complete")
    build.add_argument("--workspace", type=Workspace, choices=list(Workspace),
                       default=Workspace.AUTO,
                       help="where the image tree is assembled: memory (a tmpfs of the "
                            "build's own, about 1 GiB at its peak, gone when the build ends), "
                            "disk (a folder in OUTDIR), or auto (the default): memory when "
                            f"{IN_MEMORY_MIN_AVAILABLE // 2**30} GiB are available. The "
                            "image is the same either way; in memory, a rebuild does not "
                            "wait on the disk")
    build.add_argument("--format", choices=("raw", "qcow2"), default="raw",
                       help="the disk image: raw disk.img (the default; write it to a disk "
                            "with dd, or import it to a cloud) or disk.qcow2 for hypervisors "
                            "(made with qemu-img)")
    advisory_options(build, required=False,
                     use="the image is scanned before its manifest is signed, and a failing "
                         "image is not written")
    build.set_defaults(func=_cmd_build)

    keygen = add_command(
        commands, "keygen", help="make an Ed25519 signing key pair",
        description="Write DIR/signing.key (PEM, mode 0600) and DIR/signing.pub (PEM). "
                    "DIR is made (mode 0700) if its parent exists. Refuses to overwrite an "
                    "existing key or to write through a symbolic link, and refuses a DIR "
                    "that group or others may write (they could swap the public key).")
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the key pair")
    keygen.set_defaults(func=_cmd_keygen)


def _signing_key_path(args: argparse.Namespace, spec_key: str) -> Path:
    if args.key is not None:
        return Path(args.key)
    if spec_key:
        return Path(args.spec.parent / spec_key).expanduser()
    raise UsageError(f"{args.spec}: manifest.signing_key: no signing key; pass --key FILE or "
                     "set it in the spec (make one with: hardhost keygen --out DIR)")


def _cmd_build(args: argparse.Namespace) -> int:
    from hardhost.builder.build import build, check_reproducible, require_root
    from hardhost.builder.spec import load_spec, with_authorized_keys
    from hardhost.image.signing import load_private_key

    spec = load_spec(args.spec)
    _check_build_output(args.output)  # before any stage: a bad -o must not cost a build
    gate = _gate(args, spec.distribution.suite)
    require_root()
    key = load_private_key(_signing_key_path(args, spec.manifest.signing_key))
    extra: list[str] = []
    for key_file in args.authorized_key:
        text = read_text(key_file, what="authorized key file")
        extra.extend(line.strip() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))
    if extra:
        spec = with_authorized_keys(spec, tuple(extra), "--authorized-key")
    if args.check_reproducible:
        final, differing = check_reproducible(spec, args.output, key=key, force=args.force,
                                              workspace=args.workspace,
                                              qcow2=args.format == "qcow2", gate=gate,
                                              refresh=args.refresh)
        if differing is not None:
            print(f"hardhost: not reproducible: {differing} differs between two builds of "
                  f"{args.spec}", file=sys.stderr)
            return 1
        log.info("Reproducible: two builds gave identical %s",
                 ", ".join(_subjects(qcow2=args.format == "qcow2")))
    else:
        final = build(spec, args.output, key=key, force=args.force, reuse=not args.no_cache,
                      workspace=args.workspace, qcow2=args.format == "qcow2", gate=gate,
                      refresh=args.refresh)
    print(final)
    return 0


def _gate(args: argparse.Namespace, suite: str) -> Gate | None:
    """The known-vulnerability gate of --feed, its inputs read and checked before the
    build starts."""
    from hardhost.advisories.gate import load_gate

    if not wants_feed(args):
        return None
    return load_gate(args.feed, release=suite, policy=policy(args), vex=args.vex,
                     sha256=pinned(args), date=args.feed_date)


def _check_build_output(output: Path) -> None:
    """OUTDIR may not exist yet (the build makes it, with its parents); the nearest folder
    that does must take new files, and nothing on the way may be a file."""
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == output:
        check_output_dir(output, what="build output")
    elif not existing.is_dir():
        raise UsageError(f"{output}: cannot make the build output folder: {existing} is not "
                         "a folder")
    else:
        first = existing / output.relative_to(existing).parts[0]
        check_output_dir(first, what="build output")


def _subjects(*, qcow2: bool) -> tuple[str, ...]:
    from hardhost.builder.stages.manifest import subjects

    return subjects(qcow2=qcow2)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from hardhost.image.signing import key_id, keygen, load_private_key

    private, public = keygen(args.out)
    print(f"{private}\n{public}")
    log.info("key id %s", key_id(load_private_key(private).public_key()))
    return 0
