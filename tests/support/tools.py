"""Debian tools a test checks against, found or named with their package."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def need(tool: str, package: str) -> str:
    """The path of `tool`, or a failure naming the Debian package that provides it."""
    found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        pytest.fail(f"{tool} not found: apt-get install {package}")
    return found



def skip_module_unless_root_with(tools: tuple[str, ...], packages: str,
                                 files: tuple[Path, ...] = ()) -> None:
    """Skip the calling test module unless it runs as root with `tools` and `files` (a
    system test on a machine make deps did not set up); the reason names what to install."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [str(path) for path in files if not path.exists()]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(tools)} (missing: "
                    f"{', '.join(missing) or 'root'}); apt-get install {packages}",
                    allow_module_level=True)
