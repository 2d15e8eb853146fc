"""Stage caches under ~/.cache/hardhost, keyed by the stage's inputs and nothing else."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

# Bump when a stage's code changes what it produces, so old entries stop matching.
BOOTSTRAP_VERSION = 1


def cache_root() -> Path:
    override = os.environ.get("HARDHOST_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hardhost"


def stage_key(stage: str, inputs: Mapping[str, object]) -> str:
    """A stable digest of `inputs`; the order of mapping keys does not matter."""
    canonical = json.dumps({"stage": stage, "inputs": inputs}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
