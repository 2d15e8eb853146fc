"""The spec's JSON Schema, rendered from the same declarations the parser uses: checked by a
real JSON Schema validator (jsonschema, draft 2020-12) against the shipped specs, and against
the parser itself on every key."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hardhost.builder.schema import Key, json_schema, keys, markdown_table
from hardhost.builder.spec import parse_spec
from hardhost.core.errors import SpecError

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "images").glob("*.toml"))

MINIMAL: dict[str, Any] = {
    "name": "t",
    "packages": {"include": ["systemd", "openssh-server"]},
    "ssh": {"permit_root_login": True},
}


def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(document: dict[str, Any]) -> list[str]:
    """Where the schema refuses `document`: the dotted path of each error."""
    return sorted(".".join(map(str, e.absolute_path)) for e in validator().iter_errors(document))


def toml(document: dict[str, Any]) -> str:
    """`document` as TOML: top-level values, then one table per section. JSON's strings,
    numbers, booleans and arrays of strings are TOML's too."""
    head = [f"{k} = {json.dumps(v)}" for k, v in document.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items())
              for k, v in document.items() if isinstance(v, dict)]
    return "\n".join(head) + "\n" + "\n".join(tables) + "\n"


def with_key(key: Key, value: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(MINIMAL))  # a deep copy
    *section, name = key.name.split(".")
    target = document
    for part in section:
        target = target.setdefault(part, {})
    target[name] = value
    return document


def test_the_schema_is_draft_2020_12() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator()  # check_schema raises on a schema the draft's meta-schema refuses


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_shipped_specs_satisfy_the_schema(spec: Path) -> None:
    document = tomllib.loads(spec.read_text())
    assert errors(document) == []
    parse_spec(spec.read_text(), str(spec))  # and the parser agrees


def test_the_shipped_specs_are_all_checked() -> None:
    assert [p.name for p in SPECS] == ["container-host.toml", "minimal.toml", "podman-host.toml"]


def test_every_section_and_the_top_refuse_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    sections = [v for v in schema["properties"].values() if v.get("type") == "object"
                and "properties" in v]
    assert len(sections) == 15
    assert all(s["additionalProperties"] is False for s in sections)
    assert errors({**MINIMAL, "colour": "blue"}) == [""]
    assert errors({**MINIMAL, "ssh": {"permit_root_login": True, "permit_passwords": True}}) \
        == ["ssh"]


def test_required_keys_are_required() -> None:
    assert errors({"packages": MINIMAL["packages"]}) == [""]
    assert errors({"name": "t", "packages": {}}) == ["packages"]
    assert errors({**MINIMAL, "packages": {"include": []}}) == ["packages.include"]


# A value of the wrong type for each kind of key, as the schema describes it.
WRONG = {"string": 1, "boolean": "yes", "integer": "1", "array": "x", "object": 1}


@pytest.mark.parametrize("key", list(keys()), ids=lambda k: k.name)
def test_schema_and_parser_both_refuse_a_wrong_type(key: Key) -> None:
    value = "no-such-choice" if "enum" in key.schema else WRONG[key.schema["type"]]
    document = with_key(key, value)
    assert errors(document) == [key.name]
    with pytest.raises(SpecError) as info:
        parse_spec(toml(document), "spec.toml")
    assert info.value.key == key.name


@pytest.mark.parametrize("key", [k for k in keys() if not k.required], ids=lambda k: k.name)
def test_each_default_is_what_the_parser_fills_in(key: Key) -> None:
    spec: Any = parse_spec(toml(MINIMAL), "spec.toml")
    for part in key.name.split("."):
        spec = getattr(spec, part)
    if key.name == "image.compression":
        assert spec is None and key.default is None  # chosen by the filesystem
        return
    if key.name == "ssh.permit_root_login":
        assert key.default is False  # MINIMAL sets it
        return
    parsed = dict(spec) if key.schema["type"] == "object" else spec
    assert json.loads(json.dumps(parsed)) == key.default
    assert errors(with_key(key, key.default)) == []


def test_bounds_and_patterns_follow_the_parser() -> None:
    assert errors(with_key(_key("manifest.validity_days"), 3651)) == ["manifest.validity_days"]
    assert errors(with_key(_key("manifest.validity_days"), 3650)) == []
    assert errors(with_key(_key("name"), "Bad Name")) == ["name"]
    assert errors(with_key(_key("name"), "good\n")) == ["name"]  # no trailing newline
    assert errors(with_key(_key("userns.remap_user"), "root")) == ["userns.remap_user"]
    assert errors(with_key(_key("packages.include"), ["systemd", "systemd"])) \
        == ["packages.include"]


def test_sysctl_tables_flat_or_nested() -> None:
    sysctl = {"kernel.sysrq": 0, "net": {"ipv4": {"ip_local_port_range": "32768 60999"}}}
    assert errors({**MINIMAL, "sysctl": sysctl}) == []
    assert errors({**MINIMAL, "sysctl": {"kernel.sysrq": True}}) == ["sysctl.kernel.sysrq"]
    # A nested table is one of anyOf's alternatives: the error is where they part.
    assert errors({**MINIMAL, "sysctl": {"net": {"ipv4": {"x": 1.5}}}}) == ["sysctl.net"]


def _key(name: str) -> Key:
    return next(k for k in keys() if k.name == name)


def hardhost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_the_spec_command_prints_the_schema_and_the_table() -> None:
    schema = hardhost("spec", "--schema")
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout) == json_schema()
    table = hardhost("spec", "--table")
    assert table.returncode == 0, table.stderr
    assert table.stdout == markdown_table()
    neither = hardhost("spec")
    assert neither.returncode == 2
    assert "one of the arguments --schema --table is required" in neither.stderr
