"""Fuzzing the readers of untrusted input: the evidence parser, the manifest reader, the
spec loader and the trace loader. Random and mutated inputs must each parse, or raise the
project's own error: never another exception, which would reach the user as a traceback."""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardhost.builder.spec import load_spec, parse_spec
from hardhost.core.errors import HardhostError
from hardhost.image.manifest import from_statement
from hardhost.image.signing import verify
from hardhost.profiles.trace import from_json
from hardhost.verifier.evidence import SECTIONS, parse
from tests.support.evidence import fake_output
from tests.support.paths import IMAGES

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DATA = Path(__file__).parent / "data"


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """`seed` with bytes flipped, cut, duplicated or spliced: near-valid input, which
    reaches deeper into a parser than random bytes do."""
    def mutate(ops: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(seed)
        for kind, where, payload in ops:
            at = where % (len(data) + 1)
            if kind == 0:
                data[at:at + len(payload)] = payload  # overwrite
            elif kind == 1:
                data[at:at] = payload  # insert
            elif kind == 2:
                del data[at:at + len(payload) + 1]  # cut
            else:
                data[at:at] = data[at:at + 64] * 2  # duplicate a stretch
        return bytes(data)
    op = st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.binary(min_size=1, max_size=16))
    return st.lists(op, min_size=1, max_size=8).map(mutate)


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) \
        | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                        max_leaves=30)


def parses_or_refuses(call: Any, *args: Any, **kwargs: Any) -> None:
    """Any other exception propagates and fails the test, with hypothesis's example."""
    with contextlib.suppress(HardhostError):
        call(*args, **kwargs)


EVIDENCE = (DATA / "evidence-container-host.raw").read_bytes()


@FUZZ
@given(mutations(EVIDENCE))
def test_recorded_evidence_mutated(raw: bytes) -> None:
    parses_or_refuses(parse, raw, "fuzz")


@FUZZ
@given(st.fixed_dictionaries({name: st.text(max_size=200) for name in SECTIONS}))
def test_evidence_with_random_sections(sections: dict[str, str]) -> None:
    parses_or_refuses(parse, fake_output(**sections), "fuzz")


@FUZZ
@given(st.binary(max_size=4096))
def test_evidence_random_bytes(raw: bytes) -> None:
    parses_or_refuses(parse, raw, "fuzz")


STATEMENT = json.loads((DATA / "manifest-container-host.json").read_text())


@FUZZ
@given(st.sampled_from(sorted(STATEMENT["predicate"])), json_values())
def test_manifest_predicate_fields_of_any_type(key: str, value: Any) -> None:
    statement = json.loads(json.dumps(STATEMENT))
    statement["predicate"][key] = value
    parses_or_refuses(from_statement, statement, "fuzz")


@FUZZ
@given(json_values())
def test_manifest_statement_of_any_shape(statement: Any) -> None:
    parses_or_refuses(from_statement, statement, "fuzz")


ENVELOPE = json.dumps({"payloadType": "application/vnd.in-toto+json",
                       "payload": "e30=", "signatures": [{"keyid": "ab", "sig": "AA=="}]})


@FUZZ
@given(mutations(ENVELOPE.encode()) | st.binary(max_size=512)
       | json_values().map(lambda v: json.dumps(v).encode()))
def test_dsse_envelope_mutated(data: bytes) -> None:
    parses_or_refuses(verify, data, {}, "fuzz")


@FUZZ
@given(st.integers(1, 5000).map(lambda depth: ("[" * depth + "]" * depth).encode()))
def test_dsse_envelope_nested_deeply(data: bytes) -> None:
    parses_or_refuses(verify, data, {}, "fuzz")


SPEC = (IMAGES / "container-host.toml").read_bytes()


@FUZZ
@given(mutations(SPEC))
def test_spec_mutated(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    parses_or_refuses(parse_spec, text, "fuzz.toml")


@FUZZ
@given(st.text(alphabet=string.printable, max_size=400))
def test_spec_random_text(text: str) -> None:
    parses_or_refuses(parse_spec, text, "fuzz.toml")


@FUZZ
@given(mutations(SPEC))
def test_spec_file_mutated(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("spec") / "fuzz.toml"
    path.write_bytes(data)
    parses_or_refuses(load_spec, path)


TRACE = (Path(__file__).parent / "golden/apparmor/webapp.trace.json").read_bytes()


@FUZZ
@given(mutations(TRACE))
def test_trace_mutated(data: bytes) -> None:
    parses_or_refuses(from_json, data.decode("utf-8", "replace"), "fuzz")


@FUZZ
@given(st.dictionaries(st.sampled_from(["syscalls", "files", "executables", "network",
                                        "capabilities", "clone_flags", "version", "x"]),
                       json_values(), max_size=6))
def test_trace_fields_of_any_type(document: dict[str, Any]) -> None:
    parses_or_refuses(from_json, json.dumps(document), "fuzz")
