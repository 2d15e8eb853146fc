"""Help text rendered from declarations: the exit codes of every `--help`, and the README's
exit-code table, both from `hardhost.core.errors.EXIT_CODES`."""

from __future__ import annotations

import textwrap

from hardhost.core.errors import EXIT_CODES

_WIDTH = 79  # an 80-column terminal; argparse wraps the rest to the terminal itself
_CODE_COLUMN = 7  # "  130  "


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def markdown_cell(text: str) -> str:
    """`text` as one cell of a Markdown table: a `|` would end the cell."""
    return text.replace("|", "\\|")


def exit_codes_epilog() -> str:
    """The `exit codes:` block shown at the end of every `--help`."""
    lines = ["exit codes:"]
    for exit_code in EXIT_CODES:
        lead = f"  {exit_code.code:<{_CODE_COLUMN - 2}}"
        lines.append(textwrap.fill(_plain(exit_code.meaning), width=_WIDTH,
                                   initial_indent=lead, subsequent_indent=" " * _CODE_COLUMN))
    return "\n".join(lines) + "\n"


def exit_codes_markdown() -> str:
    """The README's exit-code table."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {e.code} | {e.name} | {markdown_cell(e.meaning)} |" for e in EXIT_CODES]
    return "\n".join(rows) + "\n"


EPILOG = exit_codes_epilog()
