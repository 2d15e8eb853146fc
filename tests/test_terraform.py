"""The Terraform integration: the external data source program, run exactly as Terraform
runs it, and the example module parsed with python-hcl2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest

from hardhost.faces.terraform import QUERY_KEYS
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.sshd import LoopbackHost

MODULE = REPO / "terraform" / "attest"


def program(query: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """argv list, JSON on stdin: what Terraform's external provider does."""
    return subprocess.run([sys.executable, "-m", "hardhost", "terraform-attest"],
                          input=json.dumps(query), capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def load(name: str) -> dict[str, Any]:
    with (MODULE / name).open() as f:
        data: dict[str, Any] = hcl2.load(f)
    return data


def unquote(value: Any) -> Any:
    """python-hcl2 8 keeps the quotes of labels and string literals; compare without them."""
    if isinstance(value, str):
        return value.strip('"')
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items()}
    return value


def test_example_module_parses_and_uses_the_program() -> None:
    main = unquote(load("main.tf"))
    external = main["data"][0]["external"]["attestation"]
    assert external["program"] == ["${var.hardhost}", "terraform-attest"]
    assert set(external["query"]) == QUERY_KEYS
    (postcondition,) = external["lifecycle"][0]["postcondition"]
    assert "status == \"pass\"" in postcondition["condition"]
    variables = {name for block in unquote(load("variables.tf"))["variable"] for name in block}
    assert {"host", "manifest", "trust_key", "known_hosts", "identity"} <= variables
    outputs = {name for block in unquote(load("outputs.tf"))["output"] for name in block}
    assert outputs == {"status", "boot_id", "manifest_digest", "findings"}


@pytest.mark.parametrize("readme", [MODULE / "README.md", REPO / "README.md"])
def test_readme_example_parses(readme: Path) -> None:
    (block,) = re.findall(r"```hcl\n(.*?)```", readme.read_text(), re.S)
    parsed = unquote(hcl2.loads(block))
    module = parsed["module"][0]["attest_edge1"]
    assert module["source"] == "./terraform/attest"
    assert set(module) - {"source", "hardhost", "__is_block__"} <= {
        "host", "port", "user", "manifest", "trust_key", "known_hosts", "identity", "timeout"}


def test_hostile_json_queries_fail_on_stderr() -> None:
    for text, problem in (("[" * 30_000 + "]" * 30_000, "nested too deeply"),
                          ('{"host": "a", "host": "b"}', "'host' appears twice")):
        result = subprocess.run([sys.executable, "-m", "hardhost", "terraform-attest"],
                                input=text, cwd=REPO, capture_output=True, text=True,
                                timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 2 and result.stdout == ""
        assert problem in result.stderr and result.stderr.count("\n") == 1


# Files that do not exist: every check here must fail before any is read.
COMPLETE = {"host": "h", "manifest": "/nonexistent/m.json", "trust_key": "/nonexistent/k",
            "known_hosts": "/nonexistent/kh", "identity": "/nonexistent/id"}


@pytest.mark.parametrize(("query", "problem"), [
    ({"host": "h", "port": 22}, "Terraform passes strings only"),
    ({"host": "h", "colour": "red"}, "unknown query key 'colour'"),
    ({"host": "h"}, "missing query keys: manifest, trust_key, known_hosts, identity"),
    *[({**COMPLETE, "timeout": value}, "timeout") for value in
      ("inf", "nan", "-inf", "0", "-1", "1e9", "3601", "ten")],
    *[({**COMPLETE, "port": value}, "is not a TCP port") for value in
      ("0", "65536", "22abc", "-22", "\u0662\u0662", "")[:-1]],
    ({**COMPLETE, "host": "h@evil"}, "is not a host name"),
    ({**COMPLETE, "host": "h -oProxyCommand=x"}, "is not a host name"),
    ({**COMPLETE, "user": "root@h"}, "is not a user name"),
])
def test_bad_queries_fail_on_stderr(query: dict[str, Any], problem: str) -> None:
    result = program(query)
    assert result.returncode == 2 and result.stdout == ""
    assert problem in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.e2e
def test_attests_a_real_host_with_string_only_output(loopback_sshd: LoopbackHost,
                                                     client_key: KeyPair,
                                                     signing_keys: SigningKeys,
                                                     tmp_path: Path) -> None:
    manifest = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    query = {"host": "127.0.0.1", "port": str(loopback_sshd.port), "user": "root",
             "manifest": str(manifest), "trust_key": str(signing_keys.public),
             "known_hosts": str(loopback_sshd.known_hosts),
             "identity": str(client_key.private), "timeout": "30"}
    result = program(query)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"status", "boot_id", "manifest_digest", "findings_count", "findings"}
    assert all(isinstance(v, str) for v in data.values())
    assert data["status"] == "drift"  # this machine is not an immutable host
    findings = json.loads(data["findings"])
    assert len(findings) == int(data["findings_count"]) > 0
    assert {"id", "severity", "expected", "observed"} <= set(findings[0])
    unreachable = program({**query, "port": str(free_port())})
    assert unreachable.returncode == 3 and "cannot connect" in unreachable.stderr
