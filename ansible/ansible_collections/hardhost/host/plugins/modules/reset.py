# The documentation of hardhost.host.reset. The work is done on the controller by the
# action plugin of the same name (plugins/action/reset.py); this module never runs on a host.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: reset
short_description: Reset a drifted hardhost host by reboot and attest it again
description:
  - Runs on the controller. Attests the host like M(hardhost.host.attest); when it has
    drifted, reboots it (the tmpfs overlays make every boot start from the golden state),
    waits until it answers with a new boot_id, and attests it again.
  - In check mode it reports what it would do and reboots nothing.
version_added: "0.1.0"
author: hardhost developers
extends_documentation_fragment:
  - hardhost.host.connection
options:
  manifest:
    description: The image's signed C(manifest.dsse.json), on the controller.
    type: path
    required: true
  reset_timeout:
    description:
      - Seconds to wait for the host to come back after the reboot.
      - Finite, more than 0 and at most 3600. A host that does not come back in time, or
        whose C(systemctl reboot) fails, is reported UNREACHABLE.
    type: float
    default: 300
  fail_on_drift:
    description: Fail the task when the host is still drifted after the reset.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Bring drifted hosts back to their golden state, two at a time
  hardhost.host.reset:
    manifest: images/container-host/manifest.dsse.json
    trust_key: keys/signing.pub
    known_hosts: fleet_known_hosts
  throttle: 2
"""

RETURN = r"""
status:
  description: The final verdict, pass or drift.
  returned: always
  type: str
before:
  description: The verdict that led to the reset.
  returned: when the host was reset
  type: dict
changed:
  description: True when the host was (or, in check mode, would be) rebooted.
  returned: always
  type: bool
"""
