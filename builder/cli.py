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
from typing import TYPE_CHECKING

from builder.errors import HardhostError, UsageError
from builder.log import setup_logging
from builder.workspace import IN_MEMORY_MIN_AVAILABLE, Workspace

if TYPE_CHECKING:
    from builder.spec import Spec
    from verifier.attest import Connection
    from verifier.tpm_attest import TpmPolicy

log = logging.getLogger("hardhost")

EXIT_CODES = """\
exit codes:
  0  success
  1  a build or command failed
  2  bad usage, or a malformed spec (FILE: KEY: what is wrong)
  3  a host or VM did not answer in time
  4  trust failure: unknown or changed host key, refused credentials, or a manifest
     with a bad signature, an untrusted key, a changed artifact or past its expiry
"""


def _signing_key_path(args: argparse.Namespace, spec_key: str) -> Path:
    if args.key is not None:
        return Path(args.key)
    if spec_key:
        return Path(args.spec.parent / spec_key).expanduser()
    raise UsageError(f"{args.spec}: manifest.signing_key: no signing key; pass --key FILE or "
                     "set it in the spec (make one with: hardhost keygen --out DIR)")


def _cmd_build(args: argparse.Namespace) -> int:
    from builder.build import build, check_reproducible, require_root
    from builder.signing import load_private_key
    from builder.spec import load_spec, with_authorized_keys

    spec = load_spec(args.spec)
    require_root()
    key = load_private_key(_signing_key_path(args, spec.manifest.signing_key))
    extra: list[str] = []
    for key_file in args.authorized_key:
        try:
            extra.extend(line.strip() for line in key_file.read_text().splitlines()
                         if line.strip() and not line.startswith("#"))
        except OSError as exc:
            raise UsageError(f"{key_file}: cannot read: {exc.strerror}") from None
    if extra:
        spec = with_authorized_keys(spec, tuple(extra), "--authorized-key")
    if args.check_reproducible:
        final, differing = check_reproducible(spec, args.output, key=key, force=args.force,
                                              workspace=args.workspace)
        if differing is not None:
            print(f"hardhost: not reproducible: {differing} differs between two builds of "
                  f"{args.spec}", file=sys.stderr)
            return 1
        log.info("Reproducible: two builds gave identical %s", ", ".join(_subjects(spec)))
    else:
        final = build(spec, args.output, key=key, force=args.force, reuse=not args.no_cache,
                      workspace=args.workspace)
    print(final)
    return 0


def _subjects(spec: Spec) -> tuple[str, ...]:
    from builder.stages.manifest import subjects

    return subjects(spec)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from builder.signing import key_id, keygen, load_private_key

    private, public = keygen(args.out)
    print(f"{private}\n{public}")
    log.info("key id %s", key_id(load_private_key(private).public_key()))
    return 0


def _cmd_manifest_verify(args: argparse.Namespace) -> int:
    from builder.manifest import check_artifacts, read_verified
    from builder.signing import load_trusted_keys

    manifest, keyid = read_verified(args.file, load_trusted_keys(args.trust_key))
    checked = check_artifacts(manifest, args.file.parent) if args.artifacts else []
    print(f"{args.file}: good signature by {keyid[:16]}, {manifest.name}, expires "
          f"{manifest.expires}; {len(checked)} of {len(manifest.subjects)} artifacts match")
    return 0


def _cmd_manifest_show(args: argparse.Namespace) -> int:
    import json

    from builder.manifest import read_verified
    from builder.signing import load_trusted_keys

    manifest, keyid = read_verified(args.file, load_trusted_keys(args.trust_key))
    statement = manifest.statement()
    if args.json:
        print(json.dumps(statement, indent=2, sort_keys=True))
        return 0
    predicate = statement["predicate"]
    print(f"manifest of {manifest.name}, signed by {keyid[:16]}")
    for key in sorted(predicate):
        value = predicate[key]
        if isinstance(value, dict):
            print(f"{key}:")
            for inner in sorted(value):
                print(f"  {inner} = {value[inner]}")
        else:
            print(f"{key}: {value}")
    print("subjects:")
    for subject in manifest.subjects:
        print(f"  {subject.name}  sha256:{subject.sha256}")
    return 0


