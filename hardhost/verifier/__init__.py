"""The verifier's public API: what the faces (the Ansible collection, the pytest plugin, the
Terraform program) use, and all they may use. Everything else in this package is internal.
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
    "Check", "Connection", "Examination", "Finding", "HostManifest", "Image", "Outcome",
    "Severity", "Target", "UpdateResult", "Verdict", "attest", "attest_and_reset",
    "examine_host", "load_image", "load_store", "load_trusted_keys", "manifest_digest",
    "read_verified", "running_version", "update_host",
]
