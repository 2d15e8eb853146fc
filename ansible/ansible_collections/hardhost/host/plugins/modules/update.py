# The documentation of hardhost.host.update. The work is done on the controller by the
# action plugin of the same name (plugins/action/update.py); this module never runs on a host.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: update
short_description: Update a hardhost host to a new image, kept only if its boot attests
description:
  - Runs on the controller, like C(hardhost update). Verifies the new image, attests the host
    on the image it runs (found in I(manifests) by its root hash), writes the new image into
    the idle slot and its UKI to the ESP with a boot counter, and reboots. A new boot that
    passes attestation is blessed; one that fails is marked bad and the host goes back to its
    old slot, where it is attested again.
  - Use C(serial) or C(throttle) to update in waves, and C(max_fail_percentage) to stop them.
  - In check mode it reports the running and the new version and changes nothing.
version_added: "0.2.0"
author: hardhost developers
extends_documentation_fragment:
  - hardhost.host.connection
options:
  image:
    description: The new image, a build's C(OUTDIR/NAME) folder, on the controller.
    type: path
    required: true
  manifests:
    description: The manifest store, a folder of image folders or C(*.dsse.json) manifests.
    type: path
    required: true
  reboot_timeout:
    description: Seconds to wait for each reboot, boot-counting fallbacks included.
    type: float
    default: 900
  allow_downgrade:
    description: Install a version older than the running one.
    type: bool
    default: false
  fail_on_rollback:
    description: Fail the task when the host was rolled back to its old image.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Update one host, then a tenth, then the rest; stop at the first failure
  hosts: container_hosts
  serial: [1, "10%", "100%"]
  max_fail_percentage: 0
  gather_facts: false
  tasks:
    - hardhost.host.update:
        image: images/container-host
        manifests: manifest-store
        trust_key: keys/signing.pub
        known_hosts: fleet_known_hosts
"""

RETURN = r"""
outcome:
  description: updated, rolled-back or current.
  returned: unless check mode
  type: str
version:
  description: The version the host runs now.
  returned: always
  type: str
new_boot:
  description: The verdict on the new image's boot (its findings when it was rolled back).
  returned: when the new image booted
  type: dict
"""
