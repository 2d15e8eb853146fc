"""Stage caches under ~/.cache/hardhost, keyed by the stage's inputs and nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

# Bump when a stage's code changes what it produces, so old entries stop matching.
BOOTSTRAP_VERSION = 2


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


class StageCache:
    """Finished outputs of one stage, one folder per key, the least recently used evicted.

    An entry appears by rename only once all its files are written, so an interrupted
    build never leaves a half entry that a later build would trust.
    """

    def __init__(self, cache_dir: Path, stage: str, *, keep: int) -> None:
        self.root = cache_dir / stage
        self.keep = keep

    def lookup(self, key: str) -> Path | None:
        entry = self.root / key
        if not entry.is_dir():
            return None
        os.utime(entry)  # recently used: evicted last
        return entry

    def store(self, key: str, files: Mapping[str, Path]) -> None:
        """Copy `files` (name in the entry -> source) into the entry for `key`."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".partial",
                                        dir=self.root))
        try:
            for name, source in files.items():
                shutil.copyfile(source, partial / name)
            partial.rename(self.root / key)
        except OSError:
            if not (self.root / key).is_dir():
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self._evict()

    def _evict(self) -> None:
        entries = sorted((p for p in self.root.iterdir() if p.is_dir()
                          and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
