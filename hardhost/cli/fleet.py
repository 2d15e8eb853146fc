"""`hardhost fleet` and `hardhost history`: every host of an inventory, and what is known of
each from earlier runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hardhost.cli.common import (
    DATABASE_HELP,
    Commands,
    add_command,
    connection,
    connection_options,
    database,
    positive,
    positive_int,
    tpm_options,
    tpm_policy,
)
from hardhost.cli.scan import advisory_options, pinned, policy, wants_feed
from hardhost.core.durations import MAX_TIMEOUT
from hardhost.core.errors import (
    FAILED,
    INTERRUPTED,
    OK,
    TRUST,
    UNREACHABLE,
    USAGE,
    HardhostError,
    UsageError,
)
from hardhost.core.outputs import check_output_file, printable, write_atomic
from hardhost.verifier.database import shown

if TYPE_CHECKING:
    from hardhost.verifier.exposure import Exposure, FeedPolicy
    from hardhost.verifier.history import HostHistory, UpdateRecord
    from hardhost.verifier.verdict import Verdict

log = logging.getLogger("hardhost")


def register(commands: Commands) -> None:
    from hardhost.verifier.history import default_path

    fleet = add_command(
        commands, "fleet", help="attest every host of an Ansible inventory",
        description="Read INVENTORY (Ansible INI or YAML, with groups and host variables) with "
                    "ansible-core, and attest its hosts concurrently, at most --forks at a "
                    "time. Host variables may set ansible_host, ansible_port, ansible_user, "
                    "ansible_ssh_private_key_file and hardhost_manifest; a host whose "
                    f"variables are wrong is that host's error (exit {USAGE.code}), and the "
                    "others are still checked. Verdicts are named by inventory name, with the "
                    "address beside it. Every output is checked before the first host is "
                    "contacted, and written for every host checked, also when the run is "
                    f"interrupted (exit {INTERRUPTED.code}). Every run is stored in the SQLite "
                    f"history. Exit {OK.code} when all pass, {FAILED.code} on drift (or a "
                    f"host's unexpected failure), {USAGE.code} if a host's variables or "
                    f"manifest path are wrong, {UNREACHABLE.code} if a host is unreachable, "
                    f"{TRUST.code} on a trust failure (the worst wins).")
    fleet.add_argument("inventory", type=Path, metavar="INVENTORY",
                       help="Ansible inventory: an INI or YAML file, or a folder of them")
    fleet.add_argument("--allow-executable-inventory", action="store_true",
                       help="let Ansible run an executable inventory file (or one in an "
                            "inventory folder) as a program, as this user; refused without "
                            f"it (exit {USAGE.code})")
    fleet.add_argument("--manifest", type=Path, metavar="FILE",
                       help="manifest for hosts without a hardhost_manifest variable; "
                            "without it, every host needs that variable (else exit "
                            f"{USAGE.code} before any host is contacted)")
    fleet.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                       help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    connection_options(fleet)
    fleet.add_argument("--trust-on-first-use", action="store_true",
                       help="accept unknown host keys once and record them")
    fleet.add_argument("--forks", type=positive_int, default=50, metavar="N",
                       help="hosts checked at once (default: 50)")
    fleet.add_argument("--limit", metavar="PATTERN", help="Ansible host pattern to select hosts")
    fleet.add_argument("--shard", metavar="K/N",
                       help="check only slice K of N (from 1) of the hosts, sorted by name: "
                            "the N jobs of an AWX slice or a Kubernetes indexed job (pass "
                            "$((JOB_COMPLETION_INDEX + 1))/N) check every host once between "
                            "them; a shard with no hosts writes empty outputs and exits "
                            f"{OK.code}")
    fleet.add_argument("--history", type=database, default=None, metavar="DB",
                       help=f"the history: {DATABASE_HELP}; an SQLite file is created if "
                            "absent, in a folder that must exist (default: "
                            f"{default_path()}, folder made as needed)")
    fleet.add_argument("--reset", action="store_true",
                       help="reboot drifted hosts and attest them again (both runs are kept "
                            "in the history; the outputs show the final verdicts)")
    fleet.add_argument("--reset-batch", type=positive_int, default=5, metavar="N",
                       help="drifted hosts rebooted at once (default: 5)")
    fleet.add_argument("--reset-timeout", type=positive, default=300, metavar="SECONDS",
                       help=f"how long to wait for each host to return (default: 300, at "
                            f"most {MAX_TIMEOUT:g})")
    fleet.add_argument("--json", type=Path, metavar="FILE",
                       help="write the verdicts as JSON (replaced whole, never in part)")
    fleet.add_argument("--junit", type=Path, metavar="FILE",
                       help="write JUnit XML for CI, a test case per host (replaced whole)")
    advisory_options(fleet, required=False,
                     use="each host that passed is reported with the known vulnerabilities "
                         "of the image it proved it runs, from that image's SBOM beside its "
                         "manifest (nothing more runs on the host); --fail-on and "
                         "--fail-on-unfixed say which count, the exit code stays the "
                         "attestation's", fails=False)
    fleet.set_defaults(func=_cmd_fleet)

    rollout = add_command(
        commands, "fleet-update", help="update an inventory's hosts in waves (also spelled "
        "`fleet update`)",
        description="Update the hosts of INVENTORY to the image in --image, as `hardhost "
                    "update` updates one host, in waves: --waves lists how far each wave "
                    "reaches, as host counts or percentages of the fleet (default "
                    "1,10%,50%,100%: one host first, then up to a tenth, half, all). A "
                    "wave's hosts are updated at most --forks at a time, and the next wave "
                    "starts when each has an outcome. A host fails when it is rolled back or "
                    "cannot be updated; when a wave has more failures than --max-failures, "
                    "the rollout stops and the hosts after it are only attested, to report "
                    "the version they run. Prints each host's outcome and version; exit "
                    f"{OK.code} when every host runs the new image, {FAILED.code} when any "
                    "was rolled back or left alone, else the worst host's error code.")
    rollout.prog = "hardhost fleet update"
    rollout.add_argument("inventory", type=Path, metavar="INVENTORY",
                         help="Ansible inventory: an INI or YAML file, or a folder of them")
    rollout.add_argument("--image", type=Path, required=True, metavar="DIR",
                         help="the new image: a build's OUTDIR/NAME")
    rollout.add_argument("--manifests", type=Path, required=True, metavar="STORE",
                         help="the manifest store, as for `hardhost update`")
    rollout.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                         help="trusted manifest signing key (PEM), or a folder of *.pub keys")
    rollout.add_argument("--waves", default="1,10%,50%,100%", metavar="LIST",
                         help="cumulative reach of each wave (default: 1,10%%,50%%,100%%); "
                              "the last must be 100%%")
    rollout.add_argument("--max-failures", default="0", metavar="N|P%",
                         help="failures a wave may have before the rollout stops: a count "
                              "or a percentage of the wave (default: 0)")
    rollout.add_argument("--forks", type=positive_int, default=10, metavar="N",
                         help="hosts of a wave updated at once (default: 10)")
    rollout.add_argument("--allow-downgrade", action="store_true",
                         help="install a version older than a host's running one")
    rollout.add_argument("--reboot-timeout", type=positive, default=900, metavar="SECONDS",
                         help="how long to wait for each reboot (default: 900, at most "
                              f"{MAX_TIMEOUT:g})")
    rollout.add_argument("--limit", metavar="PATTERN", help="Ansible host pattern")
    rollout.add_argument("--allow-executable-inventory", action="store_true",
                         help="let Ansible run an executable inventory as a program")
    rollout.add_argument("--json", type=Path, metavar="FILE",
                         help="write each host's outcome and version as JSON (replaced whole)")
    connection_options(rollout)
    tpm_options(rollout, "each host's attestations quote its TPM")
    rollout.set_defaults(func=_cmd_fleet_update, trust_on_first_use=False)

    history = add_command(
        commands, "history", help="show the last verdicts and when each host last passed",
        description="Read the fleet history: each host's last verdict, its address, and "
                    "when it last passed; with --updates, the outcome of each update. The "
                    "database is only read: a --db that does not "
                    f"exist is exit {USAGE.code}.")
    history.add_argument("--host", help="only this host (its inventory name, as shown)")
    history.add_argument("--db", type=database, default=None, metavar="DB",
                         help=f"the history written by fleet, update and serve: "
                              f"{DATABASE_HELP} (default: {default_path()})")
    history.add_argument("--updates", action="store_true",
                         help="show the recorded updates instead, oldest first: each host's "
                              "outcome, versions and reason")
    history.add_argument("--json", action="store_true",
                         help="print a JSON array of objects instead of a table")
    history.set_defaults(func=_cmd_history)


def _cmd_fleet(args: argparse.Namespace) -> int:
    from hardhost.image.signing import load_trusted_keys
    from hardhost.verifier import exposure, fleet, history, inventory
    from hardhost.verifier.verdict import now

    # Every output is checked before the first host is contacted: a typo in --junit found
    # after ten minutes of attestation would lose the run.
    for path, what in ((args.json, "JSON verdicts"), (args.junit, "JUnit XML")):
        if path is not None:
            check_output_file(path, what=what)
    advisories = _advisories(args)
    shard = inventory.parse_shard(args.shard) if args.shard else None
    history_path = args.history or history.default_path()
    history.prepare(history_path, create_folder=args.history is None)
    started = now()
    trusted = load_trusted_keys(args.trust_key)
    hosts = inventory.load(args.inventory, limit=args.limit,
                           allow_executable=args.allow_executable_inventory)
    if shard is not None:
        total, hosts = len(hosts), inventory.shard_hosts(hosts, shard)
        log.info("Shard %s: %d of the %d hosts", shard, len(hosts), total)
    manifests = fleet.Manifests(args.manifest, trusted)
    manifests.check(hosts)
    conn = connection(args)
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
        return INTERRUPTED.code
    except BaseException:
        _write_fleet_outputs(args, history_path, started, so_far(), interrupted=True)
        raise
    exposures = None
    if advisories is not None:
        exposures = exposure.assess(
            verdicts, {h.name: h.manifest or args.manifest for h in hosts},
            manifests.load_all(hosts), advisories)
    _write_fleet_outputs(args, history_path, started, verdicts, exposures=exposures)
    _print_fleet(verdicts)
    if advisories is not None and exposures is not None:
        print(f"\nKnown vulnerabilities (feed {printable(advisories.feed.name)}, "
              f"{advisories.policy.describe()}):")
        print(exposure.render(exposures))
    return fleet.exit_code(verdicts)


def _advisories(args: argparse.Namespace) -> FeedPolicy | None:
    """--feed's inputs, checked before any host is contacted; None without --feed."""
    from hardhost.advisories.vex import read_vex
    from hardhost.verifier.exposure import FeedPolicy

    if not wants_feed(args):
        return None
    if not args.feed.is_file():
        raise UsageError(f"{args.feed}: no such feed file")
    return FeedPolicy(args.feed, policy(args), read_vex(args.vex), pinned(args), args.feed_date)


