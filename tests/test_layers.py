"""The house's import rules, as import-linter checks them in the lint step: the real package
keeps them, and a copy with one wrong import breaks them, naming the import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the `hardhost` package found first on PYTHONPATH=`root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(command), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_package(destination: Path) -> Path:
    shutil.copytree(REPO / "hardhost", destination / "hardhost",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_the_package_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(copy_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(("module", "wrong", "contract"), [
    ("hardhost/verifier/evidence.py", "from hardhost.builder import spec",
     "every import points down"),
    ("hardhost/core/run.py", "from hardhost.image import layout", "every import points down"),
    ("hardhost/builder/cache.py", "from hardhost.verifier import transport",
     "every import points down"),
    ("hardhost/vm/qmp.py", "from hardhost.builder import pcr", "the VM harness knows no builder"),
    ("hardhost/faces/terraform.py", "from hardhost.verifier.transport import Target",
     "faces use only the verifier's public API"),
    ("hardhost/verifier/reset.py", "from hardhost.profiles import trace",
     "the verifier knows no profiles"),
    # The advisories sit beside the profiles: below the builder, never beside or above it.
    ("hardhost/advisories/scan.py", "from hardhost.builder import sbom",
     "every import points down"),
    ("hardhost/advisories/feed.py", "from hardhost.profiles import trace",
     "every import points down"),
])
def test_a_wrong_import_breaks_its_contract(tmp_path: Path, module: str, wrong: str,
                                            contract: str) -> None:
    root = copy_package(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{wrong}  # deliberately wrong\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
