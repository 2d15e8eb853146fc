"""hardhost.host.reset: attest, and on drift reboot the host and attest it again."""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.hardhost.host.plugins.action._hardhost import prepare, verdict_result

from builder.errors import HardhostError
from verifier import reset
from verifier.attest import attest


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core ships no types
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        try:
            target, manifest, digest, conn = prepare(args, task_vars,
                                                     task_vars.get("inventory_hostname", ""))
            before = attest(target, manifest, digest, conn)
            if before.status == "pass":
                result.update(verdict_result(before), changed=False)
                return result
            if self._task.check_mode:
                result.update(verdict_result(before), changed=True,
                              msg=f"{target}: drifted; would reboot it and attest again")
                return result
            reset.reboot(target, known_hosts=conn.known_hosts, identity=conn.identity,
                         timeout=float(args.get("reset_timeout") or 300),
                         connect_timeout=min(conn.timeout, 15.0))
            after = attest(target, manifest, digest, conn)
        except HardhostError as exc:
            result.update(failed=True, msg=str(exc), exit_code=exc.exit_code)
            return result
        result.update(verdict_result(after), changed=True,
                      before=verdict_result(before))
        if after.status != "pass" and args.get("fail_on_drift", True):
            result.update(failed=True, msg=f"{target}: still drifted after the reset")
        return result
