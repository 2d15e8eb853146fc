"""The `hardhost` command line: the top parser, and `main()`, where every failure the user can
act on becomes one line and an exit code (`hardhost.core.errors.EXIT_CODES`).

Each command group registers its own subcommands and handlers, in its own module.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from hardhost import __version__
from hardhost.cli import (
    attest,
    build,
    evidence,
    fleet,
    image,
    manifest,
    profile,
    scan,
    serve,
    spec,
    terraform,
    update,
    vm,
)
from hardhost.cli.common import Commands, HelpFormatter
from hardhost.cli.help import EPILOG
from hardhost.core.errors import FAILED, INTERRUPTED, HardhostError
from hardhost.core.log import setup_logging
from hardhost.core.outputs import printable

log = logging.getLogger("hardhost")

# In the order `hardhost --help` lists them.
_GROUPS: tuple[Callable[[Commands], None], ...] = (
    build.register, manifest.register, vm.register, evidence.register, profile.register,
    attest.register, update.register, fleet.register, serve.register, terraform.register,
    spec.register, scan.register, image.register,
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hardhost",
        description="Build immutable, hardened container-host images (a read-only erofs or "
                    "squashfs root under dm-verity, /etc and /var reset at every boot) as A/B "
                    "disk images, boot them under qemu, attest them over SSH and with a TPM "
                    "quote, and update them to new images kept only when the new boot "
                    "passes attestation; watch a fleet continuously and reset what drifts; "
                    "match images against Debian's security data; and sign the container "
                    "images podman hosts may run.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    top.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    top.add_argument("--version", action="version", version=f"hardhost {__version__}",
                     help="print hardhost's version and exit")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _GROUPS:
        register(commands)
    return top


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C, so `finally` blocks remove temporary output.
    raise KeyboardInterrupt


def _two_words(argv: Sequence[str]) -> list[str]:
    """`fleet update ...` is the `fleet-update` command: `fleet` itself takes an inventory
    where a subcommand would go (an inventory named `update` is given as `./update`)."""
    words = list(argv)
    first = next((i for i, word in enumerate(words) if not word.startswith("-")), None)
    if first is not None and words[first:first + 2] == ["fleet", "update"]:
        words[first:first + 2] = ["fleet-update"]
    return words


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(_two_words(sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except HardhostError as exc:
        print(f"hardhost: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hardhost: interrupted; temporary output removed", file=sys.stderr)
        return INTERRUPTED.code
    except Exception as exc:
        # A bug still gets one line and exit 1; its traceback is for -v and a bug report.
        log.debug("internal error", exc_info=True)
        print(f"hardhost: internal error: {type(exc).__name__}: {printable(str(exc))[:300]} "
              "(run with -v for the traceback, and report it)", file=sys.stderr)
        return FAILED.code


if __name__ == "__main__":
    sys.exit(main())
