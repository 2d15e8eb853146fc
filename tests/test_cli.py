"""The command line: one-line errors with documented exit codes, and complete help."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hardhost.cli.main import main, parser
from hardhost.core.errors import ToolMissing
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


def test_vm_start_rejects_a_folder_that_is_not_an_image(tmp_path: Path,
                                                        signing_keys: SigningKeys) -> None:
    result = run_cli("vm", "start", str(tmp_path), "--name", "x", "--ssh-port", "2299",
                     "--trust-key", str(signing_keys.public))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hardhost: {tmp_path}: not a built image (missing "
                                    "manifest.dsse.json, vmlinuz")


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
    # pytest's own temporary folders are private to root; this one must be readable by nobody.
    with tempfile.TemporaryDirectory() as name:
        shared = Path(name)
        shared.chmod(0o755)
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
