"""`hardhost scan`: the known vulnerabilities of an image, from its SBOM and Debian's
security tracker data, offline; and the same options for `hardhost build`'s gate."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hardhost.cli.common import Commands, add_command
from hardhost.cli.help import markdown_cell
from hardhost.core.errors import FAILED, OK, TRUST, USAGE, ExitCode, UsageError
from hardhost.core.outputs import check_output_file, write_atomic

if TYPE_CHECKING:
    from hardhost.advisories.scan import Policy

log = logging.getLogger("hardhost")

LEVELS = ("low", "medium", "high", "never")

# What the exit codes of EXIT_CODES mean for `hardhost scan`; the README's table of them is
# rendered from here.
SCAN_EXITS: tuple[tuple[ExitCode, str], ...] = (
    (OK, "no finding fails the policy"),
    (FAILED, "a finding fails the policy (`--fail-on`, `--fail-on-unfixed`)"),
    (USAGE, "a malformed SBOM, feed or VEX document (`FILE: KEY: what is wrong`), a missing "
            "file, or an output that cannot be written"),
    (TRUST, "the feed's sha256 is not the one `--feed-sha256` pins"),
)


def exit_codes_markdown() -> str:
    """The README's table of what `hardhost scan`'s exit codes mean."""
    rows = ["| code | name | for `hardhost scan` |", "| --- | --- | --- |"]
    rows += [f"| {e.code} | {e.name} | {markdown_cell(text)} |" for e, text in SCAN_EXITS]
    return "\n".join(rows) + "\n"


def register(commands: Commands) -> None:
    scan = add_command(
        commands, "scan", help="list an image's known vulnerabilities, offline",
        description="Match the Debian packages of an image's SBOM against Debian's security "
                    "tracker data (the JSON export of security-tracker.debian.org, given as a "
                    "file): each package by its source package and source version, in "
                    "Debian's version order, for the release the SBOM names. A finding is "
                    "fixable (Debian has a fix the image lacks), unfixed, or undetermined; "
                    "unimportant and no-DSA issues are shown apart and never fail. Exit "
                    + "; ".join(f"{e.code}: {text.replace('`', '')}"
                                for e, text in SCAN_EXITS) + ".")
    scan.add_argument("target", type=Path, metavar="IMAGE_DIR|SBOM",
                      help="a built image's folder (its sbom.spdx.json) or an SPDX JSON SBOM")
    scan.add_argument("--release", metavar="SUITE",
                      help="the Debian release, e.g. bookworm (default: the distro of the "
                           "SBOM's purls; needed for an SBOM that names none)")
    scan.add_argument("--trust-key", type=Path, metavar="PUB",
                      help="with an image folder: verify its signed manifest with this "
                           "public key (or folder of *.pub keys) and scan the SBOM only if "
                           f"it has the digest the manifest signs (else exit {TRUST.code}); "
                           "without it the folder's SBOM is taken as it is")
    advisory_options(scan, required=True)
    scan.add_argument("--json", action="store_true",
                      help="print the findings as JSON instead of the table")
    for flag, what in (("--sarif", "SARIF 2.1.0, for code-scanning tools"),
                       ("--openvex", "OpenVEX 0.2: a statement per finding (with no "
                                     "findings there is nothing to state: FILE is removed)"),
                       ("--junit", "JUnit XML for CI: a failing finding is a failure")):
        scan.add_argument(flag, type=Path, metavar="FILE",
                          help=f"also write {what} (replaced whole, checked before the scan)")
    scan.set_defaults(func=_cmd_scan)


def advisory_options(command: argparse.ArgumentParser, *, required: bool,
                     use: str = "", fails: bool = True) -> None:
    """--feed, --feed-sha256, --feed-date, --fail-on, --fail-on-unfixed and --vex; `use`
    says in --feed's help what the command does with the feed, and `fails` whether a
    finding that counts sets the exit code."""
    counts, also = (("fail (exit 1) on", "also fail on") if fails else
                    ("count a host as exposed for", "also count a host as exposed for"))
    command.add_argument("--feed", type=Path, required=required, metavar="FILE",
                         help="Debian security tracker data: the JSON of "
                              "https://security-tracker.debian.org/tracker/data/json, "
                              "downloaded beforehand" + (f"; {use}" if use else ""))
    command.add_argument("--feed-sha256", metavar="HEX",
                         help=f"the feed's expected sha256; another digest is exit {TRUST.code}")
    command.add_argument("--feed-date", type=_feed_date, metavar="DATE",
                         help="when the feed was fetched, YYYY-MM-DD or "
                              "YYYY-MM-DDTHH:MM:SSZ (default: the file's modification time, "
                              "which curl -R and wget set from the server's); it is reported "
                              "and recorded, the file itself has no date")
    command.add_argument("--fail-on", choices=LEVELS, default="low", metavar="LEVEL",
                         help=f"{counts} an issue Debian has fixed, that the image "
                              "lacks, of this urgency or above: low, medium, high, or never "
                              "(report only). Default: low. An urgency Debian has not "
                              "assigned counts as high: untriaged is not minor")
    command.add_argument("--fail-on-unfixed", action="store_true",
                         help=f"{also} open and undetermined issues (no fix yet) of "
                              "--fail-on's urgency or above; waive the ones that do not "
                              "apply with --vex")
    command.add_argument("--vex", type=Path, action="append", default=[], metavar="FILE",
                         help="OpenVEX 0.2 waivers (repeatable; a later statement wins): "
                              "not_affected with a justification, or fixed, waive a finding, "
                              "which is still shown with its justification; affected and "
                              "under_investigation annotate it")


def _feed_date(value: str) -> dt.datetime:
    for form in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(value, form).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{value!r} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ")


def wants_feed(args: argparse.Namespace) -> bool:
    """Whether --feed was given; the options that need it, without it, are a `UsageError`."""
    if args.feed is not None:
        return True
    given = [flag for flag, value in (("--vex", args.vex), ("--feed-sha256", args.feed_sha256),
                                      ("--feed-date", args.feed_date),
                                      ("--fail-on-unfixed", args.fail_on_unfixed)) if value]
    if given or args.fail_on != "low":
        raise UsageError(f"{', '.join(given) or '--fail-on'} needs --feed FILE")
    return False


def policy(args: argparse.Namespace) -> Policy:
    from hardhost.advisories.scan import Level, Policy

    return Policy(Level(args.fail_on), args.fail_on_unfixed)


def pinned(args: argparse.Namespace) -> str | None:
    from hardhost.advisories.feed import check_sha256

    return None if args.feed_sha256 is None else check_sha256(args.feed_sha256)


def _check_signed_sbom(args: argparse.Namespace) -> None:
    """With --trust-key, an image folder's SBOM must be the one its verified manifest signs:
    anyone who can write the folder could otherwise swap in an SBOM with no findings."""
    import hashlib

    from hardhost.core.errors import TrustError
    from hardhost.core.inputs import read_bytes
    from hardhost.image import layout
    from hardhost.image.manifest import MANIFEST_NAME, read_verified
    from hardhost.image.signing import load_trusted_keys

    if args.trust_key is None:
        if args.target.is_dir():
            log.warning("%s: the SBOM is not checked against the signed manifest (pass "
                        "--trust-key to check it)", args.target)
        return
    if not args.target.is_dir():
        raise UsageError(f"{args.target}: --trust-key checks an image folder's SBOM against "
                         "its manifest; give the folder")
    manifest, _ = read_verified(args.target / MANIFEST_NAME, load_trusted_keys(args.trust_key))
    sbom = args.target / layout.SBOM
    digest = hashlib.sha256(read_bytes(sbom, what="SBOM")).hexdigest()
    if digest != manifest.sbom_digest:
        raise TrustError(f"{sbom}: sha256 {digest} is not the SBOM digest the manifest signs "
                         f"({manifest.sbom_digest})")


def _cmd_scan(args: argparse.Namespace) -> int:
    from hardhost import __version__
    from hardhost.advisories.feed import read_feed
    from hardhost.advisories.report import table, to_json
    from hardhost.advisories.report_junit import junit
    from hardhost.advisories.report_openvex import openvex
    from hardhost.advisories.report_sarif import sarif
    from hardhost.advisories.sbom_read import read_sbom
    from hardhost.advisories.scan import scan
    from hardhost.advisories.vex import read_vex

    outputs = {"SARIF report": args.sarif, "OpenVEX report": args.openvex,
               "JUnit report": args.junit}
    for what, path in outputs.items():
        if path is not None:
            check_output_file(path, what=what)
    if not args.target.exists():
        raise UsageError(f"{args.target}: no such image folder or SBOM")
    checked_policy, pin = policy(args), pinned(args)
    _check_signed_sbom(args)
    inventory = read_sbom(args.target, release=args.release)
    waivers = read_vex(args.vex)
    feed = read_feed(args.feed, release=inventory.release, wanted=inventory.sources(),
                     sha256=pin, date=args.feed_date)
    result = scan(inventory, feed, checked_policy, waivers)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.sarif is not None:
        write_atomic(args.sarif, json.dumps(sarif(result, tool_version=__version__),
                                            indent=2, sort_keys=True) + "\n")
    if args.openvex is not None:
        if result.findings:
            write_atomic(args.openvex, json.dumps(openvex(result, timestamp=now), indent=2,
                                                  sort_keys=True) + "\n")
        else:
            # OpenVEX 0.2 needs at least one statement; a file from an earlier scan would
            # describe findings this one no longer has.
            args.openvex.unlink(missing_ok=True)
            log.warning("no findings, so no OpenVEX statements: %s not written", args.openvex)
    if args.junit is not None:
        write_atomic(args.junit, junit(result))
    print(json.dumps(to_json(result), indent=2, sort_keys=True) if args.json
          else table(result))
    return 0 if result.passed else FAILED.code
