"""hardhost: build immutable, hardened container-host images and attest them over SSH.

The parts, each importing only those below it (import-linter keeps it so):
cli > faces > vm > builder | verifier > profiles > image > core.
"""

from importlib import metadata

try:
    __version__ = metadata.version("hardhost")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
