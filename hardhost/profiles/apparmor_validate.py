"""Validation of an AppArmor profile by the real consumer: `apparmor_parser`."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hardhost.core.errors import CommandFailed
from hardhost.core.run import run
from hardhost.profiles.apparmor_rules import ProfileError


def _parser_reason(stderr: str, source: Path) -> str:
    """apparmor_parser's complaint without its notes on the cache and the temporary file."""
    lines = []
    for line in stderr.splitlines():
        if not line.strip() or line.startswith("Cache read/write disabled"):
            continue  # printed on every run on a host whose kernel lacks AppArmor
        line = re.sub(rf"^AppArmor parser error for {re.escape(str(source))} in profile \S+ "
                      r"at line (\d+):", r"line \1:", line.strip())
        lines.append(line.replace(str(source), "the profile"))
    return " | ".join(lines[-3:]) or "no reason given"


def validate(profile_text: str) -> None:
    """Compile the profile with `apparmor_parser -Q -K` (no kernel load, no cache), or raise.

    Includes resolve against the host's /etc/apparmor.d.
    """
    with tempfile.TemporaryDirectory(prefix="hardhost-apparmor-") as scratch:
        source = Path(scratch) / "profile"
        source.write_text(profile_text, encoding="utf-8")
        try:
            run(["apparmor_parser", "-Q", "-K", source], timeout=120)
        except CommandFailed as exc:
            raise ProfileError("apparmor_parser refused the profile: "
                               f"{_parser_reason(exc.stderr, source)}") from None
