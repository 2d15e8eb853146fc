"""What the command groups share: how a command is added (with the exit codes in its help),
the argparse types for durations, counts and ports, and the SSH connection options."""

from __future__ import annotations

import argparse
import functools
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from hardhost.cli.help import EPILOG
from hardhost.core.durations import MAX_TIMEOUT, duration
from hardhost.core.errors import FAILED, HardhostError, UsageError

if TYPE_CHECKING:
    from hardhost.verifier.attestation import Connection
    from hardhost.verifier.tpm_attest import TpmPolicy

# A string: argparse's _SubParsersAction takes a type argument only for the type checker.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, never inside an option's name (argparse's own
    wrapping breaks `--known-hosts` at its hyphen); the exit-code epilog kept as rendered,
    its codes in a column."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text == EPILOG:
            return text
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False,
                             break_long_words=False)


def add_command(commands: Commands, name: str, *, help: str, description: str
                ) -> argparse.ArgumentParser:
    """A command or action whose `--help` ends with the exit codes."""
    return commands.add_parser(name, help=help, description=description, epilog=EPILOG,
                               formatter_class=HelpFormatter)


def seconds(maximum: float) -> Callable[[str], float]:
    """An argparse type for a duration: finite, more than zero and at most `maximum`."""
    def parse(value: str) -> float:
        try:
            return duration(value, what="seconds", maximum=maximum)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("seconds: ")) from None
    return parse


# Every timeout and wait (connecting, evidence, a reboot, a VM's boot) is at most an hour.
positive = seconds(MAX_TIMEOUT)


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def database(value: str) -> str | Path:
    """An SQLite file's path, or a postgresql:// URL kept as it is."""
    from hardhost.verifier.database import is_postgres

    return value if is_postgres(value) else Path(value)


DATABASE_HELP = ("an SQLite file, or a postgresql:// URL such as the service's database (the "
                 "password from ~/.pgpass or PGPASSWORD: a command line is visible to every "
                 "user)")


def port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port")
    return int(value)


def connection_options(command: argparse.ArgumentParser) -> None:
    """--known-hosts, --identity, --ssh-config and --timeout, as attest, evidence and fleet
    take them."""
    home = Path("~/.ssh").expanduser()
    command.add_argument("--known-hosts", type=Path, default=home / "known_hosts",
                         metavar="FILE", help="known_hosts holding the hosts' keys, as OpenSSH "
                         "writes it (default: ~/.ssh/known_hosts); unknown, changed or "
                         "@revoked keys are refused, and @cert-authority lines grant no trust")
    command.add_argument("--identity", type=Path, default=None, metavar="KEY",
                         help="private key to log in with (default: the ssh config's "
                         "IdentityFile, else ~/.ssh/id_ed25519 if it exists), tried before the "
                         "keys of the ssh-agent at $SSH_AUTH_SOCK; an encrypted key's "
                         "passphrase comes from $HARDHOST_IDENTITY_PASSPHRASE, or is asked for "
                         "on a terminal")
    command.add_argument("--ssh-config", type=_ssh_config_path,
                         default=home / "config" if (home / "config").is_file() else None,
                         metavar="FILE", help="OpenSSH client config whose HostName, Port, "
                         "User, IdentityFile and ProxyJump apply to each host, the jump hosts' "
                         "keys checked against --known-hosts too (default: ~/.ssh/config if it "
                         "exists; none: no config)")
    command.add_argument("--timeout", type=positive, default=30, metavar="SECONDS",
                         help="bound on connecting and on collecting evidence (default: 30)")


def tpm_options(command: argparse.ArgumentParser, extra: str = "") -> None:
    """--tpm, --tpm-ca, --ak-registry and --tpm-reenroll, as attest and update take them."""
    command.add_argument("--tpm", action="store_true",
                         help="also verify a TPM quote against the manifest's predicted PCRs "
                              "(every image predicts them)" + (f"; {extra}" if extra else ""))
    command.add_argument("--tpm-ca", type=Path, metavar="FILE",
                         help="PEM CA certificates the TPM's EK certificate must chain to; "
                              "needed when a host's AK is enrolled (first --tpm attestation)")
    command.add_argument("--ak-registry", type=Path, metavar="FILE",
                         help="enrolled attestation keys, one per host and SSH host key "
                              "(default: ~/.local/state/hardhost/aks.json)")
    command.add_argument("--tpm-reenroll", action="store_true",
                         help="replace the host's enrolled AK (after its TPM was cleared or "
                              "replaced); needs --tpm-ca")


def tpm_policy(args: argparse.Namespace) -> TpmPolicy | None:
    from hardhost.verifier.tpm_attest import TpmPolicy, default_registry

    if args.tpm:
        return TpmPolicy(args.ak_registry or default_registry(), args.tpm_ca, args.tpm_reenroll)
    if args.tpm_ca or args.ak_registry or args.tpm_reenroll:
        raise UsageError("--tpm-ca, --ak-registry and --tpm-reenroll need --tpm")
    return None


def _ssh_config_path(value: str) -> Path | None:
    return None if value == "none" else Path(value)


def connection(args: argparse.Namespace, tpm: TpmPolicy | None = None) -> Connection:
    """The connection options, their files read before any host is contacted: a typo in a
    path is exit 2 at once, not one error per host."""
    from hardhost.verifier.attestation import Connection
    from hardhost.verifier.transport import check_options

    check_options(known_hosts=args.known_hosts, identity=args.identity,
                  ssh_config=args.ssh_config, trust_on_first_use=args.trust_on_first_use)
    return Connection(args.known_hosts, args.identity, args.timeout, args.trust_on_first_use,
                      tpm, args.ssh_config)


def json_errors(command: Handler) -> Handler:
    """With --json, a command that cannot attest still prints one JSON document on stdout
    (host, status "error", error, exit_code), so a program reading stdout gets an answer; the
    one-line error goes to stderr and the exit code is the same."""
    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Exception as exc:
            if args.json:
                code = exc.exit_code if isinstance(exc, HardhostError) else FAILED.code
                print(json.dumps({"host": args.target, "status": "error", "error": str(exc),
                                  "exit_code": code}, indent=2, sort_keys=True))
            raise
    return wrapper