def _cmd_vm_start(args: argparse.Namespace) -> int:
    from builder import vm

    instance = vm.start(args.image_dir, name=args.name, ssh_port=args.ssh_port,
                        accel=args.accel, memory_mib=args.memory, timeout=args.timeout,
                        tpm=args.tpm)
    print(f"{instance.name}: ssh -p {instance.ssh_port} "
          f"-o UserKnownHostsFile={instance.known_hosts} root@127.0.0.1")
    if args.tpm:
        print(f"{instance.name}: TPM EK CA bundle (for attest --tpm --tpm-ca): "
              f"{instance.tpm_ca}")
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


def _cmd_profile_record(args: argparse.Namespace) -> int:
    from profiles.record import record

    command = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
    trace, status = record(command, timeout=args.timeout)
    args.out.write_text(trace.to_json())
    log.info("recorded %d syscalls, %d files, %d executables, %d network calls (exit %d)",
             len(trace.syscalls), len(trace.files), len(trace.executables),
             len(trace.network), status)
    print(args.out)
    return 0


def _cmd_profile_merge(args: argparse.Namespace) -> int:
    from profiles.trace import load, merge

    merged = merge(load(path) for path in args.traces)
    args.output.write_text(merged.to_json())
    print(args.output)
    return 0


def _cmd_profile_generate(args: argparse.Namespace) -> int:
    from profiles.generate import generate_all
    from profiles.trace import load

    written = generate_all(load(args.trace), args.name, args.out_dir)
    for path in (written.seccomp, written.apparmor, written.selinux):
        if path is not None:
            print(path)
    return 0


def _cmd_profile_check(args: argparse.Namespace) -> int:
    from profiles.generate import check_all
    from profiles.trace import load

    denials = check_all(args.directory, load(args.trace))
    for line in denials:
        print(line)
    if not denials:
        print(f"{args.directory}: every recorded event is allowed")
    return 1 if denials else 0


def _cmd_attest(args: argparse.Namespace) -> int:
    import json

    from builder.manifest import read_verified
    from builder.signing import load_trusted_keys
    from verifier.attest import attest, attest_and_reset, manifest_digest
    from verifier.tpm_attest import TpmPolicy, default_registry, predictions
    from verifier.transport import Target
    from verifier.verdict import render

    target = Target.parse(args.target)
    # The manifest is verified before the host is contacted: a bad one is exit 4, offline.
    manifest, _ = read_verified(args.manifest, load_trusted_keys(args.trust_key))
    digest = manifest_digest(args.manifest)
    tpm = None
    if args.tpm:
        predictions(manifest, str(args.manifest))  # an image without PCRs fails offline
        tpm = TpmPolicy(args.ak_registry or default_registry(), args.tpm_ca, args.tpm_reenroll)
    elif args.tpm_ca or args.ak_registry or args.tpm_reenroll:
        raise UsageError("--tpm-ca, --ak-registry and --tpm-reenroll need --tpm")
    conn = _connection(args, tpm)
    if args.reset:
        first, second = attest_and_reset(target, manifest, digest, conn, args.reset_timeout)
    else:
        first, second = attest(target, manifest, digest, conn), None
    final = second or first
    if args.json:
        document = ({"before": first.to_dict(), "after": second.to_dict()} if second
                    else first.to_dict())
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(render(first))
        if second:
            print(render(second))
    return 0 if final.status == "pass" else 1


def _cmd_fleet(args: argparse.Namespace) -> int:
    from builder.signing import load_trusted_keys
    from verifier import fleet, history, inventory
    from verifier.verdict import now

    started = now()
    hosts = inventory.load(args.inventory, limit=args.limit)
    manifests = fleet.Manifests(args.manifest, load_trusted_keys(args.trust_key))
    conn = _connection(args)
    log.info("Attesting %d hosts, %d at a time", len(hosts), args.forks)
    verdicts = fleet.run(hosts, manifests, conn, args.forks)
    if args.reset:
        history.record(args.history, started, str(args.inventory), verdicts)
        verdicts = fleet.reset_drifted(hosts, verdicts, manifests, conn,
                                       batch=args.reset_batch, reset_timeout=args.reset_timeout)
    history.record(args.history, started, str(args.inventory), verdicts)
    if args.json:
        fleet.write_json(args.json, verdicts)
    if args.junit:
        fleet.write_junit(args.junit, verdicts)
    width = max(len(v.host) for v in verdicts)
    for verdict in verdicts:
        drift = [f.id for f in verdict.findings if f.counts()]
        detail = verdict.error or (", ".join(drift[:4]) + (" …" if len(drift) > 4 else ""))
        print(f"{verdict.host.ljust(width)}  {verdict.status:<6}  {detail}")
    return fleet.exit_code(verdicts)


