# The documentation of hardhost.host.attest. The work is done on the controller by the
# action plugin of the same name (plugins/action/attest.py); this module never runs on a host.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: attest
short_description: Attest a hardhost host against its signed manifest
description:
  - Runs on the controller, never on the host, because a host attesting itself would prove nothing.
  - Verifies the signed manifest, connects to the inventory host over SSH with a strict host
    key from O(known_hosts), runs hardhost's fixed read-only evidence script, and compares
    the evidence with the manifest.
  - The connection comes from the inventory, with C(ansible_host), C(ansible_port),
    C(ansible_user) and C(ansible_ssh_private_key_file).
  - Read-only, so it runs the same in check mode.
version_added: "0.1.0"
author: hardhost developers
extends_documentation_fragment:
  - hardhost.host.connection
options:
  manifest:
    description: The image's signed C(manifest.dsse.json), on the controller.
    type: path
    required: true
  fail_on_drift:
    description: Fail the task when the host has drifted from its manifest.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Collects evidence only; nothing on the host changes.
"""

EXAMPLES = r"""
- name: Attest every host against its image's manifest
  hardhost.host.attest:
    manifest: images/container-host/manifest.dsse.json
    trust_key: keys/signing.pub
    known_hosts: fleet_known_hosts

- name: Record drift without failing
  hardhost.host.attest:
    manifest: images/container-host/manifest.dsse.json
    trust_key: keys/signing.pub
    known_hosts: fleet_known_hosts
    fail_on_drift: false
  register: verdict
"""

RETURN = r"""
status:
  description: pass, or drift.
  returned: always
  type: str
  sample: drift
boot_id:
  description: The boot the evidence came from.
  returned: always
  type: str
manifest_digest:
  description: sha256 of the manifest the host was checked against.
  returned: always
  type: str
findings:
  description: Each fact that differs from the manifest.
  returned: always
  type: list
  elements: dict
  sample:
    - id: sysctl.kernel.kptr_restrict
      severity: high
      expected: "2"
      observed: "1"
"""
