"""The version order the scan uses (python-debian's `Version`) against dpkg's own, on every
distinct version this machine knows: its dpkg database and its apt package lists (all of
bookworm, when `apt-get update` has run), plus generated edge cases.

The versions are sorted with `Version`; dpkg then confirms each adjacent pair (`lt`, or `eq`
where `Version` finds two spellings equal, such as `0:1.0` and `1.0`). N-1 checks prove the
whole order, since dpkg's is transitive. They run as one xargs process that runs dpkg for
each pair and fails if any check fails; only then is each pair checked alone, to name it.
"""

from __future__ import annotations

import itertools
import random
import re
import subprocess
from pathlib import Path

from debian.debian_support import Version

STATUS = Path("/var/lib/dpkg/status")
LISTS = Path("/var/lib/apt/lists")
_VERSION_LINE = re.compile(rb"^Version: (\S+)$", re.MULTILINE)


def _versions(data: bytes) -> set[str]:
    return {m.decode() for m in _VERSION_LINE.findall(data)}


def known_versions() -> set[str]:
    found = _versions(STATUS.read_bytes())
    for path in sorted(LISTS.glob("*_Packages*")):
        if path.name.endswith("_Packages"):
            found |= _versions(path.read_bytes())
        elif path.name.endswith(".lz4"):
            found |= _versions(subprocess.run(["lz4cat", str(path)], capture_output=True,
                                              check=True).stdout)
    return found


def edge_cases() -> set[str]:
    epochs = ("", "0:", "1:", "2:", "10:")
    upstreams = ("0", "00", "0.0", "1", "1.0", "1.00", "1.0.0", "1.0~rc1", "1.0~~", "1.0~",
                 "1.0~~a", "1.0+dfsg", "1.0+dfsg~1", "1.0a", "1.0A", "1.0.a", "1.0+", "1.0.",
                 "1.0-beta", "1.0-beta-2", "1a", "1+", "1~", "9", "10", "1.9", "1.10",
                 "2.36", "2.36+", "3.0.15", "a", "A", "z", "Z", "1:2")
    revisions = ("", "-0", "-1", "-1~deb12u1", "-1~deb12u10", "-1+deb12u1", "-1+b1",
                 "-1.1", "-1~", "-1~~", "-10", "-a", "-1a", "-0ubuntu1")
    found = set()
    for epoch, upstream, revision in itertools.product(epochs, upstreams, revisions):
        if ":" in upstream and not epoch:
            continue  # a colon in the upstream version needs an epoch
        if "-" in upstream and not revision:
            continue  # a hyphen in the upstream version needs a revision
        text = f"{epoch}{upstream}{revision}"
        try:
            Version(text)
        except ValueError:
            continue
        found.add(text)
    return found


def _disagreements(checks: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The checks `A OP B` that dpkg --compare-versions does not confirm."""
    lines = "".join(f"{a} {op} {b}\n" for a, op, b in checks).encode()
    batch = subprocess.run(["xargs", "-n", "3", "-P", "2", "dpkg", "--compare-versions"],
                           input=lines, capture_output=True, check=False)
    if batch.returncode == 0:
        return []
    return [check for check in checks
            if subprocess.run(["dpkg", "--compare-versions", *check],
                              check=False).returncode != 0]


def _op(a: Version, b: Version) -> str:
    return "lt" if a < b else "eq" if a == b else "gt"


def test_version_order_is_dpkgs_on_every_known_version() -> None:
    versions = known_versions() | edge_cases()
    # The machine's database and the generated cases at least; with the lists, ~20,000.
    assert len(versions) > 1000
    ordered = sorted(versions, key=Version)
    parsed = [Version(v) for v in ordered]
    checks = [(a, _op(pa, pb), b) for a, b, pa, pb in
              zip(ordered, ordered[1:], parsed, parsed[1:], strict=False)]
    assert all(op in ("lt", "eq") for _, op, _ in checks)
    chooser = random.Random(17)
    for _ in range(3000):
        a, b = chooser.sample(ordered, 2)
        checks.append((a, _op(Version(a), Version(b)), b))
    assert _disagreements(checks) == []


def test_what_string_order_gets_wrong() -> None:
    # Each pair sorts the other way as text.
    for a, b in (("1.0~rc1", "1.0"), ("1.0~~", "1.0~"), ("9", "1:0"), ("1.9", "1.10"),
                 ("1.0-1~deb12u9", "1.0-1~deb12u10"), ("1.0a", "1.0+"),
                 ("1.0-beta-2", "1.0-beta-10")):
        assert Version(a) < Version(b) and a > b, (a, b)
    assert Version("0:1.0-1") == Version("1.0-1")
    assert _disagreements([("1.0~rc1", "gt", "1.0")]) == [("1.0~rc1", "gt", "1.0")]
