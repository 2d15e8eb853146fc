"""The `hardhost` command line. Every failure the user can act on is one line and an exit code.

Exit codes: 0 success; 1 a failed build or command, or drift; 2 bad usage, a malformed
input or a wrong path; 3 a host or VM that is unreachable or timed out; 4 a trust failure
(host key, credentials, manifest); 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from builder.durations import MAX_RECORDING, MAX_TIMEOUT, duration
from builder.errors import HardhostError, UsageError
from builder.inputs import read_bytes, read_text
from builder.log import setup_logging
from builder.outputs import check_output_dir, check_output_file, printable, write_atomic
from builder.workspace import IN_MEMORY_MIN_AVAILABLE, Workspace

if TYPE_CHECKING:
    from builder.spec import Spec
    from verifier.attest import Connection
    from verifier.tpm_attest import TpmPolicy
    from verifier.verdict import Verdict

log = logging.getLogger("hardhost")

EXIT_CODES = """\
exit codes:
  0    success
  1    a build or command failed, or attestation found drift
  2    bad usage, a malformed spec or input (FILE: KEY: what is wrong), a missing file
       or a path that cannot be written (checked before the work starts)
  3    a host or VM did not answer in time
  4    trust failure: unknown or changed host key, refused credentials, or a manifest
       with a bad signature, an untrusted key, a changed artifact or past its expiry
  130  interrupted (Ctrl-C or SIGTERM); fleet writes the verdicts of the hosts checked
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
    _check_build_output(args.output)  # before any stage: a bad -o must not cost a build
    require_root()
    key = load_private_key(_signing_key_path(args, spec.manifest.signing_key))
    extra: list[str] = []
    for key_file in args.authorized_key:
        text = read_text(key_file, what="authorized key file")
        extra.extend(line.strip() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))
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


def _check_build_output(output: Path) -> None:
    """OUTDIR may not exist yet (the build makes it, with its parents); the nearest folder
    that does must take new files, and nothing on the way may be a file."""
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == output:
        check_output_dir(output, what="build output")
    elif not existing.is_dir():
        raise UsageError(f"{output}: cannot make the build output folder: {existing} is not "
                         "a folder")
    else:
        first = existing / output.relative_to(existing).parts[0]
        check_output_dir(first, what="build output")


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
    from builder.outputs import printable
    from builder.signing import load_trusted_keys

    manifest, keyid = read_verified(args.file, load_trusted_keys(args.trust_key))
    name = printable(manifest.name)
    if not args.artifacts:
        print(f"{args.file}: good signature by {keyid[:16]}, {name}, expires "
              f"{manifest.expires}; artifacts not checked (--no-artifacts)")
        return 0
    checked = check_artifacts(manifest, args.file.parent)
    print(f"{args.file}: good signature by {keyid[:16]}, {name}, expires "
          f"{manifest.expires}; all {len(checked)} artifacts match")
    return 0


def _cmd_manifest_show(args: argparse.Namespace) -> int:
    import json

    from builder.manifest import read_verified
    from builder.outputs import printable
    from builder.signing import load_trusted_keys

    manifest, keyid = read_verified(args.file, load_trusted_keys(args.trust_key))
    statement = manifest.statement()
    if args.json:
        print(json.dumps(statement, indent=2, sort_keys=True))
        return 0
    predicate = statement["predicate"]
    # Signed is not harmless: escape what a terminal would act on.
    print(f"manifest of {printable(manifest.name)}, signed by {keyid[:16]}")
    for key in sorted(predicate):
        value = predicate[key]
        if isinstance(value, dict):
            print(f"{printable(key)}:")
            for inner in sorted(value):
                print(f"  {printable(inner)} = {printable(str(value[inner]))}")
        else:
            print(f"{printable(key)}: {printable(str(value))}")
    print("subjects:")
    for subject in manifest.subjects:
        print(f"  {subject.name}  sha256:{subject.sha256}")
    return 0


def _cmd_vm_start(args: argparse.Namespace) -> int:
    from builder import vm

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
    from builder import vm

    vm.stop(args.name, purge=args.purge)
    return 0


def _cmd_evidence(args: argparse.Namespace) -> int:
    from verifier.evidence import collect, render_table
    from verifier.transport import Target, connect

    target = Target.parse(args.target)
    conn = _connection(args)
    with connect(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=conn.timeout, ssh_config=conn.ssh_config) as session:
        evidence = collect(session, timeout=args.timeout)
    if args.json:
        print(evidence.to_json())
    else:
        print(render_table(target, evidence))
    return 0


