"""Terraform's `external` data source protocol around one attestation.

Terraform runs the program with a JSON object of strings on stdin and expects one flat JSON
object of strings on stdout; anything else is an error, reported on stderr with a non-zero
exit. Terraform runs data sources on every refresh, so this never resets a host.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from hardhost.core.errors import UsageError
from hardhost.core.inputs import decode_json
from hardhost.verifier import (
    Connection,
    Target,
    attest,
    load_trusted_keys,
    manifest_digest,
    read_verified,
)

QUERY_KEYS = {"host", "port", "user", "manifest", "trust_key", "known_hosts", "identity",
              "timeout"}
REQUIRED = ("host", "manifest", "trust_key", "known_hosts", "identity")
MAX_QUERY = 64 * 1024
# Terraform waits on the data source; an hour covers a slow host, and a larger value (or
# inf, nan) is a typo that would hang `terraform plan`.
MAX_TIMEOUT = 3600.0
_NAME = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")  # a host name, IPv4 or [IPv6] address
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def parse_query(text: str) -> dict[str, str]:
    if len(text) > MAX_QUERY:
        raise UsageError("terraform-attest: the query is larger than 64 KiB")
    query: Any = decode_json(text, origin="terraform-attest: stdin")
    if not isinstance(query, dict):
        raise UsageError("terraform-attest: stdin is not a JSON object")
    for key, value in query.items():
        if key not in QUERY_KEYS:
            raise UsageError(f"terraform-attest: unknown query key {key!r} "
                             f"(known: {', '.join(sorted(QUERY_KEYS))})")
        if not isinstance(value, str):
            raise UsageError(f"terraform-attest: {key}: Terraform passes strings only")
        if "\0" in value or len(value) > 4096:
            raise UsageError(f"terraform-attest: {key}: holds a NUL or is longer than 4096")
    missing = [k for k in REQUIRED if not query.get(k)]
    if missing:
        raise UsageError(f"terraform-attest: missing query keys: {', '.join(missing)}")
    return dict(query)


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise UsageError(f"terraform-attest: timeout {text[:40]!r} is not a number") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise UsageError(f"terraform-attest: timeout {text[:40]!r}: expected seconds in "
                         f"(0, {MAX_TIMEOUT:g}]")
    return seconds


def _target(query: dict[str, str]) -> Target:
    port = query.get("port") or "22"
    if not port.isdecimal() or not port.isascii() or not 1 <= int(port) <= 65535:
        raise UsageError(f"terraform-attest: port {port[:40]!r} is not a TCP port (1..65535)")
    user, host = query.get("user") or "root", query["host"]
    if not _USER.match(user):
        raise UsageError(f"terraform-attest: user {user[:40]!r} is not a user name")
    if not _NAME.match(host):
        raise UsageError(f"terraform-attest: host {host[:40]!r} is not a host name or address")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return Target.parse(f"{user}@{host}:{int(port)}")


def run(text: str) -> dict[str, str]:
    """Attest the host the query names; the flat result Terraform reads."""
    query = parse_query(text)
    target = _target(query)
    seconds = _timeout(query.get("timeout") or "30")
    manifest_path = Path(query["manifest"])
    manifest, _ = read_verified(manifest_path, load_trusted_keys(Path(query["trust_key"])))
    verdict = attest(target, manifest, manifest_digest(manifest_path),
                     Connection(Path(query["known_hosts"]), Path(query["identity"]), seconds))
    findings = [f.__dict__ | {"severity": str(f.severity)} for f in verdict.findings
                if f.counts()]
    return {
        "status": verdict.status,
        "boot_id": verdict.boot_id,
        "manifest_digest": verdict.manifest_digest,
        "findings_count": str(len(findings)),
        "findings": json.dumps(findings, sort_keys=True),
    }
