"""hardhost.host.attest: attest the inventory host from the controller."""

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
        from hardhost.verifier import attest

        verdict = attest(target, manifest, digest, conn)
        result.update(verdict_result(verdict), changed=False)
        if verdict.status != "pass" and args.get("fail_on_drift", True):
            result.update(failed=True, msg=f"{target}: drift from its manifest: "
                          + ", ".join(f.id for f in verdict.findings if f.counts()))