def _cmd_profile_record(args: argparse.Namespace) -> int:
    from profiles.record import record

    command = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
    check_output_file(args.out, what="trace")
    if command:
        _require_program(command[0])
    trace, status = record(command, timeout=args.timeout)
    write_atomic(args.out, trace.to_json())
    log.info("recorded %d syscalls, %d files, %d executables, %d network calls (exit %d)",
             len(trace.syscalls), len(trace.files), len(trace.executables),
             len(trace.network), status)
    print(args.out)
    return 0


def _require_program(program: str) -> None:
    """strace reports a command it cannot run in its own log and exits as if recording had
    worked; a program that is not there is said here, before anything runs."""
    if "/" in program:
        found = os.path.isfile(program) and os.access(program, os.X_OK)
    else:
        found = shutil.which(program) is not None
    if not found:
        raise UsageError(f"{printable(program)}: no such program to record (not an executable "
                         "file, nor on PATH). Fix with: the program's full path after --")


def _cmd_profile_merge(args: argparse.Namespace) -> int:
    from profiles.trace import load, merge

    check_output_file(args.output, what="merged trace")
    merged = merge(load(path) for path in args.traces)
    write_atomic(args.output, merged.to_json())
    print(args.output)
    return 0


def _cmd_profile_generate(args: argparse.Namespace) -> int:
    from profiles.apparmor import check_name
    from profiles.generate import generate_all, seccomp_path, selinux_name
    from profiles.trace import load

    check_name(args.name)
    check_output_dir(args.out_dir, what="profiles")
    if args.out_dir.is_dir():  # an existing folder: each profile's path must take a file
        for path in (seccomp_path(args.out_dir, args.name),
                     args.out_dir / f"{selinux_name(args.name)}.cil",
                     args.out_dir / f"{args.name}.apparmor"):
            check_output_file(path, what="profile")
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


def _json_errors(command: Callable[[argparse.Namespace], int]
                 ) -> Callable[[argparse.Namespace], int]:
    """With --json, a command that cannot attest still prints one JSON document on stdout
    (host, status "error", error, exit_code), so a program reading stdout gets an answer; the
    one-line error goes to stderr and the exit code is the same."""
    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Exception as exc:
            if args.json:
                code = exc.exit_code if isinstance(exc, HardhostError) else 1
                print(json.dumps({"host": args.target, "status": "error", "error": str(exc),
                                  "exit_code": code}, indent=2, sort_keys=True))
            raise
    return wrapper


@_json_errors
def _cmd_attest(args: argparse.Namespace) -> int:
    from builder.manifest import read_verified
    from builder.signing import load_trusted_keys
    from verifier.attest import attest, attest_and_reset, manifest_digest
    from verifier.tpm_attest import TpmPolicy, default_registry, predictions
    from verifier.transport import Target
    from verifier.verdict import render

    target = Target.parse(args.target)
    read_bytes(args.manifest, what="manifest")  # a missing one is a typo (2), not trust (4)
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

    # Every output is checked before the first host is contacted: a typo in --junit found
    # after ten minutes of attestation would lose the run.
    for path, what in ((args.json, "JSON verdicts"), (args.junit, "JUnit XML")):
        if path is not None:
            check_output_file(path, what=what)
    history_path = args.history or history.default_path()
    history.prepare(history_path, create_folder=args.history is None)
    started = now()
    trusted = load_trusted_keys(args.trust_key)
    hosts = inventory.load(args.inventory, limit=args.limit,
                           allow_executable=args.allow_executable_inventory)
    manifests = fleet.Manifests(args.manifest, trusted)
    manifests.check(hosts)
    conn = _connection(args)
    log.info("Attesting %d hosts, %d at a time", len(hosts), args.forks)
    done: dict[str, Verdict] = {}  # by inventory name, the latest verdict of each host

    def keep(verdict: Verdict) -> None:
        done[verdict.host] = verdict

    def so_far() -> list[Verdict]:
        return [done[h.name] for h in hosts if h.name in done]

    try:
        verdicts = fleet.run(hosts, manifests, conn, args.forks, on_done=keep)
        if args.reset:
            history.record(history_path, started, str(args.inventory), verdicts)
            verdicts = fleet.reset_drifted(hosts, verdicts, manifests, conn,
                                           batch=args.reset_batch,
                                           reset_timeout=args.reset_timeout, on_done=keep)
    except KeyboardInterrupt:
        partial = so_far()
        _write_fleet_outputs(args, history_path, started, partial, interrupted=True)
        print(f"hardhost: interrupted after {len(partial)} of {len(hosts)} hosts; their "
              "verdicts are written", file=sys.stderr)
        return 130
    except BaseException:
        _write_fleet_outputs(args, history_path, started, so_far(), interrupted=True)
        raise
    _write_fleet_outputs(args, history_path, started, verdicts)
    _print_fleet(verdicts)
    return fleet.exit_code(verdicts)


