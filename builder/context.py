"""The changing state of one build, kept apart from the immutable spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from builder.log import StepTiming
from builder.spec import Spec


@dataclass
class BuildContext:
    spec: Spec
    workdir: Path  # scratch space, removed after the build
    staging: Path  # the output folder being assembled, renamed into place when complete
    cache_dir: Path
    source_date_epoch: int
    bootstrap_key: str = ""
    kernel_release: str = ""
    root_hash: str = ""
    salt: str = ""
    uuid: str = ""
    cmdline: str = ""
    timings: list[StepTiming] = field(default_factory=list)

    @property
    def tree(self) -> Path:
        return self.workdir / "tree"
