"""Reset a host by reboot: the tmpfs overlays make every boot start from the golden state."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from hardhost.core.errors import Unreachable
from hardhost.verifier.transport import Target, connect

log = logging.getLogger(__name__)

BOOT_ID = "/proc/sys/kernel/random/boot_id"
# Each connection while a host reboots is bounded on its own, within the whole reset
# timeout: a host still booting stalls or refuses, and one stalled try must not use up the
# wait. The caller's connect timeout applies when it is shorter.
RECONNECT_TIMEOUT = 15.0


def boot_id(target: Target, *, known_hosts: Path, identity: Path | None, timeout: float,
            ssh_config: Path | None = None) -> str:
    with connect(target, known_hosts=known_hosts, identity=identity, timeout=timeout,
                 ssh_config=ssh_config) as session:
        result = session.run(["cat", BOOT_ID], limit=128)
    # Host bytes: undecodable ones are shown, not raised (a boot_id is 36 ASCII characters).
    return result.stdout.decode(errors="replace").strip()


def reboot(target: Target, *, known_hosts: Path, identity: Path | None, timeout: float,
           connect_timeout: float = RECONNECT_TIMEOUT, ssh_config: Path | None = None) -> str:
    """Reboot `target` and wait until it answers with a new boot_id; return that boot_id.

    Raises `Unreachable` when systemctl answers with a failure, and when the host does not
    come back within `timeout` seconds (naming the last thing seen).
    """
    with connect(target, known_hosts=known_hosts, identity=identity,
                 timeout=connect_timeout, ssh_config=ssh_config) as session:
        before = session.run(["cat", BOOT_ID], limit=128).stdout.decode(
            errors="replace").strip()
        # The connection may drop before systemctl answers; the new boot_id is the proof.
        # A refusal that does answer (a masked reboot.target, say) is said now, not after
        # `timeout` seconds of waiting for a reboot that will not happen.
        answer = None
        with contextlib.suppress(Unreachable):
            answer = session.run(["systemctl", "reboot"], timeout=connect_timeout, limit=4096)
    # -1 is a channel closed without a status: the reboot cut the session, as it may.
    if answer is not None and answer.exit_status > 0:
        reason = answer.stderr.decode(errors="replace").strip().splitlines()
        raise Unreachable(f"{target}: systemctl reboot failed with exit status "
                          f"{answer.exit_status}: {reason[-1][:200] if reason else 'no message'}")
    log.info("  %s: rebooting (boot_id %s)", target, before)
    start = time.monotonic()
    deadline = start + timeout
    last_seen = "no answer yet"
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(2.0, remaining))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            # Each try ends by the overall deadline, so `timeout` bounds the whole wait.
            now = boot_id(target, known_hosts=known_hosts, identity=identity,
                          timeout=min(connect_timeout, max(1.0, remaining)),
                          ssh_config=ssh_config)
        except Unreachable as exc:
            last_seen = str(exc)
            continue
        if now != before:
            log.info("  %s: back after %.0fs with boot_id %s", target,
                     time.monotonic() - start, now)
            return now
        last_seen = f"still on boot_id {before}"
    raise Unreachable(f"{target}: did not come back with a new boot_id within {timeout:.0f}s "
                      f"(last seen: {last_seen})")