def _write_fleet_outputs(args: argparse.Namespace, history_path: Path, started: str,
                         verdicts: list[Verdict], *, interrupted: bool = False) -> None:
    """The history, --json and --junit, each attempted even when another fails. After an
    interruption a failure is only reported: the interruption is what the user hears of."""
    from verifier import fleet, history

    if not verdicts:
        return
    writers: list[Callable[[], object]] = [
        lambda: history.record(history_path, started, str(args.inventory), verdicts)]
    if args.json:
        writers.append(lambda: fleet.write_json(args.json, verdicts))
    if args.junit:
        writers.append(lambda: fleet.write_junit(args.junit, verdicts))
    failures: list[HardhostError] = []
    for write in writers:
        try:
            write()
        except HardhostError as exc:
            failures.append(exc)
    for failure in failures[1:] if not interrupted else failures:
        print(f"hardhost: {failure}", file=sys.stderr)
    if failures and not interrupted:
        raise failures[0]


def _print_fleet(verdicts: Sequence[Verdict]) -> None:
    """One line per host: name, address, status, and the first findings or the error, all
    escaped: names and findings come from inventories and hosts."""
    names = [printable(v.host) for v in verdicts]
    addresses = [printable(v.address or "-") for v in verdicts]
    width, address_width = max(map(len, names)), max(map(len, addresses))
    for name, address, verdict in zip(names, addresses, verdicts, strict=True):
        drift = [printable(f.id) for f in verdict.findings if f.counts()]
        detail = (printable(verdict.error) if verdict.error
                  else ", ".join(drift[:4]) + (" …" if len(drift) > 4 else ""))
        print(f"{name.ljust(width)}  {address.ljust(address_width)}  {verdict.status:<6}  "
              f"{detail}")


def _cmd_history(args: argparse.Namespace) -> int:
    from verifier import history

    path = args.db or history.default_path()
    if args.db is None and not path.exists():
        print(f"{path}: no fleet run recorded yet")
        return 0
    rows = history.summary(path, args.host)
    if not rows:
        print(f"{path}: no verdicts recorded" + (f" for {printable(args.host)}"
                                                 if args.host else ""))
        return 0
    hosts = [printable(r.host) for r in rows]
    addresses = [printable(r.address or "-") for r in rows]
    width, address_width = max(map(len, hosts)), max(map(len, addresses))
    print(f"{'host'.ljust(width)}  {'address'.ljust(address_width)}  last      "
          "at                    last passed")
    for host, address, row in zip(hosts, addresses, rows, strict=True):
        print(f"{host.ljust(width)}  {address.ljust(address_width)}  "
              f"{printable(row.last_status):<8}  {printable(row.last_time)}  "
              f"{printable(row.last_pass) or 'never'}")
    return 0


def _cmd_terraform_attest(args: argparse.Namespace) -> int:
    import json

    from verifier.terraform import MAX_QUERY, run

    print(json.dumps(run(sys.stdin.read(MAX_QUERY + 1)), sort_keys=True))
    return 0


def _seconds(maximum: float) -> Callable[[str], float]:
    """An argparse type for a duration: finite, more than zero and at most `maximum`."""
    def parse(value: str) -> float:
        try:
            return duration(value, what="seconds", maximum=maximum)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("seconds: ")) from None
    return parse


