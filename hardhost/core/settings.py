"""Declared settings: a TOML file parsed into frozen dataclasses, validated at the edge.

A setting is declared once, as a dataclass field whose metadata (`declare`) carries its help
text and, where the TOML value needs more than a type check, its own parser. `build` walks
the declarations: unknown keys, required keys, types and parsers, each failure one
`SpecError` (`FILE: KEY: what is wrong`). The image spec and the verifier service's config
are both read this way.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hardhost.core.errors import SpecError
from hardhost.core.outputs import printable

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Parts of one dotted TOML key: tomllib spends memory quadratic in them (a 400 KB key of
# 200,000 parts exhausts it), and no declared key has more than a sysctl name's few.
MAX_KEY_PARTS = 32
# A match starts only where a key part can (not inside a word or after a quote), and each
# part is atomic: the scan stays linear in the text, whatever the text.
_DOTTED_KEY_RE = re.compile(
    r"""(?<![A-Za-z0-9_\-"'])"""
    r"""(?:(?>[A-Za-z0-9_\-]+|"(?:[^"\\\n]|\\.)*+"|'[^'\n]*+')[ \t]*+\.[ \t]*+)"""
    rf"{{{MAX_KEY_PARTS}}}")
# Fields of a declared dataclass that are not keys of the file (where it was read from).
_NOT_KEYS = frozenset({"source"})


class Invalid(Exception):
    """Raised by a field parser; turned into a SpecError naming the key."""


def declare(text: str, parse: Callable[[Any], Any] | None = None, *,
            schema: Mapping[str, Any] | None = None, shown: str = "") -> dict[str, Any]:
    """A setting's declaration beside its type and default: `text` is its help (Markdown:
    `code` spans), `parse` its own parser, `schema` what the JSON Schema says beyond the type
    (bounds, a pattern; with "type", the whole schema of a TOML value that the field's type
    does not show), `shown` its default as the README gives it, where the value itself is
    too long or depends on another setting."""
    return {"help": text, "parse": parse, "schema": dict(schema or {}), "shown": shown}


def show(value: Any) -> str:
    """A value for a one-line error: quoted, with control characters escaped, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:56]}...{text[-1]}"


def tname(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def text(value: Any, what: str = "a string") -> str:
    """A string that is exactly what it says: no control characters (a newline would split
    the line it is rendered into), no spaces around it. Never stripped into something else."""
    if not isinstance(value, str):
        raise Invalid(f"expected {what}, got {tname(value)}")
    if CONTROL_RE.search(value):
        raise Invalid(f"{show(value)}: control characters (a newline, a tab, an escape) "
                      "are not allowed")
    if value != value.strip():
        raise Invalid(f"{show(value)}: remove the spaces around the value")
    return value


def str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected a list of strings, got {tname(value)}")
    return list(value)


def without_later_defaults(section: Any, later: tuple[str, ...]) -> dict[str, Any]:
    """`section` (a declared dataclass) as a dict, without those of the keys in `later` that
    hold their defaults. Keys added to a section after files using it were signed stay out
    of its canonical form while unset, so that those files keep their digest."""
    data = dataclasses.asdict(section)
    defaults = type(section)()
    for name in later:
        if getattr(section, name) == getattr(defaults, name):
            data.pop(name)
    return data


def parse_toml(source: str, path: str) -> dict[str, Any]:
    """The table of TOML `source` (read from `path`, which names the file in errors)."""
    if _DOTTED_KEY_RE.search(source):
        raise SpecError(path, "TOML", f"a dotted key of more than {MAX_KEY_PARTS} parts")
    try:
        return tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        # tomllib ends its message with "(at line L, column C)": lead with the line instead.
        message = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if where:
            reason = message[: where.start()].strip()
            raise SpecError(path, f"line {where.group(1)}", f"invalid TOML: {reason}") from None
        raise SpecError(path, "TOML", f"invalid TOML: {message}") from None
    except RecursionError:
        raise SpecError(path, "TOML", "arrays or tables nested too deeply") from None
    except ValueError as exc:
        # tomllib lets int()'s own refusal through: an integer of more than 4300 digits.
        raise SpecError(path, "TOML", f"invalid TOML: {str(exc)[:80]}") from None


def key_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of a declared dataclass that are keys of the file."""
    return [f for f in dataclasses.fields(cls) if f.name not in _NOT_KEYS]


def build(cls: type[Any], table: dict[str, Any], path: str, prefix: str = "") -> Any:
    """An instance of the declared dataclass `cls` from a TOML `table`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in key_fields(cls)}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise SpecError(path, printable(f"{prefix}{key}"[:80]),
                            f"unknown key (known: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in table:
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            if required:
                raise SpecError(path, key, "is required")
            continue
        parse = f.metadata.get("parse")
        if parse is not None:
            try:
                kwargs[name] = parse(table[name])
            except Invalid as exc:
                raise SpecError(path, key, str(exc)) from None
        else:
            kwargs[name] = _convert(hints[name], table[name], key, path)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SpecError(path, key, f"expected a table, got {tname(value)}")
        return build(typing.cast(type[Any], hint), value, path, f"{key}.")
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, key, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [m.value for m in hint]
        if value not in allowed:
            raise SpecError(path, key, f"{show(value)} is not one of {', '.join(allowed)}")
        return hint(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(path, key, f"expected true or false, got {tname(value)}")
        return value
    # A field without a parser of its own still gets no control characters or spaces.
    try:
        if hint is str:
            return text(value)
        if origin is tuple:
            return tuple(text(item) for item in str_list(value))
    except Invalid as exc:
        raise SpecError(path, key, str(exc)) from None
    raise TypeError(f"field {key} has no parser for {hint!r}")  # a bug, not user input
