"""`hardhost terraform-attest`: Terraform's external data source protocol, over stdin and
stdout."""

from __future__ import annotations

import argparse
import json
import sys

from hardhost.cli.common import Commands, add_command


def register(commands: Commands) -> None:
    terraform = add_command(
        commands, "terraform-attest", help="Terraform external data source: attest one host",
        description="Terraform's external data source protocol. Reads one JSON object of "
                    "strings on stdin (host, port, user, manifest, trust_key, known_hosts, "
                    "identity, timeout) and writes one flat JSON object of strings on stdout: "
                    "status (pass or drift), boot_id, manifest_digest, findings_count, and "
                    "findings as a JSON string. Errors go to stderr with a non-zero exit. "
                    "It never resets a host: Terraform runs it on every refresh.")
    terraform.set_defaults(func=_cmd_terraform_attest)


def _cmd_terraform_attest(args: argparse.Namespace) -> int:
    from hardhost.faces.terraform import MAX_QUERY, run

    print(json.dumps(run(sys.stdin.read(MAX_QUERY + 1)), sort_keys=True))
    return 0
