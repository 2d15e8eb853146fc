"""The spec's declarations, rendered: a JSON Schema (draft 2020-12) for editors and CI, and the
README's key table. Both read `hardhost.builder.spec`'s dataclass fields (type, default,
help, schema extras), the same declarations the parser uses: nothing here restates a key."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hardhost.builder.spec import Spec
from hardhost.core.settings import key_fields

DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Key:
    """One key of the spec file, as its declaration gives it."""

    name: str  # dotted: `image.filesystem`
    help: str  # Markdown, as the JSON Schema's description too
    schema: dict[str, Any]  # the JSON Schema of its value, without description or default
    required: bool
    default: Any  # as JSON (a list for a tuple, an enum's value); None when it has none
    shown: str  # the default as the README gives it, when the value itself would not do


def keys(cls: type[Any] = Spec, prefix: str = "") -> Iterator[Key]:
    """Every key of the spec, sections first-to-last as declared, nested keys in order."""
    hints = typing.get_type_hints(cls)
    for f in key_fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from keys(typing.cast(type[Any], hint), f"{prefix}{f.name}.")
            continue
        schema = _value_schema(hint, f.metadata.get("schema", {}))
        default = None if _required(f) else _json(f.default, schema)
        yield Key(f"{prefix}{f.name}", f.metadata["help"], schema, _required(f), default,
                  f.metadata.get("shown", ""))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (as TOML parses it): every key with its type, enum,
    bounds, default and description, and no key that is not declared."""
    schema = _object_schema(Spec)
    return {"$schema": DIALECT, "title": "hardhost image spec", **schema}


def markdown_table() -> str:
    """The README's table of spec keys: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key in keys():
        rows.append(f"| `{key.name}` | {_cell(_type_text(key.schema))} | "
                    f"{_cell(_default_text(key))} | {_cell(key.help)} |")
    return "\n".join(rows) + "\n"


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _object_schema(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for f in key_fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            properties[f.name] = _object_schema(typing.cast(type[Any], hint))
            continue
        schema = _value_schema(hint, f.metadata.get("schema", {}))
        properties[f.name] = {"description": f.metadata["help"], **schema}
        if not _required(f) and f.default is not None:
            properties[f.name]["default"] = _json(f.default, schema)
    required = [f.name for f in key_fields(cls) if _required(f)]
    return {"type": "object", "description": _doc(cls), "properties": properties,
            **({"required": required} if required else {}), "additionalProperties": False}


def _value_schema(hint: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The schema of a value of type `hint`, with the declaration's `extra` over it. An
    `extra` with a "type" is the whole schema: the TOML value has another shape than the
    field (a [sysctl] table becomes sorted pairs)."""
    if "type" in extra:
        return dict(extra)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    base: dict[str, Any]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        base = {"type": "string", "enum": [m.value for m in hint]}
    elif hint is bool:
        base = {"type": "boolean"}
    elif hint is int:
        base = {"type": "integer"}
    elif hint is str:
        base = {"type": "string"}
    elif typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        base = {"type": "array", "items": {"type": "string"}}
    else:
        raise TypeError(f"spec field of type {hint!r} has no schema")  # a bug, not input
    return {**base, **extra}


def _json(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return dict(value) if schema.get("type") == "object" else list(value)
    return value


def _doc(cls: type[Any]) -> str:
    # dataclass() writes a signature into a class without a docstring; every section has one.
    return " ".join((cls.__doc__ or "").split())


def _type_text(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema["type"]
    if kind == "array":
        text = "list of strings"
        if schema.get("minItems"):
            text += f", at least {schema['minItems']}"
        return text
    if kind == "object":
        return "table"
    if kind == "integer" and "minimum" in schema:
        return f"integer, {schema['minimum']} to {schema['maximum']}"
    return str(kind)


def _default_text(key: Key) -> str:
    if key.required:
        return "required"
    if key.shown:
        return key.shown
    value = key.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def _cell(text: str) -> str:
    """`text` as one cell of a Markdown table: a `|` would end the cell."""
    return text.replace("|", "\\|")
