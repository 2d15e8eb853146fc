"""The `hardhost` command line. Every failure the user can act on is one line and an exit code.

Exit codes: 0 success; 1 a failed build or command; 2 bad usage or a malformed spec;
3 a host or VM that is unreachable or timed out; 4 a trust failure (host key, credentials).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from builder.errors import HardhostError, UsageError
from builder.log import setup_logging

log = logging.getLogger("hardhost")

EXIT_CODES = """\
exit codes:
  0  success
  1  a build or command failed
  2  bad usage, or a malformed spec (FILE: KEY: what is wrong)
  3  a host or VM did not answer in time
  4  trust failure: unknown or changed host key, refused credentials
"""


def _cmd_build(args: argparse.Namespace) -> int:
    from builder.build import build
    from builder.spec import load_spec, with_authorized_keys

    spec = load_spec(args.spec)
    extra: list[str] = []
    for key_file in args.authorized_key:
        try:
            extra.extend(line.strip() for line in key_file.read_text().splitlines()
                         if line.strip() and not line.startswith("#"))
        except OSError as exc:
            raise UsageError(f"{key_file}: cannot read: {exc.strerror}") from None
    if extra:
        spec = with_authorized_keys(spec, tuple(extra), "--authorized-key")
    final = build(spec, args.output, force=args.force)
    print(final)
    return 0


def _cmd_vm_start(args: argparse.Namespace) -> int:
    from builder import vm

    instance = vm.start(args.image_dir, name=args.name, ssh_port=args.ssh_port,
                        accel=args.accel, memory_mib=args.memory, timeout=args.timeout)
    print(f"{instance.name}: ssh -p {instance.ssh_port} "
          f"-o UserKnownHostsFile={instance.known_hosts} root@127.0.0.1")
    return 0


def _cmd_vm_stop(args: argparse.Namespace) -> int:
    from builder import vm

    vm.stop(args.name, purge=args.purge)
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    from verifier.evidence import collect, render_table
    from verifier.transport import Target, connect

    target = Target.parse(args.target)
    with connect(target, known_hosts=args.known_hosts, identity=args.identity,
                 timeout=args.timeout) as session:
        evidence = collect(session, timeout=args.timeout)
    if args.json:
        print(evidence.to_json())
    else:
        print(render_table(target, evidence))
    return 0


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return number


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port")
    return int(value)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hardhost",
        description="Build immutable, hardened container-host images (a read-only erofs or "
                    "squashfs root under dm-verity, /etc and /var reset at every boot), boot "
                    "them under qemu, and check them over SSH.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build", help="build an image from a TOML spec",
        description="Build SPEC into OUTDIR/NAME: vmlinuz, initrd.img, root.img, root.verity, "
                    "cmdline and build.json. Needs root. The mmdebstrap stage is cached under "
                    "~/.cache/hardhost (or $HARDHOST_CACHE_DIR), keyed by its inputs. The "
                    "output appears only when complete.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("spec", type=Path, metavar="SPEC", help="image spec, e.g. "
                       "images/container-host.toml")
    build.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                       help="folder that receives NAME/")
    build.add_argument("--force", action="store_true",
                       help="replace OUTDIR/NAME if it exists (only once the new build is done)")
    build.add_argument("--authorized-key", type=Path, action="append", default=[],
                       metavar="FILE", help="add the public key lines in FILE to "
                       "[access] authorized_keys (repeatable)")
    build.set_defaults(func=_cmd_build)

    vm = commands.add_parser("vm", help="boot and stop images under qemu",
                             description="Run built images under qemu, SSH forwarded to a "
                                         "loopback port. State lives under "
                                         "~/.local/state/hardhost/vms/NAME.")
    vm_commands = vm.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    start = vm_commands.add_parser(
        "start", help="boot an image and wait until SSH answers with the provisioned key",
        description="Boot IMAGE_DIR under qemu. On first start, an SSH host key and a "
                    "machine-id are generated and put on the instance's state disk, and the "
                    "key is written to the instance's known_hosts, so the host is known "
                    "without trust on first use. Returns when SSH answers with that key.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    start.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="OUTDIR/NAME of a build")
    start.add_argument("--name", required=True, help="instance name")
    start.add_argument("--ssh-port", type=_port, required=True, metavar="PORT",
                       help="loopback port forwarded to the guest's sshd")
    start.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                       help="qemu accelerator (default: tcg; kvm only when it works here)")
    start.add_argument("--memory", type=int, default=1024, metavar="MiB",
                       help="guest memory (default: 1024)")
    start.add_argument("--timeout", type=_positive, default=300, metavar="SECONDS",
                       help="how long to wait for SSH (default: 300)")
    start.set_defaults(func=_cmd_vm_start)
    stop = vm_commands.add_parser("stop", help="stop an instance",
                                  description="Stop the instance's qemu. Its state disk and "
                                              "host key stay, unless --purge.")
    stop.add_argument("name", metavar="NAME", help="instance name")
    stop.add_argument("--purge", action="store_true",
                      help="also delete the instance's state (host key, machine-id, logs)")
    stop.set_defaults(func=_cmd_vm_stop)

    evidence = commands.add_parser(
        "evidence", help="collect a host's boot-state evidence over SSH",
        description="Connect to TARGET (user@host[:port]) with a strict host key from "
                    "--known-hosts, run one fixed read-only script, and show what it found: "
                    "the root's filesystem and dm-verity status, the overlays, sysctls, "
                    "AppArmor and sshd settings.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    evidence.add_argument("target", metavar="TARGET", help="user@host[:port]")
    evidence.add_argument("--known-hosts", type=Path, required=True, metavar="FILE",
                          help="known_hosts file holding the host's key")
    evidence.add_argument("--identity", type=Path, required=True, metavar="KEY",
                          help="private key to log in with")
    evidence.add_argument("--timeout", type=_positive, default=30, metavar="SECONDS",
                          help="bound on connecting and on the script (default: 30)")
    evidence.add_argument("--json", action="store_true", help="print one JSON document")
    evidence.set_defaults(func=_cmd_evidence)
    return top


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C, so `finally` blocks remove temporary output.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except HardhostError as exc:
        print(f"hardhost: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hardhost: interrupted; temporary output removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