def _cmd_fleet_update(args: argparse.Namespace) -> int:
    from hardhost.image.signing import load_trusted_keys
    from hardhost.verifier import inventory, rollout
    from hardhost.verifier.update import load_image, load_store

    if args.json is not None:
        check_output_file(args.json, what="JSON outcomes")
    waves = rollout.parse_waves(args.waves)
    rollout.parse_max_failures(args.max_failures, 1)
    trusted = load_trusted_keys(args.trust_key)
    new = load_image(args.image, trusted)
    store = load_store(args.manifests, trusted)
    hosts = inventory.load(args.inventory, limit=args.limit,
                           allow_executable=args.allow_executable_inventory)
    conn = connection(args, tpm_policy(args))
    results = rollout.rollout(hosts, new, store, conn, waves=waves,
                              max_failures=args.max_failures, forks=args.forks,
                              reboot_timeout=args.reboot_timeout,
                              allow_downgrade=args.allow_downgrade)
    if args.json is not None:
        write_atomic(args.json, (json.dumps([r.to_dict() for r in results], indent=2,
                                            sort_keys=True) + "\n").encode())
    names = [printable(r.host) for r in results]
    width = max(map(len, names), default=4)
    for name, result in zip(names, results, strict=True):
        wave = str(result.wave) if result.wave else "-"
        print(f"{name.ljust(width)}  wave {wave:<3}  {result.outcome:<11}  "
              f"{printable(result.version) or '?':<12}  {printable(result.reason)[:200]}")
    return rollout.exit_code(results)


