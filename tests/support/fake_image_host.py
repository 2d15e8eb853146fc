"""FAKE image host: a real OpenSSH sshd whose every session is a forced command that answers
the evidence script with evidence recorded from a booted container-host image, and refuses
anything else. It stands for a host that matches its manifest, which this machine cannot be.

Because sshd forces the command, nothing a test sends (`systemctl reboot` included) ever runs
on this machine; the log names every command asked for, so a test can prove none was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hardhost.image.manifest import TIME_FORMAT, HostManifest, from_statement
from tests.support.keys import KeyPair
from tests.support.paths import REPO
from tests.support.sshd import LoopbackHost, start_sshd

DATA = REPO / "tests" / "data"

# Run as root's forced command: argv[1] is the log, argv[2] the recorded evidence.
ANSWER = '''\
import os, re, sys
command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
with open(sys.argv[1], "a") as log:
    log.write(command.replace("\\n", " ") + "\\n")
if not command.startswith("/bin/sh -s"):
    sys.stderr.write("fake image host: only the evidence script runs here\\n")
    sys.exit(1)
nonce = re.match(rb"nonce=([0-9a-f]{32})\\n", sys.stdin.buffer.read()).group(1)
recorded = open(sys.argv[2], "rb").read()
sys.stdout.buffer.write(re.sub(rb"^@@hardhost:([a-z_]+)@@$",
                               rb"@@hardhost:" + nonce + rb":\\1@@", recorded, flags=re.M))
'''


@dataclass(frozen=True)
class ImageHost:
    host: LoopbackHost
    log: Path

    def commands(self) -> list[str]:
        """Every command a client asked this host to run, in order."""
        return self.log.read_text().splitlines() if self.log.exists() else []


def recorded_manifest() -> HostManifest:
    """The manifest the recorded evidence matches, valid from yesterday for a month."""
    statement = json.loads((DATA / "manifest-container-host.json").read_text())
    now = dt.datetime.now(dt.UTC)
    return dataclasses.replace(
        from_statement(statement, "recorded"),
        created=(now - dt.timedelta(days=1)).strftime(TIME_FORMAT),
        expires=(now + dt.timedelta(days=30)).strftime(TIME_FORMAT))


@contextmanager
def image_host(directory: Path, client_key: KeyPair, *,
               drift: tuple[bytes, bytes] | None = None) -> Iterator[ImageHost]:
    """The fake image host; `drift` replaces one text of the recorded evidence by another."""
    directory.mkdir(parents=True, exist_ok=True)
    evidence = (DATA / "evidence-container-host.raw").read_bytes()
    if drift is not None:
        assert drift[0] in evidence, drift
        evidence = evidence.replace(*drift)
    (directory / "evidence.raw").write_bytes(evidence)
    (directory / "answer.py").write_text(ANSWER)
    log = directory / "commands.log"
    running = start_sshd(directory, client_key, extra_config=(
        f"ForceCommand {sys.executable} {directory / 'answer.py'} {log} "
        f"{directory / 'evidence.raw'}\n"))
    try:
        yield ImageHost(running.host, log)
    finally:
        running.stop()


# Run as root's forced command: argv[1] is the log, argv[2] the host's folder, which holds
# the evidence it answers now, the pristine evidence a reboot restores, and its boot_id.
REBOOTABLE_ANSWER = '''\
import os, re, sys, time, uuid
command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
folder = sys.argv[2]
def path(name):
    return os.path.join(folder, name)
with open(sys.argv[1], "a") as log:
    log.write(command.replace("\\n", " ") + "\\n")
boot_id = open(path("boot_id")).read().strip()
if command.startswith("/bin/sh -s"):
    nonce = re.match(rb"nonce=([0-9a-f]{32})\\n", sys.stdin.buffer.read()).group(1)
    recorded = open(path("evidence.raw"), "rb").read().replace(
        open(path("recorded_boot_id"), "rb").read().strip(), boot_id.encode())
    sys.stdout.buffer.write(re.sub(rb"^@@hardhost:([a-z_]+)@@$",
                                   rb"@@hardhost:" + nonce + rb":\\1@@", recorded, flags=re.M))
elif command == "cat /proc/sys/kernel/random/boot_id":
    booted = os.stat(path("boot_id")).st_mtime
    if time.time() < booted:  # still "rebooting": the new boot_id is not there yet
        sys.exit(255)
    print(boot_id)
elif command == "systemctl reboot":
    # A reboot: the pristine evidence again, and a new boot_id from `delay` seconds on.
    with open(path("evidence.tmp"), "wb") as fresh:
        fresh.write(open(path("pristine.raw"), "rb").read())
    os.replace(path("evidence.tmp"), path("evidence.raw"))
    with open(path("boot_id.tmp"), "w") as new:
        new.write(str(uuid.uuid4()))
    delay = float(open(path("delay")).read())
    os.utime(path("boot_id.tmp"), (time.time() + delay, time.time() + delay))
    os.replace(path("boot_id.tmp"), path("boot_id"))
else:
    sys.stderr.write("fake image host: only evidence, boot_id and reboot run here\\n")
    sys.exit(1)
'''


@dataclass(frozen=True)
class RebootableHost:
    """The FAKE image host whose `systemctl reboot` restores the pristine evidence and a new
    boot_id (after `delay` seconds), as a hardhost image's reboot resets /etc and /var. It
    stands for a host that can drift and be reset, which this machine cannot be."""

    host: LoopbackHost
    log: Path
    folder: Path

    def drift(self, found: bytes = b"/proc/sys/kernel/kptr_restrict:2",
              now: bytes = b"/proc/sys/kernel/kptr_restrict:0") -> None:
        """Change what the host answers until its next reboot."""
        evidence = (self.folder / "pristine.raw").read_bytes()
        assert found in evidence, found
        (self.folder / "evidence.tmp").write_bytes(evidence.replace(found, now))
        (self.folder / "evidence.tmp").replace(self.folder / "evidence.raw")

    def boot_id(self) -> str:
        return (self.folder / "boot_id").read_text().strip()

    def reboots(self) -> int:
        return sum(1 for c in self.commands() if c == "systemctl reboot")

    def commands(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@contextmanager
def rebootable_host(directory: Path, client_key: KeyPair, *,
                    delay: float = 0.0) -> Iterator[RebootableHost]:
    directory.mkdir(parents=True, exist_ok=True)
    evidence = (DATA / "evidence-container-host.raw").read_bytes()
    recorded_boot_id = evidence.split(b"@@hardhost:boot_id@@\n", 1)[1].split(b"\n", 1)[0]
    (directory / "recorded_boot_id").write_bytes(recorded_boot_id)
    (directory / "pristine.raw").write_bytes(evidence)
    (directory / "evidence.raw").write_bytes(evidence)
    (directory / "boot_id").write_text("00000000-0000-4000-8000-000000000001")
    (directory / "delay").write_text(str(delay))
    (directory / "answer.py").write_text(REBOOTABLE_ANSWER)
    log = directory / "commands.log"
    running = start_sshd(directory, client_key, extra_config=(
        f"ForceCommand {sys.executable} {directory / 'answer.py'} {log} {directory}\n"))
    try:
        yield RebootableHost(running.host, log, directory)
    finally:
        running.stop()
