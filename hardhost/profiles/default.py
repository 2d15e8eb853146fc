"""The shipped default profiles, generated from their sources:

- seccomp/default.json from the readable policy in seccomp/default-policy.toml;
- apparmor/container-default from apparmor/container-default.profile.j2.

    .venv/bin/python -m profiles.default   # rewrites both
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from hardhost.profiles import apparmor, seccomp

POLICY = seccomp.DATA / "default-policy.toml"
OUTPUT = seccomp.DATA / "default.json"
APPARMOR_OUTPUT = apparmor.DATA / "container-default"


def build(policy_path: Path = POLICY, *, allow_keyring: bool = False) -> dict[str, Any]:
    policy = tomllib.loads(policy_path.read_text())
    blocked = set(policy["blocked"]["syscalls"])
    groups = list(policy["allow"])
    if allow_keyring:
        keyring = policy["configurable"]["keyring"]
        blocked -= set(keyring["syscalls"])
        groups.append(keyring)
    rules: list[dict[str, Any]] = []
    for group in groups:
        names = group["syscalls"]
        seccomp.check_names(names, str(policy_path))
        overlap = sorted(blocked & set(names))
        if overlap:
            raise seccomp.SeccompError(f"{policy_path}: {overlap[0]} is both allowed and blocked")
        rules.append({"names": sorted(names), "action": "SCMP_ACT_ALLOW",
                      "comment": group["reason"]})
    seccomp.check_names(blocked, str(policy_path))
    conditional = policy["conditional"]
    if conditional.get("clone_without_namespaces"):
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "comment": "clone without namespace flags",
                      "args": [{"index": 0, "value": seccomp.CLONE_NAMESPACE_FLAGS,
                                "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": seccomp.ENOSYS,
                  "comment": "ENOSYS makes glibc fall back to clone, whose flags are checked"})
    for family in conditional["socket_families"]:
        rules.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                      "comment": f"socket family {family}",
                      "args": [{"index": 0, "value": seccomp.FAMILY_NUMBERS[family],
                                "op": "SCMP_CMP_EQ"}]})
    for value in conditional["personality"]:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "comment": "personality value",
                      "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]})
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": seccomp.EPERM,
            "architectures": list(seccomp.ARCHITECTURES), "syscalls": rules}


def main() -> int:
    OUTPUT.write_text(seccomp.dumps(build()))
    APPARMOR_OUTPUT.write_text(apparmor.generate_default())
    print(f"{OUTPUT}\n{APPARMOR_OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
