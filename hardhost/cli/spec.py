"""`hardhost spec`: the image spec's keys, from their one declaration, as a JSON Schema for
editors and CI or as the Markdown table of the README."""

from __future__ import annotations

import argparse
import json

from hardhost.cli.common import Commands, add_command


def register(commands: Commands) -> None:
    spec = add_command(
        commands, "spec", help="print the image spec's JSON Schema or its table of keys",
        description="Print what an image spec may hold, from the declarations the builder "
                    "parses specs with: --schema, a JSON Schema (draft 2020-12) of the TOML "
                    "file, with every key's type, allowed values, bounds, default and "
                    "description, and no key that is not declared (editors and CI can check "
                    "a spec with it; the build still checks more, such as a compression "
                    "that suits the filesystem); --table, the README's Markdown table of "
                    "keys.")
    what = spec.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", action="store_true",
                      help="print the JSON Schema of a spec (TOML read as JSON)")
    what.add_argument("--table", action="store_true",
                      help="print the Markdown table of keys: key, type, default, meaning")
    spec.set_defaults(func=_cmd_spec)


def _cmd_spec(args: argparse.Namespace) -> int:
    from hardhost.builder.schema import json_schema, markdown_table

    if args.schema:
        print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    else:
        print(markdown_table(), end="")
    return 0
