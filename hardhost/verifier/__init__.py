"""The verifier's public API: what the faces (the Ansible collection, the pytest plugin, the
Terraform program) use, and all they may use. Everything else in this package is internal.
"""

from hardhost.image.manifest import HostManifest, read_verified
from hardhost.image.signing import load_trusted_keys
from hardhost.verifier.attestation import Connection, attest, attest_and_reset, manifest_digest
from hardhost.verifier.comparison import compare
from hardhost.verifier.evidence import Evidence, collect, parse_profiles, parse_sshd
from hardhost.verifier.reset import reboot
from hardhost.verifier.transport import Target, connect, open_client
from hardhost.verifier.verdict import Finding, Severity, Verdict

__all__ = [
    "Connection", "Evidence", "Finding", "HostManifest", "Severity", "Target", "Verdict",
    "attest", "attest_and_reset", "collect", "compare", "connect", "load_trusted_keys",
    "manifest_digest", "open_client", "parse_profiles", "parse_sshd", "read_verified",
    "reboot",
]
