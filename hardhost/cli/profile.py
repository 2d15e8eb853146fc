"""`hardhost profile record|merge|generate|check`: a workload's security profiles from one
recording of it."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from hardhost.cli.common import Commands, add_command, seconds
from hardhost.core.durations import MAX_RECORDING
from hardhost.core.errors import FAILED, OK, UsageError
from hardhost.core.outputs import check_output_dir, check_output_file, printable, write_atomic

log = logging.getLogger("hardhost")


def register(commands: Commands) -> None:
    profile = add_command(
        commands, "profile", help="record a workload and generate its security profiles",
        description="One recording of a workload (strace) yields its seccomp, AppArmor and "
                    "SELinux profiles; check proves offline that the recording is allowed.")
    actions = profile.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    record = add_command(
        actions, "record", help="run a command under strace and write its normalised trace",
        description="Run CMD under strace -f and write what it did: syscalls (with clone "
                    "flags, socket families and personality), executed binaries, files with "
                    "their access modes, network calls and inferred capabilities.")
    record.add_argument("--out", type=Path, required=True, metavar="TRACE",
                        help="trace file to write (JSON; checked before CMD runs, replaced "
                             "whole)")
    record.add_argument("--timeout", type=seconds(MAX_RECORDING), default=None,
                        metavar="SECONDS", help="stop the command after this long (at most "
                        f"{MAX_RECORDING:g}; default: no limit)")
    record.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the command to record")
    record.set_defaults(func=_cmd_profile_record)
    merge = add_command(actions, "merge", help="merge traces of several runs into one",
                        description="Merge traces: the union of everything recorded.")
    merge.add_argument("traces", type=Path, nargs="+", metavar="TRACE",
                       help="traces written by profile record")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="TRACE",
                       help="merged trace to write (checked first, replaced whole)")
    merge.set_defaults(func=_cmd_profile_merge)
    generate = add_command(
        actions, "generate", help="write the profiles for a trace",
        description="Write from TRACE: DIR/NAME.seccomp.json (OCI runtime-spec seccomp), "
                    "DIR/NAME.apparmor (checked with apparmor_parser -Q -K) and DIR/NAME.cil "
                    "(a least-privilege SELinux CIL module, compiled with secilc against a "
                    "base policy).")
    generate.add_argument("trace", type=Path, metavar="TRACE", help="a recorded trace")
    generate.add_argument("--name", required=True, help="profile name (letters, digits, . _ -)")
    generate.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                          help="folder for the three profiles, made if absent (its parent "
                               "must exist)")
    generate.set_defaults(func=_cmd_profile_generate)
    check = add_command(
        actions, "check", help="prove offline that every recorded event is allowed",
        description="Evaluate the profiles in DIR against TRACE: seccomp with its argument "
                    "conditions, and AppArmor's file, exec, network and capability rules. Exit "
                    f"{OK.code} if all is allowed; otherwise name the first event each profile "
                    f"would deny and exit {FAILED.code}.")
    check.add_argument("directory", type=Path, metavar="DIR",
                       help="folder of profiles written by profile generate")
    check.add_argument("--trace", type=Path, required=True, metavar="TRACE",
                       help="the recorded trace whose every event must be allowed")
    check.set_defaults(func=_cmd_profile_check)


def _cmd_profile_record(args: argparse.Namespace) -> int:
    from hardhost.profiles.record import record

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
    from hardhost.profiles.trace import load, merge

    check_output_file(args.output, what="merged trace")
    merged = merge(load(path) for path in args.traces)
    write_atomic(args.output, merged.to_json())
    print(args.output)
    return 0


def _cmd_profile_generate(args: argparse.Namespace) -> int:
    from hardhost.profiles.apparmor import check_name
    from hardhost.profiles.generate import generate_all, seccomp_path, selinux_name
    from hardhost.profiles.trace import load

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
    from hardhost.profiles.generate import check_all
    from hardhost.profiles.trace import load

    denials = check_all(args.directory, load(args.trace))
    for line in denials:
        print(line)
    if not denials:
        print(f"{args.directory}: every recorded event is allowed")
    return FAILED.code if denials else OK.code
