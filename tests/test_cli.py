"""The command line: one-line errors with documented exit codes, and complete help."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import hardhost.verifier.tpm_quote
import hardhost.verifier.transport
from hardhost.cli.help import EPILOG, exit_codes_epilog
from hardhost.cli.main import main, parser
from hardhost.core.errors import EXIT_CODES, INTERRUPTED, HardhostError, ToolMissing
from hardhost.core.run import which
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES, REPO


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_malformed_spec_exits_2_with_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "x"\n[packages]\ninclude = []\n')
    result = run_cli("build", str(spec), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == f"hardhost: {spec}: packages.include: must list at least one " \
                            "package\n"
    assert not (tmp_path / "out").exists()


def test_bad_toml_exits_2_naming_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "x"\nname = "y"\n')
    result = run_cli("build", str(spec), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hardhost: {spec}: line 2: invalid TOML")
    assert "Traceback" not in result.stderr


def test_missing_tool_names_its_package() -> None:
    with pytest.raises(ToolMissing) as info:
        which("hardhost-no-such-tool")
    assert str(info.value) == ("hardhost-no-such-tool: not found. Fix with: apt-get install "
                               "hardhost-no-such-tool")
    assert ToolMissing("mkfs.erofs", "erofs-utils").exit_code == 1


def test_help_describes_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [["build"], ["vm", "start"], ["vm", "stop"], ["evidence"]]
    top = parser().format_help()
    for command in ("build", "vm", "evidence"):
        assert command in top
    assert "exit codes" in top
    for argv in commands:
        with pytest.raises(SystemExit) as info:
            main([*argv, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "usage: hardhost" in text
        assert len(text.splitlines()) > 5


def commands(command: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[str, ...]]:
    """Every command and action of the parser, the top level first."""
    yield path
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def test_every_help_ends_with_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    paths = list(commands(parser()))
    # Groups and their actions alike: manifest, vm and profile had none before.
    assert {("manifest",), ("vm",), ("profile",), ("profile", "record"), ("spec",)} <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert text.endswith("\n\n" + EPILOG), f"hardhost {' '.join(path)} --help"


def test_the_epilog_lists_every_declared_code_once() -> None:
    lines = exit_codes_epilog().splitlines()
    assert lines[0] == "exit codes:"
    firsts = [line.split()[0] for line in lines[1:] if not line.startswith(" " * 7)]
    assert firsts == [str(e.code) for e in EXIT_CODES]
    assert "`" not in exit_codes_epilog()  # Markdown spans are for the README
    assert max(map(len, lines)) <= 79


def all_errors(cls: type[HardhostError]) -> Iterator[type[HardhostError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from all_errors(sub)


def test_every_error_exits_with_a_declared_code() -> None:
    declared = {e.code for e in EXIT_CODES}
    errors = list(all_errors(HardhostError))
    # The modules above declare errors of their own; they must be seen here too.
    assert hardhost.verifier.transport.HostOutputError in errors
    assert hardhost.verifier.tpm_quote.QuoteFormatError in errors
    undeclared = {e.__name__: e.exit_code for e in errors if e.exit_code not in declared}
    assert not undeclared
    assert INTERRUPTED.code == 130


def test_evidence_from_a_closed_port_is_unreachable(tmp_path: Path,
                                                    client_key: KeyPair) -> None:
    # evidence takes no --trust-on-first-use; it once failed on the option's absence before
    # connecting (an internal error, exit 1).
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    result = run_cli("evidence", "root@127.0.0.1:1", "--known-hosts", str(known_hosts),
                     "--identity", str(client_key.private), "--ssh-config", "none")
    assert result.returncode == 3
    assert result.stderr == ("hardhost: root@127.0.0.1:1: cannot connect: [Errno 111] "
                             "Connection refused\n")


def test_vm_start_rejects_a_folder_that_is_not_an_image(tmp_path: Path,
                                                        signing_keys: SigningKeys) -> None:
    result = run_cli("vm", "start", str(tmp_path), "--name", "x", "--ssh-port", "2299",
                     "--trust-key", str(signing_keys.public))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hardhost: {tmp_path}: not a built image (missing "
                                    "manifest.dsse.json, disk.img)")


def test_vm_start_rejects_a_bad_port() -> None:
    result = run_cli("vm", "start", ".", "--name", "x", "--ssh-port", "70000",
                     "--trust-key", "signing.pub")
    assert result.returncode == 2
    assert "is not a TCP port" in result.stderr


@pytest.mark.e2e
def test_existing_output_is_refused_without_force(tmp_path: Path, client_key: KeyPair,
                                                 signing_keys: SigningKeys) -> None:
    existing = tmp_path / "container-host"
    existing.mkdir()
    (existing / "keep").write_text("precious")
    result = run_cli("build", str(IMAGES / "container-host.toml"), "-o", str(tmp_path),
                     "--authorized-key", f"{client_key.private}.pub", "--key",
                     str(signing_keys.private))
    assert result.returncode == 2
    assert result.stderr == f"hardhost: {existing}: already exists; pass --force to replace it\n"
    assert (existing / "keep").read_text() == "precious"


@pytest.mark.e2e
def test_build_without_keys_is_refused(tmp_path: Path, signing_keys: SigningKeys) -> None:
    result = run_cli("build", str(IMAGES / "minimal.toml"), "-o", str(tmp_path), "--key",
                     str(signing_keys.private))
    assert result.returncode == 2
    assert "access.authorized_keys: no key would be able to log in" in result.stderr


@pytest.mark.e2e
def test_build_as_non_root_is_refused(client_key: KeyPair) -> None:
    # pytest's own temporary folders are private to root; nobody must be able to write this
    # one, or the output check (which comes first) would refuse before the root check.
    with tempfile.TemporaryDirectory() as name:
        shared = Path(name)
        shared.chmod(0o777)
        key = shared / "key.pub"
        key.write_text(Path(f"{client_key.private}.pub").read_text())
        env = {"PATH": os.environ["PATH"], "HOME": name, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "hardhost", "build", str(IMAGES / "minimal.toml"), "-o",
             str(shared / "out"), "--authorized-key", str(key)],
            cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("hardhost: hardhost build must run as root")
        assert not (shared / "out").exists()


@pytest.mark.e2e
def test_build_without_a_signing_key_is_refused(tmp_path: Path) -> None:
    result = run_cli("build", str(IMAGES / "minimal.toml"), "-o", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hardhost: {IMAGES / 'minimal.toml'}: "
                                    "manifest.signing_key: no signing key")


@pytest.mark.e2e
def test_spec_signing_key_that_others_can_read_is_refused(tmp_path: Path,
                                                          signing_keys: SigningKeys) -> None:
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir()
    key.write_bytes(signing_keys.private.read_bytes())
    key.chmod(0o640)
    spec = tmp_path / "image.toml"
    spec.write_text((IMAGES / "minimal.toml").read_text()
                    + '\n[manifest]\nsigning_key = "keys/signing.key"\n')
    result = run_cli("build", str(spec), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == (f"hardhost: {key}: private key is readable by others (mode 0640). "
                             f"Fix with: chmod 600 {key}\n")