def _write_fleet_outputs(args: argparse.Namespace, history_path: str | Path, started: str,
                         verdicts: list[Verdict], *, interrupted: bool = False,
                         exposures: list[Exposure] | None = None) -> None:
    """The history, --json and --junit, each attempted even when another fails. After an
    interruption a failure is only reported: the interruption is what the user hears of."""
    from hardhost.verifier import fleet, history

    if not verdicts and interrupted:
        return  # nothing was checked; outputs of an earlier run stay as they were
    writers: list[Callable[[], object]] = [
        lambda: history.record(history_path, started, str(args.inventory), verdicts)]
    advisories = None if exposures is None else {e.host: e.to_dict() for e in exposures}
    if args.json:
        writers.append(lambda: fleet.write_json(args.json, verdicts, advisories))
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
    if not verdicts:
        return
    names = [printable(v.host) for v in verdicts]
    addresses = [printable(v.address or "-") for v in verdicts]
    versions = [printable(v.image_version or "-") for v in verdicts]
    width, address_width = max(map(len, names)), max(map(len, addresses))
    version_width = max(map(len, versions))
    for name, address, version, verdict in zip(names, addresses, versions, verdicts,
                                               strict=True):
        drift = [printable(f.id) for f in verdict.findings if f.counts()]
        detail = (printable(verdict.error) if verdict.error
                  else ", ".join(drift[:4]) + (" …" if len(drift) > 4 else ""))
        print(f"{name.ljust(width)}  {address.ljust(address_width)}  "
              f"{version.ljust(version_width)}  {verdict.status:<6}  {detail}")