# Every timeout and wait (connecting, evidence, a reboot, a VM's boot) is at most an hour.
_positive = _seconds(MAX_TIMEOUT)


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
                       help="folder that receives NAME/, made if absent; checked before "
                            "any stage runs")
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
                    "DIR is made (mode 0700) if its parent exists. Refuses to overwrite an "
                    "existing key or to write through a symbolic link, and refuses a DIR "
                    "that group or others may write (they could swap the public key).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the key pair")
    keygen.set_defaults(func=_cmd_keygen)

    from builder.manifest import MAX_VALIDITY_DAYS

    manifest = commands.add_parser(
        "manifest", help="verify or show a signed manifest",
        description="Check a build's manifest.dsse.json: a DSSE envelope around an in-toto "
                    "statement. Exit 4 for a bad signature, an untrusted key, a truncated "
                    "or malformed file, a changed or missing artifact, a manifest created "
                    "in the future (beyond 5 minutes of clock skew), valid for more than "
                    f"{MAX_VALIDITY_DAYS} days, or expired. Exit 2 when FILE or the "
                    "trusted key is missing or not a regular file.")
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
                             help="check the signature and validity only. By default every "
                                  "artifact the manifest names must be a regular file beside "
                                  "FILE (not a symbolic link) with the signed digest; a "
                                  "missing one is exit 4")
        else:
            sub.add_argument("--json", action="store_true", help="print the statement as JSON")

    vm = commands.add_parser("vm", help="boot and stop images under qemu",
                             description="Run built images under qemu, SSH forwarded to a "
                                         "loopback port. State lives under "
                                         "~/.local/state/hardhost/vms/NAME.")
    vm_commands = vm.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    start = vm_commands.add_parser(
        "start", help="boot an image and wait until SSH answers with the provisioned key",
        description="Boot IMAGE_DIR under qemu. IMAGE_DIR/manifest.dsse.json must verify "
                    "against --trust-key, and every file the boot reads (vmlinuz, "
                    "initrd.img, root.img, root.verity; with --tpm esp.img instead of the "
                    "first two) must match its signed digest, or nothing starts (exit 4); "
                    "the kernel command line is the manifest's, never build.json's. "
                    "On first start, an SSH host key and a "
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
    start.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                       help="trusted public key (PEM) that signed the image's manifest, or a "
                            "folder of *.pub keys")
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
        description="Connect to TARGET ([user@]host[:port]) with a strict host key from "
                    "--known-hosts, run one fixed read-only script, and show what it found: "
                    "the root's filesystem and dm-verity status, the mount table and its "
                    "namespace, the overlays and what changed in them, sysctls, AppArmor and "
                    "sshd settings, failed units, and the script's own exit status.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    evidence.add_argument("target", metavar="TARGET", help="[user@]host[:port]")
    _connection_options(evidence)
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

    # evidence has no --trust-on-first-use: it only ever reads a host it already knows.
    tofu = bool(getattr(args, "trust_on_first_use", False))
    check_options(known_hosts=args.known_hosts, identity=args.identity,
                  ssh_config=args.ssh_config, trust_on_first_use=tofu)
    return Connection(args.known_hosts, args.identity, args.timeout, tofu,
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
                    "ansible_ssh_private_key_file and hardhost_manifest; a host whose "
                    "variables are wrong is that host's error (exit 2), and the others are "
                    "still checked. Verdicts are named by inventory name, with the address "
                    "beside it. Every output is checked before the first host is contacted, "
                    "and written for every host checked, also when the run is interrupted "
                    "(exit 130). Every run is stored in the SQLite history. Exit 0 when all "
                    "pass, 1 on drift (or a host's unexpected failure), 2 if a host's "
                    "variables or manifest path are wrong, 3 if a host is unreachable, 4 on "
                    "a trust failure (the worst wins).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet.add_argument("inventory", type=Path, metavar="INVENTORY",
                       help="Ansible inventory: an INI or YAML file, or a folder of them")
    fleet.add_argument("--allow-executable-inventory", action="store_true",
                       help="let Ansible run an executable inventory file (or one in an "
                            "inventory folder) as a program, as this user; refused without "
                            "it (exit 2)")
    fleet.add_argument("--manifest", type=Path, metavar="FILE",
                       help="manifest for hosts without a hardhost_manifest variable; "
                            "without it, every host needs that variable (else exit 2 before "
                            "any host is contacted)")
    fleet.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                       help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    _connection_options(fleet)
    fleet.add_argument("--trust-on-first-use", action="store_true",
                       help="accept unknown host keys once and record them")
    fleet.add_argument("--forks", type=_positive_int, default=50, metavar="N",
                       help="hosts checked at once (default: 50)")
    fleet.add_argument("--limit", metavar="PATTERN", help="Ansible host pattern to select hosts")
    fleet.add_argument("--history", type=Path, default=None, metavar="DB",
                       help="SQLite history, created if absent; its folder must exist "
                            f"(default: {default_path()}, folder made as needed)")
    fleet.add_argument("--reset", action="store_true",
                       help="reboot drifted hosts and attest them again (both runs are kept "
                            "in the history; the outputs show the final verdicts)")
    fleet.add_argument("--reset-batch", type=_positive_int, default=5, metavar="N",
                       help="drifted hosts rebooted at once (default: 5)")
    fleet.add_argument("--reset-timeout", type=_positive, default=300, metavar="SECONDS",
                       help=f"how long to wait for each host to return (default: 300, at "
                            f"most {MAX_TIMEOUT:g})")
    fleet.add_argument("--json", type=Path, metavar="FILE",
                       help="write the verdicts as JSON (replaced whole, never in part)")
    fleet.add_argument("--junit", type=Path, metavar="FILE",
                       help="write JUnit XML for CI, a test case per host (replaced whole)")
    fleet.set_defaults(func=_cmd_fleet)

    history = commands.add_parser(
        "history", help="show the last verdicts and when each host last passed",
        description="Read the fleet history: each host's last verdict, its address, and "
                    "when it last passed. The database is only read: a --db that does not "
                    "exist is exit 2.", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("--host", help="only this host (its inventory name, as shown)")
    history.add_argument("--db", type=Path, default=None, metavar="DB",
                         help=f"SQLite history written by fleet (default: {default_path()})")
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
    attest.add_argument("--json", action="store_true",
                        help="print the verdict as JSON; when the host cannot be attested, a "
                             "JSON document with status \"error\", the error and the exit "
                             "code")
    attest.add_argument("--reset", action="store_true",
                        help="on drift, reboot the host and attest it again")
    attest.add_argument("--reset-timeout", type=_positive, default=300, metavar="SECONDS",
                        help="how long to wait for the host to return (default: 300, at most "
                             f"{MAX_TIMEOUT:g})")
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
                        help="trace file to write (JSON; checked before CMD runs, replaced "
                             "whole)")
    record.add_argument("--timeout", type=_seconds(MAX_RECORDING), default=None,
                        metavar="SECONDS", help="stop the command after this long (at most "
                        f"{MAX_RECORDING:g}; default: no limit)")
    record.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the command to record")
    record.set_defaults(func=_cmd_profile_record)
    merge = actions.add_parser("merge", help="merge traces of several runs into one",
                               description="Merge traces: the union of everything recorded.",
                               epilog=EXIT_CODES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument("traces", type=Path, nargs="+", metavar="TRACE",
                       help="traces written by profile record")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="TRACE",
                       help="merged trace to write (checked first, replaced whole)")
    merge.set_defaults(func=_cmd_profile_merge)
    generate = actions.add_parser(
        "generate", help="write the profiles for a trace",
        description="Write from TRACE: DIR/NAME.seccomp.json (OCI runtime-spec seccomp), "
                    "DIR/NAME.apparmor (checked with apparmor_parser -Q -K) and DIR/NAME.cil "
                    "(a least-privilege SELinux CIL module, compiled with secilc against a "
                    "base policy).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("trace", type=Path, metavar="TRACE", help="a recorded trace")
    generate.add_argument("--name", required=True, help="profile name (letters, digits, . _ -)")
    generate.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                          help="folder for the three profiles, made if absent (its parent "
                               "must exist)")
    generate.set_defaults(func=_cmd_profile_generate)
    check = actions.add_parser(
        "check", help="prove offline that every recorded event is allowed",
        description="Evaluate the profiles in DIR against TRACE: seccomp with its argument "
                    "conditions, and AppArmor's file, exec, network and capability rules. Exit "
                    "0 if all is allowed; otherwise name the first event each profile would "
                    "deny and exit 1.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("directory", type=Path, metavar="DIR",
                       help="folder of profiles written by profile generate")
    check.add_argument("--trace", type=Path, required=True, metavar="TRACE",
                       help="the recorded trace whose every event must be allowed")
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
    except Exception as exc:
        # A bug still gets one line and exit 1; its traceback is for -v and a bug report.
        log.debug("internal error", exc_info=True)
        print(f"hardhost: internal error: {type(exc).__name__}: {printable(str(exc))[:300]} "
              "(run with -v for the traceback, and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
