"""Debian tools a test checks against, found or named with their package."""

from __future__ import annotations

import shutil

import pytest


def need(tool: str, package: str) -> str:
    """The path of `tool`, or a failure naming the Debian package that provides it."""
    found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        pytest.fail(f"{tool} not found: apt-get install {package}")
    return found