def _cmd_history(args: argparse.Namespace) -> int:
    from hardhost.verifier import history

    path = args.db or history.default_path()
    if args.db is None and not path.exists():
        print("[]" if args.json else f"{path}: no fleet run recorded yet")
        return 0
    if args.updates:
        updates = history.updates(path, args.host)
        return _show_history(args, path, "updates", [dataclasses.asdict(u) for u in updates],
                             lambda: _print_updates(updates))
    rows = history.summary(path, args.host)
    return _show_history(args, path, "verdicts", [dataclasses.asdict(r) for r in rows],
                         lambda: _print_summary(rows))


def _show_history(args: argparse.Namespace, path: str | Path, what: str,
                  records: list[dict[str, str]], table: Callable[[], None]) -> int:
    if args.json:
        print(json.dumps(records, indent=2))
    elif not records:
        print(f"{shown(str(path))}: no {what} recorded"
              + (f" for {printable(args.host)}" if args.host else ""))
    else:
        table()
    return 0


def _print_summary(rows: Sequence[HostHistory]) -> None:
    hosts = [printable(r.host) for r in rows]
    addresses = [printable(r.address or "-") for r in rows]
    width, address_width = max(map(len, hosts)), max(map(len, addresses))
    print(f"{'host'.ljust(width)}  {'address'.ljust(address_width)}  last      "
          "at                    last passed")
    for host, address, row in zip(hosts, addresses, rows, strict=True):
        print(f"{host.ljust(width)}  {address.ljust(address_width)}  "
              f"{printable(row.last_status):<8}  {printable(row.last_time)}  "
              f"{printable(row.last_pass) or 'never'}")


def _print_updates(rows: Sequence[UpdateRecord]) -> None:
    hosts = [printable(r.host) for r in rows]
    width = max(map(len, hosts))
    print(f"{'host'.ljust(width)}  at                    outcome      from -> to  reason")
    for host, row in zip(hosts, rows, strict=True):
        versions = f"{printable(row.from_version) or '?'} -> {printable(row.to_version)}"
        print(f"{host.ljust(width)}  {printable(row.time):<20}  {printable(row.outcome):<11}  "
              f"{versions:<10}  {printable(row.reason) or '-'}")
