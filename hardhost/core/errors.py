"""The narrow error hierarchy, and the exit codes, declared once.

`EXIT_CODES` is the one declaration of what each exit code means: the error classes take
their code from it, and the epilog of every `--help` and the README's table are rendered from
it. `main()` catches `HardhostError` and prints its message as one line; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    """One exit code of `hardhost`. `meaning` is Markdown: `code` spans stay in the README and
    lose their backticks in `--help`."""

    code: int
    name: str
    meaning: str


OK = ExitCode(0, "ok", "success")
FAILED = ExitCode(1, "failed", "a build or command failed (one line says which and why), or "
                  "attestation found drift")
USAGE = ExitCode(2, "usage", "bad usage, a malformed spec or input (`FILE: KEY: what is "
                 "wrong`), a missing file or a typo in a path, or an output that cannot be "
                 "written (checked before the work starts)")
UNREACHABLE = ExitCode(3, "unreachable", "a host or VM did not answer in time (`vm start` "
                       "names the serial log), or a host refused the reboot of `--reset`")
TRUST = ExitCode(4, "trust", "trust failure: an unknown, changed or revoked host key, a "
                 "refused credential, or a manifest with a bad signature, an untrusted key, a "
                 "changed or missing artifact, or outside its validity window")
INTERRUPTED = ExitCode(130, "interrupted", "interrupted (Ctrl-C or SIGTERM); temporary output "
                       "removed, and `fleet` writes the verdicts of the hosts it checked")

EXIT_CODES: tuple[ExitCode, ...] = (OK, FAILED, USAGE, UNREACHABLE, TRUST, INTERRUPTED)


class HardhostError(Exception):
    """A failure the user can act on. The message is one line that names what and where."""

    exit_code = FAILED.code


class UsageError(HardhostError):
    """Bad command-line usage or a malformed spec."""

    exit_code = USAGE.code


class SpecError(UsageError):
    """A spec or config file that does not parse or validate: `FILE: KEY: what is wrong`."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class BuildError(HardhostError):
    """A build stage failed; nothing was written to the output."""

    exit_code = FAILED.code


class ToolMissing(HardhostError):
    """A required system tool is not installed."""

    exit_code = FAILED.code

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"{tool}: not found. Fix with: apt-get install {package}")
        self.tool = tool
        self.package = package


class CommandFailed(HardhostError):
    """A subprocess exited non-zero. Carries the command and the tail of its error output."""

    exit_code = FAILED.code

    def __init__(self, argv: list[str], returncode: int, detail: str, stderr: str = "") -> None:
        summary = detail or f"exit status {returncode}"
        super().__init__(f"{argv[0]} failed (exit {returncode}): {summary}")
        self.argv = argv
        self.returncode = returncode
        self.detail = detail
        self.stderr = stderr


class Unreachable(HardhostError):
    """A host that does not answer in time or refuses a reboot, or a VM that never reached SSH."""

    exit_code = UNREACHABLE.code


class TrustError(HardhostError):
    """An unknown or changed host key, a refused credential, or an untrusted manifest."""

    exit_code = TRUST.code
