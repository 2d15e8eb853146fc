"""Update timings under TCG: the idle slot's transfer against OpenSSH's `ssh host 'cat > DEV'`
of the same bytes (the peer, run first on the same guest), the time from `hardhost update` to
a blessed host, and the time from a failed boot to the host attested on its old image.

    sudo .venv/bin/python bench/update.py OUTDIR/v1/container-host OUTDIR/v2/container-host

OLD and NEW are two builds of one spec with different versions (NEW newer), signed by
--trust-key's key and accepting --identity. The guest boots OLD from its disk through OVMF
(no TPM: a bench of the update, not of quotes). The failed boot is NEW's root under a
manifest that expects a sysctl the root does not set, so it boots and fails attestation.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hardhost.verifier.update as updates  # noqa: E402
from hardhost.core.log import setup_logging  # noqa: E402
from hardhost.image.manifest import MANIFEST_NAME, read_verified  # noqa: E402
from hardhost.image.signing import load_private_key, load_trusted_keys, sign  # noqa: E402
from hardhost.verifier.attestation import Connection  # noqa: E402
from hardhost.verifier.transport import Target, connect  # noqa: E402
from hardhost.vm import harness as vm  # noqa: E402
from tests.support.net import free_port  # noqa: E402

NAME = "bench-update"


class Marks(logging.Handler):
    """The time of the first log line that contains each watched phrase."""

    def __init__(self, *phrases: str) -> None:
        super().__init__()
        self.phrases, self.seen = phrases, dict[str, float]()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for phrase in self.phrases:
            if phrase in text and phrase not in self.seen:
                self.seen[phrase] = time.monotonic()


def cat_to_partition(target: Target, known_hosts: Path, identity: Path, source: Path,
                     label: str) -> float:
    """Seconds OpenSSH takes to pipe `source` into the partition with `cat`, synced."""
    start = time.monotonic()
    with source.open("rb") as data:
        subprocess.run(["ssh", "-p", str(target.port), "-i", str(identity), "-o",
                        f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes",
                        f"{target.user}@{target.host}",
                        f"cat > /dev/disk/by-partlabel/{label} && sync"],
                       stdin=data, check=True)
    return time.monotonic() - start


def hardhost_write(target: Target, conn: Connection, source: Path, label: str
                   ) -> tuple[float, float]:
    """Seconds hardhost's update step takes to stream `source` into the partition (until
    the last byte is sent) and for the whole step (with the host's read-back digest): the
    update script's own `write` action, over paramiko, as `hardhost update` runs it."""
    size = source.stat().st_size
    sent_at: list[float] = []

    def progress(sent: int) -> None:
        if sent == size:
            sent_at.append(time.monotonic())

    command = ["/bin/sh", "-c", updates.SCRIPT, "hardhost-update", "write", label, str(size)]
    with connect(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=30) as session:
        start = time.monotonic()
        with source.open("rb") as data:
            result = session.stream(command, data, timeout=600, progress=progress)
        end = time.monotonic()
    assert result.exit_status == 0 and result.stdout.endswith(b"ok\n"), result
    return sent_at[0] - start, end - start


def drifted(new: Path, out: Path, key: Path, trust_key: Path) -> Path:
    """NEW's root and UKI under a manifest of version NEW+1 that expects kernel.sysrq = 1."""
    out.mkdir()
    for name in ("root.img", "root.verity", "uki.efi"):
        os.link(new / name, out / name)
    manifest, _ = read_verified(new / MANIFEST_NAME, load_trusted_keys(trust_key))
    changed = dataclasses.replace(
        manifest, version=f"{manifest.version}.1",
        subjects=tuple(s for s in manifest.subjects if (out / s.name).exists()),
        sysctls={**manifest.sysctls, "kernel.sysrq": "1"})
    (out / MANIFEST_NAME).write_bytes(sign(changed.payload(), load_private_key(key)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, metavar="OLD")
    parser.add_argument("new", type=Path, metavar="NEW")
    keys = Path.home() / ".cache/hardhost/keys"
    parser.add_argument("--identity", type=Path, default=keys / "id_ed25519")
    parser.add_argument("--trust-key", type=Path, default=keys / "signing.pub")
    parser.add_argument("--signing-key", type=Path, default=keys / "signing.key",
                        help="signs the failing variant's manifest (default: make demo's)")
    args = parser.parse_args()
    setup_logging(verbose=False)
    trusted = load_trusted_keys(args.trust_key)
    old, new = updates.load_image(args.old, trusted), updates.load_image(args.new, trusted)
    port = free_port()
    vm.stop(NAME, purge=True)
    inst = vm.start(args.old, trust_key=args.trust_key, name=NAME, ssh_port=port, timeout=600)
    target = Target("root", "127.0.0.1", port)
    conn = Connection(inst.known_hosts, args.identity, 60.0)
    marks = Marks("failed attestation; marking it bad")
    logging.getLogger("hardhost").addHandler(marks)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-update-") as scratch:
            root = args.new / "root.img"
            size = root.stat().st_size / 2**20
            peer = cat_to_partition(target, inst.known_hosts, args.identity, root,
                                    "hardhost-root-b")
            streamed, step = hardhost_write(target, conn, root, "hardhost-root-b")
            store = {old.manifest.root_hash: old, new.manifest.root_hash: new}
            # The failing update first: the host is back on OLD after it, ready for NEW.
            bad = updates.load_image(drifted(args.new, Path(scratch) / "drifted",
                                             args.signing_key, args.trust_key), trusted)
            start = time.monotonic()
            failed = updates.update(target, bad, store, conn, reboot_timeout=900)
            total_failed = time.monotonic() - start
            assert failed.outcome is updates.Outcome.ROLLED_BACK, failed
            to_old = time.monotonic() - marks.seen["failed attestation; marking it bad"]
            start = time.monotonic()
            good = updates.update(target, new, store, conn, reboot_timeout=900)
            to_blessed = time.monotonic() - start
            assert good.outcome is updates.Outcome.UPDATED, good
    finally:
        vm.stop(NAME, purge=True)
    digest = hashlib.sha256(root.read_bytes()).hexdigest()[:12]
    print(f"\nroot.img {size:.0f} MiB (sha256 {digest}…) into the idle slot, TCG guest:")
    print(f"  ssh 'cat > DEV' (OpenSSH)       {peer:6.1f} s  {size / peer:5.1f} MiB/s")
    print(f"  hardhost update, streamed        {streamed:6.1f} s  {size / streamed:5.1f} MiB/s"
          f"  ({peer / streamed:.2f}x the peer's rate)")
    print(f"  hardhost update, with read-back  {step:6.1f} s  {size / step:5.1f} MiB/s"
          f"  ({peer / step:.2f}x)")
    print(f"update -> blessed host             {to_blessed:6.1f} s")
    print(f"failed boot -> attested old image  {to_old:6.1f} s "
          f"(whole rolled-back update {total_failed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
