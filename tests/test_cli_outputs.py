"""Outputs, durations, exit codes and host text on terminals and in XML: checked before the
work starts, one line and a documented exit code for every bad input, never a traceback."""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardhost.cli.main import parser
from hardhost.verifier import fleet, history
from hardhost.verifier.inventory import FleetHost
from hardhost.verifier.transport import Target
from hardhost.verifier.verdict import Finding, Severity, Verdict, render
from tests.support.keys import KeyPair, SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.net import free_port
from tests.support.paths import IMAGES, REPO

HOSTILE = "\x1b[2K\rpwned\x00\x0b"


def hardhost(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               "HOME": str(cwd)})


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("hardhost: ")
    return line


class Listener:
    """A real TCP port that counts who connects: proof that no host was contacted."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def inventory(tmp_path: Path, listener: Listener) -> Path:
    path = tmp_path / "inventory.ini"
    path.write_text(f"[all]\nh1 ansible_host=127.0.0.1 ansible_port={listener.port}\n")
    return path


@pytest.fixture
def manifest(tmp_path: Path, signing_keys: SigningKeys) -> Path:
    return write_signed(tmp_path, sample_manifest(), signing_keys.key)


@pytest.mark.parametrize("option, make, expected", [
    ("--json", lambda d: (d / "out").mkdir() or d / "out", "it is a directory"),
    ("--junit", lambda d: d / "missing" / "f.xml", "folder"),
    ("--junit", lambda d: Path("/proc/hardhost.xml"), "cannot write the JUnit XML"),
    ("--history", lambda d: (d / "notdb").write_text("hello, not SQLite\n") and d / "notdb",
     "not a usable hardhost history database"),
    ("--history", lambda d: (d / "dir.db").mkdir() or d / "dir.db", "it is a directory"),
    ("--history", lambda d: d / "missing" / "h.db", "does not exist"),
])
def test_fleet_outputs_are_checked_before_any_host(option: str, make: object, expected: str,
                                                   tmp_path: Path, inventory: Path,
                                                   manifest: Path, signing_keys: SigningKeys,
                                                   listener: Listener) -> None:
    assert callable(make)
    path = make(tmp_path)
    before = path.read_bytes() if path.is_file() else None
    result = hardhost("fleet", str(inventory), "--manifest", str(manifest), "--trust-key",
                      str(signing_keys.public), "--history", str(tmp_path / "h.db"),
                      option, str(path))
    line = one_line(result, 2)
    assert expected in line and str(path) in line
    assert listener.accepted == 0
    if before is not None:
        assert path.read_bytes() == before  # a non-SQLite file is never rewritten


def test_fleet_without_a_manifest_is_usage_before_any_host(tmp_path: Path, inventory: Path,
                                                           signing_keys: SigningKeys,
                                                           listener: Listener) -> None:
    result = hardhost("fleet", str(inventory), "--trust-key", str(signing_keys.public),
                      "--history", str(tmp_path / "h.db"))
    assert "h1: no manifest. Fix with: --manifest FILE" in one_line(result, 2)
    missing = hardhost("fleet", str(inventory), "--trust-key", str(signing_keys.public),
                       "--history", str(tmp_path / "h.db"), "--manifest",
                       str(tmp_path / "typo.json"))
    assert one_line(missing, 2) == f"hardhost: {tmp_path / 'typo.json'}: manifest not found"
    assert listener.accepted == 0


def test_an_inventory_that_does_not_parse_stops_the_run(tmp_path: Path, manifest: Path,
                                                        signing_keys: SigningKeys,
                                                        listener: Listener) -> None:
    # Ansible, by default, warns and goes on with the hosts read before the error.
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {
        "first": {"ansible_host": "127.0.0.1", "ansible_port": listener.port},
        "broken[": {"ansible_host": "127.0.0.1"}}}}))
    result = hardhost("fleet", str(inventory), "--manifest", str(manifest), "--trust-key",
                      str(signing_keys.public), "--history", str(tmp_path / "h.db"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"hardhost: {inventory}: ")
    assert "Traceback" not in result.stderr
    assert listener.accepted == 0


SCRIPT = """#!/bin/sh
touch {marker}
echo '{{"all": {{"hosts": ["scripted"]}}, "_meta": {{"hostvars": {{}}}}}}'
"""


@pytest.mark.parametrize("in_folder", [False, True])
def test_executable_inventory_is_refused(tmp_path: Path, signing_keys: SigningKeys,
                                         in_folder: bool) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "inventory"
    folder.mkdir()
    script = folder / "dynamic.sh" if in_folder else tmp_path / "dynamic.sh"
    script.write_text(SCRIPT.format(marker=marker))
    script.chmod(0o755)
    (folder / "static.ini").write_text("[all]\nplain ansible_host=127.0.0.1\n")
    source = folder if in_folder else script
    result = hardhost("fleet", str(source), "--trust-key", str(signing_keys.public),
                      "--history", str(tmp_path / "h.db"))
    line = one_line(result, 2)
    assert f"{script}: executable, so Ansible would run it" in line
    assert "--allow-executable-inventory" in line and f"chmod a-x {script}" in line
    assert not marker.exists()

    # Allowed on purpose, it runs (and its host, without a manifest, stops the run offline).
    allowed = hardhost("fleet", str(source), "--trust-key", str(signing_keys.public),
                       "--history", str(tmp_path / "h.db"), "--allow-executable-inventory")
    assert "no manifest" in one_line(allowed, 2)
    assert marker.exists()


@pytest.mark.parametrize("argv", [
    ["fleet", "inv", "--trust-key", "k", "--timeout={}"],
    ["fleet", "inv", "--trust-key", "k", "--reset-timeout={}"],
    ["attest", "root@h", "--manifest", "m", "--trust-key", "k", "--timeout={}"],
    ["attest", "root@h", "--manifest", "m", "--trust-key", "k", "--reset-timeout={}"],
    ["evidence", "root@h", "--known-hosts", "k", "--identity", "i", "--timeout={}"],
    ["vm", "start", "img", "--name", "n", "--ssh-port", "2222", "--timeout={}"],
    ["profile", "record", "--out", "t", "--timeout={}", "--", "true"],
])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e9", "ten"])
def test_durations_must_be_finite_positive_and_bounded(argv: list[str], value: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args([a.replace("{}", value) for a in argv])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "is not a duration: give seconds, more than 0 and at most" in error


def test_durations_in_range_are_taken() -> None:
    args = parser().parse_args(["fleet", "inv", "--trust-key", "k", "--timeout", "2.5",
                                "--reset-timeout", "3600"])
    assert (args.timeout, args.reset_timeout) == (2.5, 3600.0)
    record = parser().parse_args(["profile", "record", "--out", "t", "--timeout", "86400",
                                  "--", "true"])
    assert record.timeout == 86400.0


def verdict_with_hostile_text() -> Verdict:
    return Verdict(f"web{HOSTILE}", HOSTILE, "2026-01-01T00:00:00Z", "d" * 64,
                   (Finding(f"sysctl.{HOSTILE}", Severity.HIGH, "2", f"1{HOSTILE}"),),
                   address="root@127.0.0.1:22")


def test_render_escapes_host_text() -> None:
    text = render(verdict_with_hostile_text())
    assert not any(c in text for c in "\x1b\r\x00\x0b")
    assert "web\\x1b[2K\\x0dpwned\\x00\\x0b (root@127.0.0.1:22): DRIFT" in text
    assert "sysctl.\\x1b[2K\\x0dpwned\\x00\\x0b" in text
    assert "1\\x1b[2K\\x0dpwned\\x00\\x0b" in text  # \x0b is shown, not split away
    error = render(Verdict("h", "", "t", "d", error=f"refused{HOSTILE}", exit_code=4))
    assert "error: refused\\x1b[2K\\x0dpwned" in error and "\x1b" not in error


def test_junit_and_json_carry_host_text(tmp_path: Path) -> None:
    verdicts = [verdict_with_hostile_text(),
                Verdict(f"down{HOSTILE}", "", "t", "", error=f"no route{HOSTILE}", exit_code=3,
                        address="root@10.0.0.1:22")]
    fleet.write_junit(tmp_path / "f.xml", verdicts)
    suite = ET.parse(tmp_path / "f.xml").getroot()  # control characters would not parse
    drift, down = suite.findall("testcase")
    assert drift.get("name") == "web\\x1b[2K\\x0dpwned\\x00\\x0b"
    address = drift.find("properties/property")
    assert address is not None and address.get("value") == "root@127.0.0.1:22"
    failure = drift.find("failure")
    assert failure is not None and "sysctl.\\x1b[2K" in (failure.get("message") or "")
    assert "observed '1\\x1b[2K\\x0dpwned\\x00\\x0b'" in (failure.text or "")
    error = down.find("error")
    assert error is not None and error.get("message") == "no route\\x1b[2K\\x0dpwned\\x00\\x0b"
    fleet.write_json(tmp_path / "f.json", verdicts)
    data = json.loads((tmp_path / "f.json").read_text())
    assert data["hosts"][0]["host"] == f"web{HOSTILE}"  # JSON keeps the exact text
    assert data["hosts"][0]["address"] == "root@127.0.0.1:22"
    assert not list(tmp_path.glob(".f.*"))  # no scratch file left beside the outputs


def test_an_unexpected_failure_is_the_hosts_error_verdict() -> None:
    # FAKE fault: a check that raises what no hardhost code raises, as a bug would.
    host = FleetHost("edge1", Target("root", "192.0.2.1", 22), None, None)

    def bug() -> Verdict:
        raise ZeroDivisionError("division by zero")

    verdict = fleet._guarded(host, "d" * 64, bug)
    assert (verdict.host, verdict.address, verdict.status, verdict.exit_code) == (
        "edge1", "root@192.0.2.1:22", "error", 1)
    assert "internal error: ZeroDivisionError: division by zero" in verdict.error


def test_history_reads_without_creating(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    line = one_line(hardhost("history", "--db", str(missing)), 2)
    assert line == f"hardhost: {missing}: no history database here (hardhost fleet " \
                   "--history writes one)"
    assert not missing.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database at all, but long enough to have a header.........\n")
    assert "not a usable hardhost history database" in one_line(
        hardhost("history", "--db", str(garbage)), 2)
    assert "is not a regular file" in one_line(hardhost("history", "--db", str(tmp_path)), 2)


def test_history_keeps_names_and_addresses_and_escapes_them(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    history.prepare(db)
    history.record(db, "t", "inv", [verdict_with_hostile_text()])
    (row,) = history.summary(db)
    assert (row.host, row.address) == (f"web{HOSTILE}", "root@127.0.0.1:22")
    shown = hardhost("history", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "web\\x1b[2K\\x0dpwned" in shown.stdout
    assert "root@127.0.0.1:22" in shown.stdout


def test_history_shows_updates_as_a_table_and_as_json(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    history.prepare(db)
    assert "no updates recorded" in hardhost("history", "--db", str(db), "--updates").stdout
    history.record_update(db, "2026-01-01T00:00:00Z", "update", "edge1", "updated", "1", "2",
                          "", [Verdict("edge1", "b", "t", "m")])
    history.record_update(db, "2026-01-02T00:00:00Z", "update", f"web{HOSTILE}",
                          "rolled-back", "2", "3", f"sysctl.kernel.sysrq{HOSTILE}", [])
    shown = hardhost("history", "--db", str(db), "--updates")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    # Names and reasons from hosts are shown escaped, never as terminal controls.
    assert len(lines) == 3 and "\x1b" not in shown.stdout
    assert lines[2].startswith("web\\x1b[2K\\x0dpwned")
    assert lines[1].split()[:4] == ["edge1", "2026-01-01T00:00:00Z", "updated", "1"]
    assert "rolled-back" in lines[2] and "2 -> 3" in lines[2]
    only = json.loads(hardhost("history", "--db", str(db), "--updates", "--json", "--host",
                               "edge1").stdout)
    assert only == [{"host": "edge1", "time": "2026-01-01T00:00:00Z", "outcome": "updated",
                     "from_version": "1", "to_version": "2", "reason": ""}]
    # An update's attestations are verdicts too: the summary knows the host.
    (summary,) = json.loads(hardhost("history", "--db", str(db), "--json").stdout)
    assert (summary["host"], summary["last_status"]) == ("edge1", "pass")
    assert one_line(hardhost("history", "--db", str(tmp_path / "typo.db"), "--updates"),
                    2).endswith("no history database here (hardhost fleet --history "
                                "writes one)")


def test_history_written_before_addresses_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.executescript(history.SCHEMA.replace(",\n    address TEXT NOT NULL DEFAULT ''", ""))
        old.execute("INSERT INTO runs VALUES (1, 't', 'inv')")
        old.execute("INSERT INTO results VALUES (1, 'root@h:22', 't', 'pass', 'b', 'm', '', "
                    "'[]')")
    old.close()
    assert history.summary(db)[0].address == ""  # readable as it is
    history.prepare(db)
    history.record(db, "t2", "inv", [Verdict("edge1", "b", "t2", "m", address="root@h:22")])
    rows = {r.host: r for r in history.summary(db)}
    assert rows["edge1"].address == "root@h:22" and rows["root@h:22"].last_status == "pass"


def test_attest_json_prints_an_error_document(tmp_path: Path, manifest: Path,
                                              signing_keys: SigningKeys,
                                              client_key: KeyPair) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    port = free_port()  # nothing listens: unreachable
    common = ["--trust-key", str(signing_keys.public), "--known-hosts", str(known),
              "--identity", str(client_key.private), "--timeout", "5", "--json"]
    dead = hardhost("attest", f"root@127.0.0.1:{port}", "--manifest", str(manifest), *common)
    one_line(dead, 3)
    document = json.loads(dead.stdout)
    assert document["status"] == "error" and document["exit_code"] == 3
    assert document["host"] == f"root@127.0.0.1:{port}" and document["error"]
    typo = hardhost("attest", "root@127.0.0.1", "--manifest", str(tmp_path / "typo.json"),
                    *common)
    assert one_line(typo, 2) == f"hardhost: {tmp_path / 'typo.json'}: manifest not found"
    assert json.loads(typo.stdout)["exit_code"] == 2


def test_profile_outputs_and_missing_program(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    missing = hardhost("profile", "record", "--out", str(out), "--",
                       "hardhost-no-such-program")
    assert "hardhost-no-such-program: no such program to record" in one_line(missing, 2)
    assert not out.exists()
    nowhere = hardhost("profile", "record", "--out", str(tmp_path / "no" / "t.json"), "--",
                       "true")
    assert "does not exist" in one_line(nowhere, 2)
    trace = tmp_path / "trace.json"
    trace.write_text('{"version": 1, "syscalls": ["read"]}')
    assert "it is a directory" in one_line(
        hardhost("profile", "merge", str(trace), "-o", str(tmp_path)), 2)
    assert "not a folder" in one_line(
        hardhost("profile", "generate", str(trace), "--name", "x", "--out-dir", str(trace)), 2)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.seccomp.json").mkdir()
    assert "x.seccomp.json: cannot write the profile: it is a directory" in one_line(
        hardhost("profile", "generate", str(trace), "--name", "x", "--out-dir",
                 str(tmp_path / "p")), 2)


@pytest.mark.parametrize("output, expected", [
    ("file", "cannot write the build output there: it is not a folder"),
    ("file/below", "cannot make the build output folder"),
    ("/proc/hardhost-out", "cannot write the build output"),
])
def test_build_output_is_checked_before_any_stage(tmp_path: Path, output: str,
                                                  expected: str) -> None:
    (tmp_path / "file").write_text("precious")
    path = output if output.startswith("/") else str(tmp_path / output)
    # The key does not exist either: were the output not checked first, the build would
    # stop at the key, never at a stage.
    result = hardhost("build", str(IMAGES / "container-host.toml"), "-o", path, "--key",
                      str(tmp_path / "no-key"))
    line = one_line(result, 2)
    assert expected in line and path in line
    assert (tmp_path / "file").read_text() == "precious"


@pytest.mark.parametrize("path", [["fleet"], ["history"], ["attest"], ["build"],
                                  ["profile", "record"], ["profile", "merge"],
                                  ["profile", "generate"], ["profile", "check"]])
def test_every_option_has_help(path: list[str]) -> None:
    command = parser()
    for name in path:
        sub = next(a for a in command._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[name]
    undocumented = [a.dest for a in command._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not undocumented, f"{' '.join(path)}: {undocumented} have no help"
