"""`hardhost evidence`: what one host shows of its boot state, without a manifest."""

from __future__ import annotations

import argparse

from hardhost.cli.common import Commands, add_command, connection, connection_options


def register(commands: Commands) -> None:
    evidence = add_command(
        commands, "evidence", help="collect a host's boot-state evidence over SSH",
        description="Connect to TARGET ([user@]host[:port]) with a strict host key from "
                    "--known-hosts, run one fixed read-only script, and show what it found: "
                    "the root's filesystem and dm-verity status, the mount table and its "
                    "namespace, the overlays and what changed in them, sysctls, AppArmor and "
                    "sshd settings, failed units, and the script's own exit status.")
    evidence.add_argument("target", metavar="TARGET", help="[user@]host[:port]")
    connection_options(evidence)
    evidence.add_argument("--json", action="store_true", help="print one JSON document")
    # evidence records no host key: an unknown one is refused, as without attest's
    # --trust-on-first-use.
    evidence.set_defaults(func=_cmd_evidence, trust_on_first_use=False)


def _cmd_evidence(args: argparse.Namespace) -> int:
    from hardhost.verifier.evidence import collect, render_table
    from hardhost.verifier.transport import Target, connect

    target = Target.parse(args.target)
    conn = connection(args)
    with connect(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=conn.timeout, ssh_config=conn.ssh_config) as session:
        evidence = collect(session, timeout=args.timeout)
    if args.json:
        print(evidence.to_json())
    else:
        print(render_table(target, evidence))
    return 0
