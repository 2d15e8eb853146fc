"""hardhost.host.reset: attest, and on drift reboot the host and attest it again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ansible_collections.hardhost.host.plugins.module_utils.hardhost import (
    HardhostAction,
    verdict_result,
)

if TYPE_CHECKING:  # imported when run: the base class reports a controller without hardhost
    from hardhost.verifier import Connection, HostManifest, Target


class ActionModule(HardhostAction):
    def act(self, target: Target, manifest: HostManifest, digest: str, conn: Connection,
            args: dict[str, Any], result: dict[str, Any]) -> None:
        from hardhost.core.durations import duration
        from hardhost.verifier import attest, attest_and_reset

        if self._task.check_mode:
            # Check mode changes nothing: the attestation alone says whether it would reboot.
            verdict = attest(target, manifest, digest, conn)
            result.update(verdict_result(verdict), changed=verdict.status != "pass")
            if verdict.status != "pass":
                result.update(msg=f"{target}: drifted; would reboot it and attest again")
            return
        before, after = attest_and_reset(
            target, manifest, digest, conn,
            duration(args.get("reset_timeout", 300), what="reset_timeout"))
        if after is None:
            result.update(verdict_result(before), changed=False)
            return
        result.update(verdict_result(after), changed=True, before=verdict_result(before))
        if after.status != "pass" and args.get("fail_on_drift", True):
            result.update(failed=True, msg=f"{target}: still drifted after the reset")
