"""`hardhost serve`: the continuous verifier."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from hardhost.cli.common import Commands, add_command
from hardhost.core.errors import OK, TRUST, USAGE, UsageError


def register(commands: Commands) -> None:
    serve = add_command(
        commands, "serve", help="attest the fleet continuously, reset drift, send alerts",
        description="Attest every host of the config's inventory once per interval (each "
                    "on a phase of its own within the jitter, so hosts are not all contacted "
                    "at once), with the code of attest and fleet, and record each verdict, "
                    "each host's state and each drift's remediation time in the config's "
                    "SQLite database (hardhost history --db reads it). When the remediation "
                    "policy allows, a drifted host is reset by reboot and attested again, "
                    "within a fleet-wide budget (resets at once, resets per hour); a host "
                    "that failed trust is never reset. Each change of a host's state (to "
                    "drift, unreachable, trust, error, pass, or remediated: a pass after a "
                    "reset) is logged, sent to syslog, and POSTed as JSON to each webhook, "
                    "signed with HMAC-SHA256 in X-Hub-Signature-256, and tried again with "
                    "backoff until the receiver takes it, across restarts. The config is "
                    f"checked first: a malformed one is exit {USAGE.code} (FILE: KEY: what "
                    f"is wrong), a manifest that does not verify exit {TRUST.code}. SIGTERM "
                    "or Ctrl-C lets the checks and resets in flight finish, then exits "
                    f"{OK.code}; a restart resumes from the database.")
    serve.add_argument("config", metavar="CONFIG", type=Path, nargs="?",
                       help="the service's TOML config (start from --example-config)")
    serve.add_argument("--example-config", action="store_true",
                       help="print a complete, commented config and exit")
    serve.add_argument("--check", action="store_true",
                       help="read and check the config and every file it names, then exit")
    serve.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from hardhost.verifier.service import config as service_config
    from hardhost.verifier.service.serve import prepare, serve

    if args.example_config:
        sys.stdout.write(service_config.example())
        return OK.code
    if args.config is None:
        raise UsageError("serve: name the CONFIG (hardhost serve --example-config prints one)")
    service = prepare(service_config.load_config(args.config))
    if args.check:
        print(f"{args.config}: the config and the files it names are good")
        return OK.code
    stop = threading.Event()
    worker = threading.Thread(target=serve, args=(service, stop), name="serve")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=1)
    except KeyboardInterrupt:  # SIGTERM arrives as this too (main)
        print("hardhost: stopping; the checks and resets in flight finish first",
              file=sys.stderr, flush=True)
        stop.set()
        worker.join()
    return OK.code
