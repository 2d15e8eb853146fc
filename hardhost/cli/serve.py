"""`hardhost serve`: the continuous verifier."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hardhost.cli.common import Commands, add_command
from hardhost.core.errors import OK, TRUST, USAGE, UsageError

if TYPE_CHECKING:
    from hardhost.verifier.service.config import ServiceConfig
    from hardhost.verifier.service.serve import Running, Service


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
    serve.add_argument("--login-link", action="store_true",
                       help="print a link that signs a browser in to the dashboard for 12 "
                            "hours; the link itself expires in 5 minutes and does not carry "
                            "the token")
    serve.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from hardhost.verifier.service import config as service_config
    from hardhost.verifier.service.serve import prepare, serve

    if args.example_config:
        sys.stdout.write(service_config.example())
        return OK.code
    if args.config is None:
        raise UsageError("serve: name the CONFIG (hardhost serve --example-config prints one)")
    config = service_config.load_config(args.config)
    if args.login_link:
        return _print_login_link(config)
    service = prepare(config)
    if args.check:
        print(f"{args.config}: the config and the files it names are good")
        return OK.code
    stop = threading.Event()
    worker = threading.Thread(target=serve, args=(service, stop, _faces(service)),
                              name="serve")
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


def _faces(service: Service) -> Callable[[Running], Callable[[], None]] | None:
    """The HTTP API, metrics and dashboard, when the config gives a token: its socket bound
    now, so that an address in use stops the service before it starts."""
    from hardhost.faces import http_server

    token, http = service.token, service.config.http
    if token is None:
        return None
    sock = http_server.listen(http.host, http.port)

    def start(running: Running) -> Callable[[], None]:
        from hardhost.faces.service_api import make_app

        app = make_app(running.store, running.actions, running.metrics.render, token,
                       secure_cookie=bool(http.tls_cert))
        return http_server.start(app, sock, tls_cert=service.config.optional_path(
            http.tls_cert), tls_key=service.config.optional_path(http.tls_key))

    return start


def _print_login_link(config: ServiceConfig) -> int:
    from hardhost.faces.service_api import login_query
    from hardhost.verifier.service.config import read_secret

    http = config.http
    if not http.token_file:
        raise UsageError(f"{config.source}: http.token_file is not set: the service has no "
                         "dashboard")
    token = read_secret(config.path(http.token_file), "API token")
    scheme = "https" if http.tls_cert else "http"
    print(f"{scheme}://{http.listen}/login?{login_query(token)}")
    return OK.code
