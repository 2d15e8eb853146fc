"""hardhost.host.update: update the inventory host to a new image from the controller."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible_collections.hardhost.host.plugins.module_utils.hardhost import (
    HardhostAction,
    prepare,
    verdict_result,
)

if TYPE_CHECKING:  # imported when run: the base class reports a controller without hardhost
    from hardhost.verifier import Connection, HostManifest, Target

ARGS = {"image", "manifests", "trust_key", "known_hosts", "timeout", "reboot_timeout",
        "allow_downgrade", "fail_on_rollback"}


class ActionModule(HardhostAction):
    def prepare(self, args: dict[str, Any], task_vars: dict[str, Any]
                ) -> tuple[Target, HostManifest, str, Connection]:
        image = Path(str(args.get("image") or "")).expanduser()
        return prepare(args, task_vars, task_vars.get("inventory_hostname", ""), known=ARGS,
                       required=("image", "manifests", "trust_key", "known_hosts"),
                       manifest_file=str(image / "manifest.dsse.json"))

    def act(self, target: Target, manifest: HostManifest, digest: str, conn: Connection,
            args: dict[str, Any], result: dict[str, Any]) -> None:
        from hardhost.core.durations import duration
        from hardhost.verifier import (
            Outcome,
            load_image,
            load_store,
            load_trusted_keys,
            running_version,
            update_host,
        )

        trusted = load_trusted_keys(Path(str(args["trust_key"])).expanduser())
        new = load_image(Path(str(args["image"])).expanduser(), trusted)
        store = load_store(Path(str(args["manifests"])).expanduser(), trusted)
        if self._task.check_mode:
            running = running_version(target, store, conn)
            would = running != new.manifest.version
            result.update(changed=would, version=running, to_version=new.manifest.version)
            if would:
                result.update(msg=f"{target}: would update {running or 'an unknown image'} "
                                  f"-> {new.manifest.version}")
            return
        outcome = update_host(target, new, store, conn,
                         allow_downgrade=bool(args.get("allow_downgrade", False)),
                         reboot_timeout=duration(args.get("reboot_timeout", 900),
                                                 what="reboot_timeout"))
        result.update(changed=outcome.outcome is not Outcome.CURRENT,
                      outcome=str(outcome.outcome), version=outcome.version,
                      from_version=outcome.from_version, to_version=outcome.to_version,
                      reason=outcome.reason)
        if outcome.new_boot is not None:
            result["new_boot"] = verdict_result(outcome.new_boot)
        if outcome.outcome is Outcome.ROLLED_BACK and args.get("fail_on_rollback", True):
            result.update(failed=True, msg=f"{target}: rolled back to "
                                           f"{outcome.from_version}: {outcome.reason}")
