"""Shared by the attest and reset action plugins. They run on the controller, because a host
attesting itself would prove nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

from builder.errors import HardhostError
from builder.manifest import read_verified
from builder.signing import load_trusted_keys
from verifier.attest import Connection, manifest_digest
from verifier.transport import Target

ARGS = {"manifest", "trust_key", "known_hosts", "timeout", "fail_on_drift", "reset_timeout"}


def target_of(task_vars: dict[str, Any], inventory_hostname: str) -> Target:
    """The SSH target from the inventory's connection variables."""
    host = str(task_vars.get("ansible_host") or inventory_hostname)
    port = int(task_vars.get("ansible_port") or 22)
    user = str(task_vars.get("ansible_user") or "root")
    return Target(user, host, port)


def prepare(args: dict[str, Any], task_vars: dict[str, Any],
            inventory_hostname: str) -> tuple[Target, Any, str, Connection]:
    unknown = set(args) - ARGS
    if unknown:
        raise HardhostError(f"unsupported arguments: {', '.join(sorted(unknown))}")
    for required in ("manifest", "trust_key", "known_hosts"):
        if not args.get(required):
            raise HardhostError(f"the argument {required} is required")
    manifest_path = Path(str(args["manifest"])).expanduser()
    manifest, _ = read_verified(manifest_path,
                                load_trusted_keys(Path(str(args["trust_key"])).expanduser()))
    identity = task_vars.get("ansible_ssh_private_key_file") or "~/.ssh/id_ed25519"
    conn = Connection(Path(str(args["known_hosts"])).expanduser(),
                      Path(str(identity)).expanduser(), float(args.get("timeout") or 30))
    return target_of(task_vars, inventory_hostname), manifest, manifest_digest(manifest_path), conn


def verdict_result(verdict: Any) -> dict[str, Any]:
    data: dict[str, Any] = verdict.to_dict()
    data["findings"] = [f for f in data["findings"] if f["severity"] != "info"]
    return data


class HardhostAction(ActionBase):  # type: ignore[misc]  # ansible-core ships no types
    """Runs `act` on the controller with the host's target, manifest and connection; any
    hardhost error becomes a failed task with its one-line reason and exit code."""

    TRANSFERS_FILES = False
    _requires_connection = False  # the controller connects with hardhost's own SSH client

    def act(self, target: Target, manifest: Any, digest: str, conn: Connection,
            args: dict[str, Any], result: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        try:
            target, manifest, digest, conn = prepare(args, task_vars,
                                                     task_vars.get("inventory_hostname", ""))
            self.act(target, manifest, digest, conn, args, result)
        except HardhostError as exc:
            result.update(failed=True, msg=str(exc), exit_code=exc.exit_code)
        return result
