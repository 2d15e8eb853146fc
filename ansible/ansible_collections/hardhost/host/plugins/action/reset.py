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
        from hardhost.verifier import attest, reboot

        before = attest(target, manifest, digest, conn)
        if before.status == "pass":
            result.update(verdict_result(before), changed=False)
            return
        if self._task.check_mode:
            result.update(verdict_result(before), changed=True,
                          msg=f"{target}: drifted; would reboot it and attest again")
            return
        reboot(target, known_hosts=conn.known_hosts, identity=conn.identity,
               timeout=duration(args.get("reset_timeout", 300), what="reset_timeout"),
               connect_timeout=min(conn.timeout, 15.0))
        after = attest(target, manifest, digest, conn)
        result.update(verdict_result(after), changed=True, before=verdict_result(before))
        if after.status != "pass" and args.get("fail_on_drift", True):
            result.update(failed=True, msg=f"{target}: still drifted after the reset")
