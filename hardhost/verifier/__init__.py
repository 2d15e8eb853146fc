"""The verifier's public API: what the faces (the Ansible collection, the pytest plugin, the
Terraform program, the service's HTTP API and dashboard) use, and all they may use.
Everything else in this package is internal.
"""

from hardhost.image.manifest import HostManifest, read_verified
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.attestation import (
    Connection,
    attest,
    attest_and_reset,
    examine_host,
    manifest_digest,
)
from hardhost.verifier.comparison import Check, Examination
from hardhost.verifier.service.schedule import Request as ServiceRequest
from hardhost.verifier.service.store import Attestation, HostRecord
from hardhost.verifier.service.store import Store as ServiceStore
from hardhost.verifier.transport import Target
from hardhost.verifier.update import (
    Image,
    Outcome,
    UpdateResult,
    load_image,
    load_store,
    running_version,
)
from hardhost.verifier.update import update as update_host
from hardhost.verifier.verdict import Finding, Severity, Verdict

__all__ = [
    "Attestation", "Check", "Connection", "Examination", "Finding", "HostManifest",
    "HostRecord", "Image", "Outcome", "ServiceRequest", "ServiceStore", "Severity", "Target",
    "UpdateResult", "Verdict", "attest", "attest_and_reset",
    "examine_host", "load_image", "load_store", "load_trusted_keys", "manifest_digest",
    "read_verified", "running_version", "update_host",
]
