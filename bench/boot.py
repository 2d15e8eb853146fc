"""Boot time: from starting qemu (TCG) until sshd answers with the provisioned host key, per
image (and, for a UKI image, also under OVMF with a vTPM), with systemd's own account of
where the userspace time went.

    sudo .venv/bin/python bench/boot.py OUTDIR/container-host OUTDIR/minimal

Each image boots as a throw-away instance named bench-NAME on a free loopback port.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hardhost.core.errors import HardhostError  # noqa: E402
from hardhost.core.log import setup_logging  # noqa: E402
from hardhost.verifier.transport import Target, connect  # noqa: E402
from hardhost.vm import harness as vm  # noqa: E402
from tests.support.net import free_port  # noqa: E402

# systemd reports boot as finished only once every start-up job is done (dockerd included).
SETTLE_TIMEOUT = 120.0


def systemd_report(target: Target, known_hosts: Path, identity: Path) -> str:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    with connect(target, known_hosts=known_hosts, identity=identity, timeout=30) as session:
        while True:
            summary = session.run(["systemd-analyze", "time"], timeout=30)
            if summary.exit_status == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        blame = session.run(["systemd-analyze", "blame"], timeout=30)
        chain = session.run(["systemd-analyze", "critical-chain", "ssh.service"], timeout=30)
    top = "\n".join(blame.stdout.decode().splitlines()[:6])
    return (f"{summary.stdout.decode().strip()}\nslowest units:\n{top}\n"
            f"ssh.service critical chain:\n{chain.stdout.decode().strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="OUTDIR/NAME")
    parser.add_argument("--identity", type=Path,
                        default=Path.home() / ".cache/hardhost/keys/id_ed25519",
                        help="private key the images were built to accept (default: the one "
                             "make demo uses)")
    parser.add_argument("--trust-key", type=Path,
                        default=Path.home() / ".cache/hardhost/keys/signing.pub",
                        help="public key the images' manifests were signed with (default: "
                             "the one make demo uses)")
    args = parser.parse_args()
    setup_logging(verbose=False)
    results: list[tuple[str, float, float]] = []
    # Each image three ways: its kernel started directly by qemu, its disk through OVMF and
    # systemd-boot, and that with a vTPM measuring the boot.
    modes = (("direct", False, True), ("OVMF, systemd-boot", False, False),
             ("OVMF, systemd-boot, vTPM", True, False))
    runs = [(image, mode) for image in args.images for mode in modes]
    for image, (mode, tpm, direct) in runs:
        name = f"bench-{image.name}"
        label = f"{image.name} ({mode})"
        vm.stop(name, purge=True)
        port = free_port()
        start = time.monotonic()
        inst = vm.start(image, trust_key=args.trust_key, name=name, ssh_port=port,
                        timeout=300, tpm=tpm, direct=direct)
        to_ssh = time.monotonic() - start
        results.append((label, to_ssh, (image / "root.img").stat().st_size / 2**20))
        try:
            print(f"\n== {label}: SSH after {to_ssh:.1f} s")
            print(systemd_report(Target("root", "127.0.0.1", port), inst.known_hosts,
                                 args.identity))
        except HardhostError as exc:  # the report is extra; the timing above is the figure
            print(f"(no systemd report: {exc})")
        finally:
            vm.stop(name, purge=True)
    print(f"\n{'image':<36} root.img   qemu start -> SSH (TCG)")
    for name, seconds, size in results:
        print(f"{name:<36} {size:6.0f} MiB  {seconds:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
