"""Terraform's `external` data source protocol around one attestation.

Terraform runs the program with a JSON object of strings on stdin and expects one flat JSON
object of strings on stdout; anything else is an error, reported on stderr with a non-zero
exit. Terraform runs data sources on every refresh, so this never resets a host.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.errors import UsageError
from builder.manifest import read_verified
from builder.signing import load_trusted_keys
from verifier.attest import Connection, attest, manifest_digest
from verifier.transport import Target

QUERY_KEYS = {"host", "port", "user", "manifest", "trust_key", "known_hosts", "identity",
              "timeout"}
REQUIRED = ("host", "manifest", "trust_key", "known_hosts", "identity")
MAX_QUERY = 64 * 1024


def parse_query(text: str) -> dict[str, str]:
    if len(text) > MAX_QUERY:
        raise UsageError("terraform-attest: the query is larger than 64 KiB")
    try:
        query: Any = json.loads(text)
    except ValueError:
        raise UsageError("terraform-attest: stdin is not a JSON object") from None
    if not isinstance(query, dict):
        raise UsageError("terraform-attest: stdin is not a JSON object")
    for key, value in query.items():
        if key not in QUERY_KEYS:
            raise UsageError(f"terraform-attest: unknown query key {key!r} "
                             f"(known: {', '.join(sorted(QUERY_KEYS))})")
        if not isinstance(value, str):
            raise UsageError(f"terraform-attest: {key}: Terraform passes strings only")
    missing = [k for k in REQUIRED if not query.get(k)]
    if missing:
        raise UsageError(f"terraform-attest: missing query keys: {', '.join(missing)}")
    return dict(query)


def run(text: str) -> dict[str, str]:
    """Attest the host the query names; the flat result Terraform reads."""
    query = parse_query(text)
    port = query.get("port") or "22"
    target = Target.parse(f"{query.get('user') or 'root'}@{query['host']}:{port}")
    timeout = query.get("timeout") or "30"
    try:
        seconds = float(timeout)
    except ValueError:
        raise UsageError(f"terraform-attest: timeout {timeout!r} is not a number") from None
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
