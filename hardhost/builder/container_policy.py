"""The podman host's image trust policy, rendered from `[containers]` as pure data.

- `/etc/containers/policy.json` (containers-policy.json(5)): everything is rejected by
  default; each allowed registry's images must carry a GPG simple signing signature by one
  of the spec's keys (`signedBy`, `keyType: GPGKeys`). Every other transport falls under the
  default, so `podman load` (docker-archive, oci-archive), `podman import` (tarball),
  `docker-daemon:`, `dir:` and other local stores (`containers-storage:[...]`) are refused.
- `/etc/containers/registries.d/REGISTRY.yaml` (containers-registries.d(5)): each registry's
  own lookaside, `BASE/REGISTRY`, since lookaside paths name the repository and digest but
  not the registry's host.
- `/etc/containers/registries.conf` (containers-registries.conf(5)): no short names, so an
  image is always named by the registry it comes from.
- the keys, under `/etc/containers/keys/`.

All of it lives on the verified root, and the manifest records each file's digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardhost.builder.containers import Containers, key_name, lookaside_url, read_key

POLICY = "/etc/containers/policy.json"
REGISTRIES_CONF = "/etc/containers/registries.conf"
REGISTRIES_D = "/etc/containers/registries.d"
# Drop-ins merged over registries.conf (Debian's containers-common ships shortnames.conf);
# the build empties the folder so that the rendered file is the whole configuration.
REGISTRIES_CONF_D = "/etc/containers/registries.conf.d"
KEYS_DIR = "/etc/containers/keys"

REGISTRIES_CONF_TEXT = (
    "# Rendered by hardhost: images are named with their registry; no short names.\n"
    "unqualified-search-registries = []\n"
    'short-name-mode = "enforcing"\n'
)


@dataclass(frozen=True)
class PolicyFile:
    path: str  # absolute path inside the image
    content: str


def key_path(path: str) -> str:
    """Where the key file `path` of the spec is installed in the image."""
    return f"{KEYS_DIR}/{key_name(path)}"


def policy(containers: Containers) -> dict[str, Any]:
    """policy.json's content: reject by default, signed images from allowed registries."""
    keys = [key_path(path) for path in containers.signing_keys]
    # keyPaths (containers/image 5.23+, podman 4.3): a signature by any one of the keys is
    # accepted. Requirements in a list must all hold, so one requirement per key would
    # demand a signature by every key instead.
    signed: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys"}
    if len(keys) == 1:
        signed["keyPath"] = keys[0]
    else:
        signed["keyPaths"] = keys
    return {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {registry: [signed] for registry in containers.allowed_registries},
        },
    }


def registries_d(containers: Containers, registry: str) -> str:
    # JSON strings are YAML double-quoted scalars: the registry's ':' stays in the key.
    url = lookaside_url(containers.lookaside, registry)
    return (f"# Rendered by hardhost: where the signatures of {registry}'s images are read.\n"
            f"docker:\n  {json.dumps(registry)}:\n    lookaside: {json.dumps(url)}\n")


def policy_files(containers: Containers, spec_source: str) -> list[PolicyFile]:
    """Every file of the policy, keys included; none when the spec asks for no policy."""
    if not containers.enforces_signatures:
        return []
    spec_dir = Path(spec_source).parent
    files = [PolicyFile(POLICY, json.dumps(policy(containers), indent=2, sort_keys=True)
                        + "\n"),
             PolicyFile(REGISTRIES_CONF, REGISTRIES_CONF_TEXT)]
    files += [PolicyFile(f"{REGISTRIES_D}/{registry}.yaml", registries_d(containers, registry))
              for registry in containers.allowed_registries]
    files += [PolicyFile(key_path(path), read_key(spec_dir, path, spec_source))
              for path in containers.signing_keys]
    return files
