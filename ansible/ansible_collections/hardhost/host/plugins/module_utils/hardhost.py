"""Shared by the attest and reset action plugins. They run on the controller, because a host
attesting itself would prove nothing."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible.plugins.action import ActionBase

# hardhost itself is imported guarded: on a controller whose Python lacks it, the task says
# so in one line instead of Ansible printing an import traceback.
try:
    from hardhost.core.durations import duration
    from hardhost.core.errors import HardhostError, Unreachable, UsageError
    from hardhost.core.inputs import read_bytes
    from hardhost.verifier import (
        Connection,
        Target,
        load_trusted_keys,
        manifest_digest,
        read_verified,
    )
except ImportError as exc:
    IMPORT_ERROR: ImportError | None = exc
else:
    IMPORT_ERROR = None

if TYPE_CHECKING:
    from hardhost.verifier import HostManifest

log = logging.getLogger(__name__)

ARGS = {"manifest", "trust_key", "known_hosts", "timeout", "fail_on_drift", "reset_timeout"}
REQUIRED = ("manifest", "trust_key", "known_hosts")


def not_installed(exc: ImportError) -> str:
    return (f"hardhost is not installed in the controller's Python ({sys.executable}): "
            f"{exc}. Fix with: {sys.executable} -m pip install hardhost, or run Ansible "
            "from the Python hardhost is installed in")


def target_of(task_vars: dict[str, Any], inventory_hostname: str) -> Target:
    """The SSH target from the inventory's connection variables."""
    host = task_vars.get("ansible_host") or inventory_hostname
    port = task_vars.get("ansible_port") or 22
    user = task_vars.get("ansible_user") or "root"
    if not isinstance(host, str) or not host.strip():
        raise UsageError(f"{inventory_hostname}: ansible_host {host!r} is not an address")
    if not isinstance(user, str):
        raise UsageError(f"{inventory_hostname}: ansible_user {user!r} is not a user name")
    text = str(port) if isinstance(port, int | str) and not isinstance(port, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"{inventory_hostname}: ansible_port {port!r} is not a TCP port")
    return Target(user, host.strip("[]"), int(text))


def prepare(args: dict[str, Any], task_vars: dict[str, Any], inventory_hostname: str, *,
            known: set[str] = ARGS, required: tuple[str, ...] = REQUIRED,
            manifest_file: str = "") -> tuple[Target, HostManifest, str, Connection]:
    """The host's target, its verified manifest (the `manifest` argument, or the path
    `manifest_file`) and the connection. Raises `UsageError` for a wrong argument."""
    unknown = set(args) - known
    if unknown:
        raise UsageError(f"unsupported arguments: {', '.join(sorted(unknown))}")
    for name in required:
        if not args.get(name):
            raise UsageError(f"the argument {name} is required")
    timeout = duration(args.get("timeout", 30), what="timeout")
    for name in ("reset_timeout", "reboot_timeout"):
        if name in args:
            duration(args[name], what=name)
    target = target_of(task_vars, inventory_hostname)
    manifest_path = Path(manifest_file or str(args["manifest"])).expanduser()
    read_bytes(manifest_path, what="manifest")  # missing: a typo (exit 2), not trust (4)
    manifest, _ = read_verified(manifest_path,
                                load_trusted_keys(Path(str(args["trust_key"])).expanduser()))
    identity = task_vars.get("ansible_ssh_private_key_file") or "~/.ssh/id_ed25519"
    conn = Connection(Path(str(args["known_hosts"])).expanduser(),
                      Path(str(identity)).expanduser(), timeout)
    return target, manifest, manifest_digest(manifest_path), conn


def verdict_result(verdict: Any) -> dict[str, Any]:
    data: dict[str, Any] = verdict.to_dict()
    data["findings"] = [f for f in data["findings"] if f["severity"] != "info"]
    return data


class HardhostAction(ActionBase):  # type: ignore[misc]  # ansible-core ships no types
    """Runs `act` on the controller with the host's target, manifest and connection. A host
    that does not answer is Ansible's unreachable; any other hardhost error a failed task
    with its one-line reason and exit code."""

    TRANSFERS_FILES = False
    _requires_connection = False  # the controller connects with hardhost's own SSH client

    def prepare(self, args: dict[str, Any], task_vars: dict[str, Any]
                ) -> tuple[Target, HostManifest, str, Connection]:
        return prepare(args, task_vars, task_vars.get("inventory_hostname", ""))

    def act(self, target: Target, manifest: HostManifest, digest: str, conn: Connection,
            args: dict[str, Any], result: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            result.update(failed=True, msg=not_installed(IMPORT_ERROR))
            return result
        task_vars = task_vars or {}
        args = dict(self._task.args)
        try:
            target, manifest, digest, conn = self.prepare(args, task_vars)
            self.act(target, manifest, digest, conn, args, result)
        except Unreachable as exc:
            result.update(unreachable=True, msg=str(exc), exit_code=exc.exit_code)
        except HardhostError as exc:
            result.update(failed=True, msg=str(exc), exit_code=exc.exit_code)
        except Exception as exc:
            log.debug("hardhost task failed", exc_info=True)
            result.update(failed=True, exit_code=1,
                          msg=f"hardhost: internal error: {type(exc).__name__}: {exc}")
        return result
