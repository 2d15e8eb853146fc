"""hardhost as people install it: the wheel and the sdist built from a clean tree, the wheel
installed into a fresh virtual environment (not editable), and run from another folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import IMAGES, REPO

pytestmark = pytest.mark.e2e

GOLDEN = REPO / "tests" / "golden"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    elsewhere: Path  # a folder outside the repository, the working directory of every run

    def hardhost(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": os.environ.get("HOME", "/root")}
        return subprocess.run([str(self.venv / "bin" / "hardhost"), *args],
                              cwd=self.elsewhere, env=env, capture_output=True, text=True,
                              timeout=timeout)


def clean_tree(destination: Path) -> Path:
    """The files git tracks or would track, without caches, virtual environments or builds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def build(source: Path, out: Path, *kinds: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "build", *kinds, "--outdir", str(out),
                             str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("packaging")
    tree = clean_tree(root / "tree")
    built = build(tree, root / "dist", "--sdist", "--wheel")
    # setuptools says what it deprecates or ignores as warnings: none may appear.
    for word in ("Warning", "deprecated", "ignored", "absent from the"):
        assert word not in built.stdout + built.stderr, word
    wheel = next((root / "dist").glob("hardhost-*.whl"))
    sdist = next((root / "dist").glob("hardhost-*.tar.gz"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    yield Installed(wheel, sdist, venv, elsewhere)


def test_the_wheel_installs_hardhost_and_nothing_else(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        tops = {name.split("/")[0] for name in wheel.namelist()}
        names = set(wheel.namelist())
    version = installed.wheel.name.split("-")[1]
    assert tops == {"hardhost", f"hardhost-{version}.dist-info"}
    # The data the package reads at run time is inside it.
    for data in ("hardhost/policy/seccomp/syscalls-x86_64.txt",
                 "hardhost/policy/seccomp/default.json",
                 "hardhost/policy/apparmor/container.profile.j2",
                 "hardhost/builder/templates/sshd.conf.j2",
                 "hardhost/builder/templates/initramfs/overlay.j2",
                 "hardhost/verifier/evidence_script.sh",
                 "hardhost/profiles/selinux_base.cil",
                 f"hardhost-{version}.dist-info/licenses/LICENSE"):
        assert data in names, data


def test_the_sdist_rebuilds_the_same_wheel(installed: Installed, tmp_path: Path) -> None:
    with tarfile.open(installed.sdist) as sdist:
        sdist.extractall(tmp_path / "unpacked", filter="data")
    (source,) = (tmp_path / "unpacked").iterdir()
    for shipped in ("ansible", "terraform", "seccomp", "apparmor", "images", "LICENSE"):
        assert (source / shipped).exists(), shipped
    build(source, tmp_path / "again", "--wheel")
    again = next((tmp_path / "again").glob("hardhost-*.whl"))

    def contents(path: Path) -> dict[str, str]:
        with zipfile.ZipFile(path) as wheel:
            return {name: hashlib.sha256(wheel.read(name)).hexdigest()
                    for name in wheel.namelist() if not name.endswith("/RECORD")}

    assert contents(again) == contents(installed.wheel)


def test_version_and_help_from_another_folder(installed: Installed) -> None:
    version = installed.hardhost("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"hardhost {installed.wheel.name.split('-')[1]}"
    assert "exit codes" in installed.hardhost("attest", "--help").stdout


def test_profiles_generate_and_check_from_the_installed_data(installed: Installed,
                                                             tmp_path: Path) -> None:
    trace = GOLDEN / "apparmor" / "webapp.trace.json"
    generated = installed.hardhost("profile", "generate", str(trace), "--name", "webapp",
                                   "--out-dir", str(tmp_path / "profiles"))
    assert generated.returncode == 0, generated.stderr
    assert (tmp_path / "profiles" / "webapp.seccomp.json").is_file()
    checked = installed.hardhost("profile", "check", str(tmp_path / "profiles"), "--trace",
                                 str(trace))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "every recorded event is allowed" in checked.stdout


def test_keygen_and_manifest_verify(installed: Installed, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    assert installed.hardhost("keygen", "--out", str(keys)).returncode == 0
    other = installed.hardhost("manifest", "verify", str(tmp_path / "absent.json"),
                               "--trust-key", str(keys / "signing.pub"))
    assert other.returncode == 2 and other.stderr.count("\n") == 1


def test_a_minimal_image_built_by_the_installed_package_boots(
        installed: Installed, tmp_path: Path, client_key: KeyPair,
        signing_keys: SigningKeys) -> None:
    out = tmp_path / "out"
    built = installed.hardhost("build", str(IMAGES / "minimal.toml"), "-o", str(out),
                               "--key", str(signing_keys.private), "--authorized-key",
                               f"{client_key.private}.pub", timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    image = out / "minimal"
    verified = installed.hardhost("manifest", "verify", str(image / "manifest.dsse.json"),
                                  "--trust-key", str(signing_keys.public))
    assert verified.returncode == 0, verified.stderr
    assert "artifacts match" in verified.stdout
    name = "e2e-packaging"
    installed.hardhost("vm", "stop", name, "--purge")
    port = free_port()
    try:
        started = installed.hardhost("vm", "start", str(image), "--trust-key",
                                     str(signing_keys.public), "--name", name, "--ssh-port",
                                     str(port), "--timeout", "600", timeout=900)
        assert started.returncode == 0, started.stderr[-3000:]
        known_hosts = Path(os.environ.get("HOME", "/root")) / ".local/state/hardhost/vms" \
            / name / "known_hosts"
        attested = installed.hardhost(
            "attest", f"root@127.0.0.1:{port}", "--manifest", str(image / "manifest.dsse.json"),
            "--trust-key", str(signing_keys.public), "--known-hosts", str(known_hosts),
            "--identity", str(client_key.private), "--ssh-config", "none", "--timeout", "120")
        assert attested.returncode == 0, attested.stdout + attested.stderr
    finally:
        installed.hardhost("vm", "stop", name, "--purge")
