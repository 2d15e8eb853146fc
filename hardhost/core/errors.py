"""The narrow error hierarchy. Each class carries the exit code documented in the README.

`main()` catches `HardhostError` and prints its message as one line; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class HardhostError(Exception):
    """A failure the user can act on. The message is one line that names what and where."""

    exit_code = 1


class UsageError(HardhostError):
    """Bad command-line usage or a malformed spec."""

    exit_code = 2


class SpecError(UsageError):
    """A spec that does not parse or validate: `FILE: KEY: what is wrong`."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class BuildError(HardhostError):
    """A build stage failed; nothing was written to the output."""

    exit_code = 1


class ToolMissing(HardhostError):
    """A required system tool is not installed."""

    exit_code = 1

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"{tool}: not found. Fix with: apt-get install {package}")
        self.tool = tool
        self.package = package


class CommandFailed(HardhostError):
    """A subprocess exited non-zero. Carries the command and the tail of its error output."""

    exit_code = 1

    def __init__(self, argv: list[str], returncode: int, detail: str, stderr: str = "") -> None:
        summary = detail or f"exit status {returncode}"
        super().__init__(f"{argv[0]} failed (exit {returncode}): {summary}")
        self.argv = argv
        self.returncode = returncode
        self.detail = detail
        self.stderr = stderr


class Unreachable(HardhostError):
    """A host that does not answer in time or refuses a reboot, or a VM that never reached SSH."""

    exit_code = 3


class TrustError(HardhostError):
    """An unknown or changed host key, a refused credential, or an untrusted manifest."""

    exit_code = 4
