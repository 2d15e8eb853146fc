"""hardhost.host.attest: attest the inventory host from the controller."""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.hardhost.host.plugins.action._hardhost import prepare, verdict_result

from builder.errors import HardhostError
from verifier.attest import attest


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core ships no types
    TRANSFERS_FILES = False
    _requires_connection = False  # the controller connects with hardhost's own SSH client

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        try:
            target, manifest, digest, conn = prepare(args, task_vars,
                                                     task_vars.get("inventory_hostname", ""))
            verdict = attest(target, manifest, digest, conn)
        except HardhostError as exc:
            result.update(failed=True, msg=str(exc), exit_code=exc.exit_code)
            return result
        result.update(verdict_result(verdict), changed=False)
        if verdict.status != "pass" and args.get("fail_on_drift", True):
            result.update(failed=True, msg=f"{target}: drift from its manifest: "
                          + ", ".join(f.id for f in verdict.findings if f.counts()))
        return result
