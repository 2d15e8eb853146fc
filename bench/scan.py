"""Scan speed: hardhost scan of a 200-package image against a feed the size of Debian's
security tracker export, compared in the same run with debsecan (Debian's own scanner) on
the same packages and issues, and with a plain Python loop over the same JSON.

    .venv/bin/python bench/scan.py [--packages 200] [--issues-per-source 10] [--seed 17]

The feed covers every source package of the machine's apt lists (all of bookworm after
`apt-get update`), each with a random 0 to 2N issues (N on average), each issue with
entries for bullseye, bookworm, trixie and sid as the tracker writes them. debsecan reads
its own compact per-release format, not the JSON: the same issues are written in it and
served from a file:// URL. The SBOM is this machine's first N installed packages.
Prints wall time and peak RSS of each, and the ratios; each is the best of --runs.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleet import timed  # noqa: E402
from hardhost.builder import sbom  # noqa: E402

BIN = Path(sys.executable).parent
LISTS = Path("/var/lib/apt/lists")
RELEASES = ("bullseye", "bookworm", "trixie", "sid")
URGENCIES = ("not yet assigned",) * 6 + ("unimportant", "low", "medium", "high")


def bookworm_sources(installed: set[str]) -> list[str]:
    """The source packages of the apt lists (a binary without Source: is its own source),
    and those of this machine."""
    found = set(installed)
    for path in sorted(LISTS.glob("*_Packages*")):
        data = (subprocess.run(["lz4cat", str(path)], capture_output=True, check=True).stdout
                if path.name.endswith(".lz4") else path.read_bytes())
        for stanza in data.split(b"\n\n"):
            source = re.search(rb"^Source: (\S+)", stanza, re.MULTILINE)
            name = re.search(rb"^Package: (\S+)", stanza, re.MULTILINE)
            if source or name:
                found.add((source or name).group(1).decode())  # type: ignore[union-attr]
    return sorted(found)


def make_feed(sources: list[str], per_source: int, chooser: random.Random,
              installed: dict[str, str]) -> tuple[dict[str, object], int]:
    feed: dict[str, object] = {}
    number = 0
    for source in sources:
        issues: dict[str, object] = {}
        for _ in range(chooser.randint(0, 2 * per_source)):
            number += 1
            base = installed.get(source, "1.0-1")
            kind = chooser.random()
            entry: dict[str, object]
            if kind < 0.6:
                entry = {"status": "resolved", "fixed_version": chooser.choice(
                    (base, f"{base}+deb12u1", "0.1-1", "0"))}
            elif kind < 0.9:
                entry = {"status": "open"}
            else:
                entry = {"status": "undetermined"}
            entry["urgency"] = chooser.choice(URGENCIES)
            entry["repositories"] = {"bookworm": base}
            if chooser.random() < 0.2:
                entry |= {"nodsa": "Minor issue", "nodsa_reason": "postponed"}
            issues[f"CVE-{2000 + number % 26}-{number}"] = {
                "description": "A flaw was found in " + source + ". " + "x" * 150,
                "scope": "remote", "debianbug": 1000000 + number,
                "releases": {release: entry for release in RELEASES}}
        if issues:
            feed[source] = issues
    return feed, number


def debsecan_data(feed: dict[str, object], release: str) -> bytes:
    """The same issues in debsecan's format (zlib text: names, then one line per source
    and issue with its fixed version in the release, then source-to-binary lines)."""
    names: list[str] = []
    lines: list[str] = []
    flags = {"low": "L", "medium": "M", "high": "H"}
    for source, issues in feed.items():
        assert isinstance(issues, dict)
        for issue, entry in issues.items():
            state = entry["releases"].get(release)
            if state is None or state.get("fixed_version") == "0":
                continue
            index = len(names)
            names.append(f"{issue},,{entry['description'][:60]}")
            fixed = state.get("fixed_version", "")
            urgency = flags.get(state["urgency"], " ")
            lines.append(f"{source},{index},S{urgency}R{'F' if fixed else ' '},{fixed},")
    text = "VERSION 1\n" + "\n".join(names) + "\n\n" + "\n".join(lines) + "\n\n\n"
    return zlib.compress(text.encode())


def status_file(packages: list[sbom.Package]) -> str:
    return "\n".join(
        f"Package: {p.name}\nStatus: install ok installed\nArchitecture: {p.architecture}\n"
        f"Version: {p.version}\n"
        + (f"Source: {p.source} ({p.source_version})\n" if p.source_version else
           f"Source: {p.source}\n")
        for p in packages) + "\n"


PLAIN_LOOP = """
import json, sys
from debian.debian_support import Version
feed = json.load(open(sys.argv[1]))
packages = json.load(open(sys.argv[2]))
hits = 0
for name, version in packages:
    for issue in feed.get(name, {}).values():
        state = issue["releases"].get("bookworm")
        if state and state.get("fixed_version", "") not in ("0",):
            fixed = state.get("fixed_version")
            if not fixed or Version(version) < Version(fixed):
                hits += 1
