"""The README's tables of exit codes and spec keys are rendered from their one declaration;
these tests keep the README in step. After an intended change, rewrite them with
HARDHOST_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hardhost.builder.schema import markdown_table
from hardhost.cli import scan
from hardhost.cli.help import exit_codes_markdown

README = Path(__file__).resolve().parent.parent / "README.md"

TABLES: dict[str, Callable[[], str]] = {
    "exit codes": exit_codes_markdown,
    "spec keys": markdown_table,
    "scan exit codes": scan.exit_codes_markdown,
}


def _section(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {name}; [^\n]*-->\n)(.*?)(<!-- end: {name} -->)",
                      re.DOTALL)


@pytest.mark.parametrize("name", TABLES)
def test_readme_table_is_the_declaration(name: str) -> None:
    text = README.read_text()
    found = _section(name).search(text)
    assert found, f"README.md: no generated table of {name} (its markers are missing)"
    rendered = TABLES[name]()
    if os.environ.get("HARDHOST_UPDATE_GOLDEN"):
        text = text[:found.start(2)] + rendered + text[found.end(2):]
        README.write_text(text)
        found = _section(name).search(text)
        assert found
    assert found.group(2) == rendered


def test_a_changed_help_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check compares whole rows: a key whose help or default changes without the README
    # makes the table differ.
    import dataclasses

    from hardhost.builder import spec

    before = markdown_table()
    field = next(f for f in dataclasses.fields(spec.Prune) if f.name == "hwdb")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "help": "something else"})
    assert markdown_table() != before
    monkeypatch.setattr(field, "default", False)
    assert "| `prune.hwdb` | boolean | `false` | something else |" in markdown_table()