def _cmd_history(args: argparse.Namespace) -> int:
    from verifier import history

    rows = history.summary(args.db, args.host)
    if not rows:
        print(f"{args.db}: no verdicts recorded" + (f" for {args.host}" if args.host else ""))
        return 0
    width = max(len(r.host) for r in rows)
    print(f"{'host'.ljust(width)}  last      at                    last passed")
    for row in rows:
        print(f"{row.host.ljust(width)}  {row.last_status:<8}  {row.last_time}  "
              f"{row.last_pass or 'never'}")
    return 0


def _cmd_terraform_attest(args: argparse.Namespace) -> int:
    import json

    from verifier.terraform import MAX_QUERY, run

    print(json.dumps(run(sys.stdin.read(MAX_QUERY + 1)), sort_keys=True))
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
                    "cmdline, sbom.spdx.json, the signed manifest.dsse.json and build.json; "
                    "with image.boot = \"uki\", also uki.efi and esp.img. Needs root. "
                    "The mmdebstrap tree, the initramfs "
                    "and the root image are cached under ~/.cache/hardhost (or "
                    "$HARDHOST_CACHE_DIR), each keyed by exactly the inputs it depends on: a "
                    "sysctl change rebuilds the root image but reuses the rest. The output "
                    "appears only when complete.",
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
    build.add_argument("--key", type=Path, metavar="FILE",
                       help="Ed25519 private key that signs the manifest (default: the spec's "
                            "manifest.signing_key)")
    build.add_argument("--check-reproducible", action="store_true",
                       help="build twice, without cached stage outputs, and report the first "
                            "artifact that differs (exit 1)")
    build.add_argument("--no-cache", action="store_true",
                       help="run every stage after bootstrap even when its output is cached")
    build.add_argument("--workspace", type=Workspace, choices=list(Workspace),
                       default=Workspace.AUTO,
                       help="where the image tree is assembled: memory (a tmpfs of the "
                            "build's own, about 1 GiB at its peak, gone when the build ends), "
                            "disk (a folder in OUTDIR), or auto (the default): memory when "
                            f"{IN_MEMORY_MIN_AVAILABLE // 2**30} GiB are available. The "
                            "image is the same either way; in memory, a rebuild does not "
                            "wait on the disk")
    build.set_defaults(func=_cmd_build)

    keygen = commands.add_parser(
        "keygen", help="make an Ed25519 signing key pair",
        description="Write DIR/signing.key (PEM, mode 0600) and DIR/signing.pub (PEM). "
                    "Refuses to overwrite an existing key.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the key pair")
    keygen.set_defaults(func=_cmd_keygen)

    manifest = commands.add_parser(
        "manifest", help="verify or show a signed manifest",
        description="Check a build's manifest.dsse.json: a DSSE envelope around an in-toto "
                    "statement. Exit 4 for a bad signature, an untrusted key, a truncated "
                    "file, a changed artifact or an expired manifest.")
    manifest_commands = manifest.add_subparsers(dest="manifest_command", required=True,
                                                metavar="ACTION")
    for name, func, text in (
            ("verify", _cmd_manifest_verify, "verify the signature, expiry and artifacts"),
            ("show", _cmd_manifest_show, "verify, then print what a host must show")):
        sub = manifest_commands.add_parser(
            name, help=text, description=f"{text[0].upper()}{text[1:]}. FILE must be signed "
            "by a key given with --trust-key.", epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("file", type=Path, metavar="FILE", help="manifest.dsse.json")
        sub.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                         help="trusted public key (PEM), or a folder of *.pub keys")
        sub.set_defaults(func=func)
        if name == "verify":
            sub.add_argument("--no-artifacts", dest="artifacts", action="store_false",
                             help="do not compare the artifacts beside FILE with its digests")
        else:
            sub.add_argument("--json", action="store_true", help="print the statement as JSON")

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
                    "without trust on first use. Returns when SSH answers with that key. "
                    "With --tpm, IMAGE_DIR/esp.img (a UKI, from a spec with image.boot = "
                    "\"uki\") boots under OVMF with a swtpm vTPM; on the instance's first "
                    "TPM start the vTPM is manufactured: EKs created and the EK certificate "
                    "signed by a CA made for this instance alone, whose bundle is printed "
                    "last (pass it to attest --tpm --tpm-ca). Under TCG a TPM boot takes "
                    "about a minute to SSH, a direct boot about 30 s.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    start.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="OUTDIR/NAME of a build")
    start.add_argument("--name", required=True, help="instance name")
    start.add_argument("--ssh-port", type=_port, required=True, metavar="PORT",
                       help="loopback port forwarded to the guest's sshd")
    start.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                       help="qemu accelerator (default: tcg; kvm only when it works here)")
    start.add_argument("--memory", type=int, default=1024, metavar="MiB",
                       help="guest memory (default: 1024); with --tpm, OVMF's PCR 0 "
                            "depends on it, and golden values are recorded per size")
    start.add_argument("--timeout", type=_positive, default=300, metavar="SECONDS",
                       help="how long to wait for SSH (default: 300)")
    start.add_argument("--tpm", action="store_true",
                       help="boot the image's esp.img under OVMF (UEFI) with a vTPM (swtpm) "
                            "that measures the boot; needs the ovmf, swtpm and swtpm-tools "
                            "packages")
    start.set_defaults(func=_cmd_vm_start)
    stop = vm_commands.add_parser("stop", help="stop an instance",
                                  description="Stop the instance's qemu and, if it has one, "
                                              "its swtpm: a guest with a vTPM is powered off "
                                              "through its ACPI power button (killed if it "
                                              "has not gone within 45 s), so its TPM sees an "
                                              "orderly shutdown. Its state disk, host key and "
                                              "vTPM stay, unless --purge.")
    stop.add_argument("name", metavar="NAME", help="instance name")
    stop.add_argument("--purge", action="store_true",
                      help="also delete the instance's state (host key, machine-id, logs, "
                           "firmware variables, vTPM and its CA)")
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
    _add_profile_commands(commands)
    _add_attest_command(commands)
    _add_fleet_commands(commands)
    terraform = commands.add_parser(
        "terraform-attest", help="Terraform external data source: attest one host",
        description="Terraform's external data source protocol. Reads one JSON object of "
                    "strings on stdin (host, port, user, manifest, trust_key, known_hosts, "
                    "identity, timeout) and writes one flat JSON object of strings on stdout: "
                    "status (pass or drift), boot_id, manifest_digest, findings_count, and "
                    "findings as a JSON string. Errors go to stderr with a non-zero exit. "
                    "It never resets a host: Terraform runs it on every refresh.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    terraform.set_defaults(func=_cmd_terraform_attest)
    return top


def _connection_options(command: argparse.ArgumentParser) -> None:
    home = Path("~/.ssh").expanduser()
    command.add_argument("--known-hosts", type=Path, default=home / "known_hosts",
                         metavar="FILE", help="known_hosts holding the hosts' keys, as OpenSSH "
                         "writes it (default: ~/.ssh/known_hosts); unknown, changed or "
                         "@revoked keys are refused, and @cert-authority lines grant no trust")
    command.add_argument("--identity", type=Path, default=None, metavar="KEY",
                         help="private key to log in with (default: the ssh config's "
                         "IdentityFile, else ~/.ssh/id_ed25519 if it exists), tried before the "
                         "keys of the ssh-agent at $SSH_AUTH_SOCK; an encrypted key's "
                         "passphrase comes from $HARDHOST_IDENTITY_PASSPHRASE, or is asked for "
                         "on a terminal")
    command.add_argument("--ssh-config", type=_ssh_config_path,
                         default=home / "config" if (home / "config").is_file() else None,
                         metavar="FILE", help="OpenSSH client config whose HostName, Port, "
                         "User, IdentityFile and ProxyJump apply to each host, the jump hosts' "
                         "keys checked against --known-hosts too (default: ~/.ssh/config if it "
                         "exists; none: no config)")
    command.add_argument("--timeout", type=_positive, default=30, metavar="SECONDS",
                         help="bound on connecting and on collecting evidence (default: 30)")


def _ssh_config_path(value: str) -> Path | None:
    return None if value == "none" else Path(value)


def _connection(args: argparse.Namespace, tpm: TpmPolicy | None = None) -> Connection:
    """The connection options, their files read before any host is contacted: a typo in a
    path is exit 2 at once, not one error per host."""
    from verifier.attest import Connection
    from verifier.transport import check_options

    check_options(known_hosts=args.known_hosts, identity=args.identity,
                  ssh_config=args.ssh_config, trust_on_first_use=args.trust_on_first_use)
    return Connection(args.known_hosts, args.identity, args.timeout, args.trust_on_first_use,
                      tpm, args.ssh_config)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def _add_fleet_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from verifier.history import default_path

    fleet = commands.add_parser(
        "fleet", help="attest every host of an Ansible inventory",
        description="Read INVENTORY (Ansible INI or YAML, with groups and host variables) with "
                    "ansible-core, and attest its hosts concurrently, at most --forks at a "
                    "time. Host variables may set ansible_host, ansible_port, ansible_user, "
                    "ansible_ssh_private_key_file and hardhost_manifest. Every run is stored in "
                    "the SQLite history. Exit 0 when all pass, 1 on drift, 3 if a host is "
                    "unreachable, 4 on a trust failure (the worst wins).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet.add_argument("inventory", type=Path, metavar="INVENTORY")
    fleet.add_argument("--manifest", type=Path, metavar="FILE",
                       help="manifest for hosts without a hardhost_manifest variable")
    fleet.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                       help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    _connection_options(fleet)
    fleet.add_argument("--trust-on-first-use", action="store_true",
                       help="accept unknown host keys once and record them")
    fleet.add_argument("--forks", type=_positive_int, default=50, metavar="N",
                       help="hosts checked at once (default: 50)")
    fleet.add_argument("--limit", metavar="PATTERN", help="Ansible host pattern to select hosts")
    fleet.add_argument("--history", type=Path, default=default_path(), metavar="DB",
                       help=f"SQLite history (default: {default_path()})")
    fleet.add_argument("--reset", action="store_true",
                       help="reboot drifted hosts and attest them again (both runs are kept "
                            "in the history; the outputs show the final verdicts)")
    fleet.add_argument("--reset-batch", type=_positive_int, default=5, metavar="N",
                       help="drifted hosts rebooted at once (default: 5)")
    fleet.add_argument("--reset-timeout", type=_positive, default=300, metavar="SECONDS",
                       help="how long to wait for each host to return (default: 300)")
    fleet.add_argument("--json", type=Path, metavar="FILE", help="write the verdicts as JSON")
    fleet.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML for CI")
    fleet.set_defaults(func=_cmd_fleet)

    history = commands.add_parser(
        "history", help="show the last verdicts and when each host last passed",
        description="Read the fleet history: each host's last verdict, and when it last "
                    "passed.", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("--host", help="only this host (as shown, user@host:port)")
    history.add_argument("--db", type=Path, default=default_path(), metavar="DB",
                         help=f"SQLite history (default: {default_path()})")
    history.set_defaults(func=_cmd_history)


def _add_attest_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    attest = commands.add_parser(
        "attest", help="attest a host against its signed manifest",
        description="Verify MANIFEST (exit 4 if bad; the host is not contacted), connect to "
                    "TARGET with a strict host key, collect its boot-state evidence with one "
                    "fixed read-only script, and compare it with the manifest. Exit 0 when "
                    "every fact holds, 1 on drift. With --reset, a drifted host is rebooted, "
                    "and attested again once it answers with a new boot_id. With --tpm, the "
                    "host's TPM also quotes its PCRs over a fresh nonce (tpm2_quote, over the "
                    "same SSH session), and the verifier checks the quote's signature by the "
                    "host's enrolled attestation key, the nonce, the PCR digest, and every PCR "
                    "against the values the manifest predicts. The first --tpm attestation of "
                    "a host enrolls its AK: its EK certificate must chain to --tpm-ca, and "
                    "credential activation proves the AK lives in that TPM. A quote by any "
                    "other key later is exit 4, until --tpm-reenroll.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    attest.add_argument("target", metavar="TARGET", help="user@host[:port]")
    attest.add_argument("--manifest", type=Path, required=True, metavar="FILE",
                        help="the image's manifest.dsse.json")
    attest.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                        help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    _connection_options(attest)
    attest.add_argument("--trust-on-first-use", action="store_true",
                        help="accept an unknown host key once and record it in --known-hosts "
                             "(a changed key is still refused)")
    attest.add_argument("--json", action="store_true", help="print the verdict as JSON")
    attest.add_argument("--reset", action="store_true",
                        help="on drift, reboot the host and attest it again")
    attest.add_argument("--reset-timeout", type=_positive, default=300, metavar="SECONDS",
                        help="how long to wait for the host to return (default: 300)")
    attest.add_argument("--tpm", action="store_true",
                        help="also verify a TPM quote against the manifest's predicted PCRs "
                             "(images built with image.boot = \"uki\"); with --reset, the "
                             "quote after the reboot must show a new TPM resetCount")
    attest.add_argument("--tpm-ca", type=Path, metavar="FILE",
                        help="PEM CA certificates the TPM's EK certificate must chain to; "
                             "needed when a host's AK is enrolled (first --tpm attestation)")
    attest.add_argument("--ak-registry", type=Path, metavar="FILE",
                        help="enrolled attestation keys, one per host and SSH host key "
                             "(default: ~/.local/state/hardhost/aks.json)")
    attest.add_argument("--tpm-reenroll", action="store_true",
                        help="replace the host's enrolled AK (after its TPM was cleared or "
                             "replaced); needs --tpm-ca")
    attest.set_defaults(func=_cmd_attest)


def _add_profile_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = commands.add_parser(
        "profile", help="record a workload and generate its security profiles",
        description="One recording of a workload (strace) yields its seccomp, AppArmor and "
                    "SELinux profiles; check proves offline that the recording is allowed.")
    actions = profile.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    record = actions.add_parser(
        "record", help="run a command under strace and write its normalised trace",
        description="Run CMD under strace -f and write what it did: syscalls (with clone "
                    "flags, socket families and personality), executed binaries, files with "
                    "their access modes, network calls and inferred capabilities.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    record.add_argument("--out", type=Path, required=True, metavar="TRACE",
                        help="trace file to write (JSON)")
    record.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS",
                        help="stop the command after this long")
    record.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the command to record")
    record.set_defaults(func=_cmd_profile_record)
    merge = actions.add_parser("merge", help="merge traces of several runs into one",
                               description="Merge traces: the union of everything recorded.",
                               epilog=EXIT_CODES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument("traces", type=Path, nargs="+", metavar="TRACE")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="TRACE",
                       help="merged trace to write")
    merge.set_defaults(func=_cmd_profile_merge)
    generate = actions.add_parser(
        "generate", help="write the profiles for a trace",
        description="Write from TRACE: DIR/NAME.seccomp.json (OCI runtime-spec seccomp), "
                    "DIR/NAME.apparmor (checked with apparmor_parser -Q -K) and DIR/NAME.cil "
                    "(a least-privilege SELinux CIL module, compiled with secilc against a "
                    "base policy).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("trace", type=Path, metavar="TRACE")
    generate.add_argument("--name", required=True, help="profile name (letters, digits, . _ -)")
    generate.add_argument("--out-dir", type=Path, required=True, metavar="DIR")
    generate.set_defaults(func=_cmd_profile_generate)
    check = actions.add_parser(
        "check", help="prove offline that every recorded event is allowed",
        description="Evaluate the profiles in DIR against TRACE: seccomp with its argument "
                    "conditions, and AppArmor's file, exec, network and capability rules. Exit "
                    "0 if all is allowed; otherwise name the first event each profile would "
                    "deny and exit 1.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("directory", type=Path, metavar="DIR")
    check.add_argument("--trace", type=Path, required=True, metavar="TRACE")
    check.set_defaults(func=_cmd_profile_check)


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
