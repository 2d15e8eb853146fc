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
        description="Boot IMAGE_DIR's disk.img under qemu, as a machine boots it: OVMF "
                    "(UEFI) starts systemd-boot from the disk's ESP, which starts the newest "
                    "UKI whose tries are not used up. IMAGE_DIR/manifest.dsse.json must "
                    "verify against --trust-key, and every file the boot reads (disk.img; "
                    "with --direct also vmlinuz and initrd.img) must match its signed "
                    f"digest, or nothing starts (exit {TRUST.code}). The instance boots a "
                    "verified copy of disk.img under a copy-on-write overlay of its own, so "
                    "the built image stays pristine; each start makes a fresh overlay "
                    "unless --keep-disk. On first start, an SSH host key and a machine-id "
                    "are generated; they are written into the state partition of each fresh "
                    "disk, and the key into the instance's known_hosts, so the host is known "
                    "without trust on first use. Returns when SSH answers with that key. "
                    "With --tpm, a swtpm vTPM measures the boot; on the instance's first "
                    "TPM start the vTPM is manufactured: EKs created and the EK certificate "
                    "signed by a CA made for this instance alone, whose bundle is printed "
                    "last (pass it to attest --tpm --tpm-ca). Under TCG a firmware boot "
                    "takes about 45 s to SSH, a --direct boot about 30 s.")
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
                       help="attach a vTPM (swtpm) that measures the boot; needs the swtpm "
                            "and swtpm-tools packages")
    start.add_argument("--direct", action="store_true",
                       help="skip the firmware: qemu starts the image's vmlinuz and "
                            "initrd.img with the manifest's command line, which finds slot A "
                            "on the same disk (faster under TCG; no TPM, no boot counting)")
    start.add_argument("--keep-disk", action="store_true",
                       help="boot the instance's disk as it was left (after an update, or "
                            "a VM stopped mid-write) instead of a fresh copy of IMAGE_DIR's; "
                            "IMAGE_DIR's manifest must still verify")
    start.set_defaults(func=_cmd_vm_start)
    stop = add_command(actions, "stop", help="stop an instance",
                       description="Stop the instance's qemu and, if it has one, its swtpm: a "
                                   "guest with a vTPM is powered off through its ACPI power "
                                   "button (killed if it has not gone within 45 s), so its "
                                   "TPM sees an orderly shutdown. Its disk, host key "
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
                        timeout=args.timeout, tpm=args.tpm, direct=args.direct,
                        keep_disk=args.keep_disk)
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