print(hits)
"""


def best(argv: list[str], runs: int, ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    results = [timed(argv, ok=ok) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results)


def generate(work: Path, args: argparse.Namespace) -> None:
    """Write the feed, the SBOM, debsecan's data and status file, and the loop's input."""
    chooser = random.Random(args.seed)
    packages = sbom.installed_packages(Path("/"))[:args.packages]
    installed = {p.source: p.effective_source_version for p in packages}
    sources = bookworm_sources(set(installed))
    feed, issues = make_feed(sources, args.issues_per_source, chooser, installed)
    feed_path = work / "feed.json"
    feed_path.write_text(json.dumps(feed))
    sbom.write(work / "sbom.spdx.json", sbom.document("bench", packages,
                                                      "2026-01-01T00:00:00Z", suite="bookworm"))
    (work / "debsecan").mkdir()
    (work / "debsecan/bookworm").write_bytes(debsecan_data(feed, "bookworm"))
    (work / "status").write_text(status_file(packages))
    (work / "pairs.json").write_text(json.dumps(sorted(installed.items())))
    print(f"feed: {len(feed)} source packages with issues of {len(sources)}, {issues} "
          f"issues x {len(RELEASES)} releases, {feed_path.stat().st_size / 2**20:.0f} MiB "
          f"JSON; debsecan's form of it: "
          f"{(work / 'debsecan/bookworm').stat().st_size / 2**20:.1f} MiB; "
          f"SBOM: {len(packages)} packages of {len(installed)} sources")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=200)
    parser.add_argument("--issues-per-source", type=int, default=10)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args)
        return
    with tempfile.TemporaryDirectory(prefix="hardhost-bench-scan-") as scratch:
        work = Path(scratch)
        # In a process of its own: a child forked from a process holding the feed would
        # count that process's memory as its own peak RSS (Linux carries it across exec).
        subprocess.run([sys.executable, __file__, "--generate", str(work),
                        "--packages", str(args.packages), "--issues-per-source",
                        str(args.issues_per_source), "--seed", str(args.seed)], check=True)
        feed_path, sbom_path, pairs = (work / "feed.json", work / "sbom.spdx.json",
                                       work / "pairs.json")
        runs: dict[str, tuple[float, float]] = {
            "hardhost scan": best([str(BIN / "hardhost"), "scan", str(sbom_path), "--feed",
                                   str(feed_path), "--fail-on", "never", "--json"],
                                  args.runs),
            "plain json loop": best([sys.executable, "-c", PLAIN_LOOP, str(feed_path),
                                     str(pairs)], args.runs),
        }
        try:
            runs["debsecan"] = best(
                ["debsecan", "--suite", "bookworm", "--source", f"file://{work}/debsecan/",
                 "--status", str(work / "status"), "--format", "detail",
                 "--history", str(work / "history")], args.runs)
        except (FileNotFoundError, SystemExit) as exc:
            print(f"debsecan: not run ({exc})")
        if "debsecan" in runs:
            theirs = set(subprocess.run(
                ["debsecan", "--suite", "bookworm", "--source", f"file://{work}/debsecan/",
                 "--status", str(work / "status"), "--format", "bugs", "--history",
                 str(work / "history")], capture_output=True, text=True,
                check=True).stdout.split())
            ours_json = json.loads(subprocess.run(
                [str(BIN / "hardhost"), "scan", str(sbom_path), "--feed", str(feed_path),
                 "--fail-on", "never", "--json"], capture_output=True, text=True,
                check=True).stdout)
            found = {f["id"] for f in ours_json["findings"]}
            print(f"findings: hardhost {len(found)} issues, debsecan {len(theirs)}; "
                  f"{'the same' if found == theirs else 'DIFFERENT'}")
        for name, (seconds, rss) in runs.items():
            print(f"{name:16s} {seconds:6.2f} s  peak RSS {rss:7.1f} MiB")
        ours = runs["hardhost scan"][0]
        for name, (seconds, _) in runs.items():
            if name != "hardhost scan":
                print(f"hardhost scan takes {ours / seconds:.2f}x the time of {name}")


if __name__ == "__main__":
    main()
