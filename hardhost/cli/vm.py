"""`hardhost vm start` and `hardhost vm stop`: built images under qemu."""

from __future__ import annotations

import argparse
from pathlib import Path

from hardhost.cli.common import Commands, add_command, port, positive
from hardhost.core.errors import TRUST


def register(commands: Commands) -> None:
    vm = add_command(commands, "vm", help="boot and stop images under qemu",
                     description="Run built images under qemu, SSH forwarded to a loopback "
                                 "port. State lives under ~/.local/state/hardhost/vms/NAME.")
    actions = vm.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    start = add_command(
        actions, "start", help="boot an image and wait until SSH answers with the provisioned key",
        description="Boot IMAGE_DIR under qemu. IMAGE_DIR/manifest.dsse.json must verify "
                    "against --trust-key, and every file the boot reads (vmlinuz, "
                    "initrd.img, root.img, root.verity; with --tpm esp.img instead of the "
                    "first two) must match its signed digest, or nothing starts (exit "
                    f"{TRUST.code}); the kernel command line is the manifest's, never "
                    "build.json's. On first start, an SSH host key and a "
                    "machine-id are generated and put on the instance's state disk, and the "
                    "key is written to the instance's known_hosts, so the host is known "
                    "without trust on first use. Returns when SSH answers with that key. "
                    "With --tpm, IMAGE_DIR/esp.img (a UKI, from a spec with image.boot = "
                    "\"uki\") boots under OVMF with a swtpm vTPM; on the instance's first "
                    "TPM start the vTPM is manufactured: EKs created and the EK certificate "
                    "signed by a CA made for this instance alone, whose bundle is printed "
                    "last (pass it to attest --tpm --tpm-ca). Under TCG a TPM boot takes "
                    "about a minute to SSH, a direct boot about 30 s.")
    start.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="OUTDIR/NAME of a build")
    start.add_argument("--name", required=True, help="instance name")
    start.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                       help="trusted public key (PEM) that signed the image's manifest, or a "
                            "folder of *.pub keys")
    start.add_argument("--ssh-port", type=port, required=True, metavar="PORT",
                       help="loopback port forwarded to the guest's sshd")
    start.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                       help="qemu accelerator (default: tcg; kvm only when it works here)")
    start.add_argument("--memory", type=int, default=1024, metavar="MiB",
                       help="guest memory (default: 1024); with --tpm, OVMF's PCR 0 "
                            "depends on it, and golden values are recorded per size")
    start.add_argument("--timeout", type=positive, default=300, metavar="SECONDS",
                       help="how long to wait for SSH (default: 300)")
    start.add_argument("--tpm", action="store_true",
                       help="boot the image's esp.img under OVMF (UEFI) with a vTPM (swtpm) "
                            "that measures the boot; needs the ovmf, swtpm and swtpm-tools "
                            "packages")
    start.set_defaults(func=_cmd_vm_start)
    stop = add_command(actions, "stop", help="stop an instance",
                       description="Stop the instance's qemu and, if it has one, its swtpm: a "
                                   "guest with a vTPM is powered off through its ACPI power "
                                   "button (killed if it has not gone within 45 s), so its "
                                   "TPM sees an orderly shutdown. Its state disk, host key "
                                   "and vTPM stay, unless --purge.")
    stop.add_argument("name", metavar="NAME", help="instance name")
    stop.add_argument("--purge", action="store_true",
                      help="also delete the instance's state (host key, machine-id, logs, "
                           "firmware variables, vTPM and its CA)")
    stop.set_defaults(func=_cmd_vm_stop)


def _cmd_vm_start(args: argparse.Namespace) -> int:
    from hardhost.vm import harness as vm

    instance = vm.start(args.image_dir, trust_key=args.trust_key, name=args.name,
                        ssh_port=args.ssh_port, accel=args.accel, memory_mib=args.memory,
                        timeout=args.timeout, tpm=args.tpm)
    print(f"{instance.name}: ssh -p {instance.ssh_port} "
          f"-o UserKnownHostsFile={instance.known_hosts} root@127.0.0.1")
    if args.tpm:
        print(f"{instance.name}: TPM EK CA bundle (for attest --tpm --tpm-ca): "
              f"{instance.tpm_ca}")
    return 0


def _cmd_vm_stop(args: argparse.Namespace) -> int:
    from hardhost.vm import harness as vm

    vm.stop(args.name, purge=args.purge)
    return 0
