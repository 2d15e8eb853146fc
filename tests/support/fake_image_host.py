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
