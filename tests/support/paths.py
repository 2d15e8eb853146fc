"""Where the repository and its image specs are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
IMAGES = REPO / "images"
