# The options the hardhost.host modules share.

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  trust_key:
    description: Trusted manifest signing key (PEM), or a folder of C(*.pub) keys.
    type: path
    required: true
  known_hosts:
    description: known_hosts file holding the hosts' keys; unknown or changed keys fail.
    type: path
    required: true
  timeout:
    description:
      - Seconds allowed for connecting and for collecting evidence.
      - Finite, more than 0 and at most 3600; anything else fails the task.
      - A host that does not answer within it is reported UNREACHABLE, not failed.
    type: float
    default: 30
requirements:
  - hardhost installed in the controller's Python; without it the task fails saying so
"""
