"""The changing state of one build, kept apart from the immutable spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.advisories.gate import Gate
from hardhost.builder.spec import Spec
from hardhost.core.log import StepTiming


@dataclass
class BuildContext:
    spec: Spec
    workdir: Path  # scratch space, removed after the build
    staging: Path  # the output folder being assembled, renamed into place when complete
    cache_dir: Path
    signing_key: Ed25519PrivateKey
    # From $SOURCE_DATE_EPOCH; 0 until the bootstrap stage derives it from the package set.
    source_date_epoch: int
    reuse: bool = True  # take stage outputs from the cache when their key matches
    refresh: bool = False  # run mmdebstrap even when its tree is cached, and replace it
    qcow2: bool = False  # write the disk as disk.qcow2 instead of the raw disk.img
    gate: Gate | None = None  # the known-vulnerability gate, run before the manifest is signed
    keys: dict[str, str] = field(default_factory=dict)  # stage name -> input key
    kernel_release: str = ""
    root_hash: str = ""
    salt: str = ""
    uuid: str = ""
    cmdline: str = ""
    subjects: dict[str, str] = field(default_factory=dict)  # artifact name -> sha256
    pcrs: dict[int, str] = field(default_factory=dict)  # predicted PCR -> sha256 bank value
    timings: list[StepTiming] = field(default_factory=list)

    @property
    def tree(self) -> Path:
        return self.workdir / "tree"
