"""The security stage: default and generated profiles into a tree, each validated first."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.builder.context import BuildContext
from hardhost.builder.spec import parse_spec
from hardhost.builder.stages import security
from hardhost.core.errors import SpecError, UsageError
from hardhost.core.log import StepTiming
from hardhost.profiles import apparmor, seccomp, selinux
from hardhost.profiles.trace import FileAccess, normalise

SPEC = """
name = "t"
[packages]
include = ["systemd"]
[ssh]
permit_root_login = true
"""


def run_security(tmp_path: Path, extra: str = "") -> Path:
    spec_file = tmp_path / "image.toml"
    spec_file.write_text(SPEC + extra)
    spec = parse_spec(spec_file.read_text(), str(spec_file))
    ctx = BuildContext(spec=spec, workdir=tmp_path / "work", staging=tmp_path / "out",
                       cache_dir=tmp_path / "cache", signing_key=Ed25519PrivateKey.generate(),
                       source_date_epoch=1)
    ctx.tree.mkdir(parents=True, exist_ok=True)
    security.run_stage(ctx, StepTiming("security"))
    return ctx.tree


def write_generated(directory: Path) -> None:
    trace = normalise(syscalls=["read", "write", "exit_group"],
                      files=[FileAccess("/etc/hostname", "r")], executables=["/usr/bin/cat"])
    directory.mkdir()
    (directory / "web.seccomp.json").write_text(seccomp.dumps(seccomp.generate(trace, "web")))
    (directory / "web.apparmor").write_text(apparmor.generate(trace, "web"))
    (directory / "web.cil").write_text(selinux.generate(trace, "web"))


def test_defaults_are_installed(tmp_path: Path) -> None:
    tree = run_security(tmp_path)
    default = json.loads((tree / "usr/lib/hardhost/seccomp/default.json").read_text())
    assert seccomp.action_for(default, seccomp.Call("keyctl")) == "SCMP_ACT_ERRNO"
    text = (tree / f"etc/apparmor.d/{apparmor.DEFAULT_NAME}").read_text()
    assert f"profile {apparmor.DEFAULT_NAME} " in text


def test_keyring_can_be_allowed_by_the_spec(tmp_path: Path) -> None:
    tree = run_security(tmp_path, "[seccomp]\nallow_keyring = true\n")
    default = json.loads((tree / "usr/lib/hardhost/seccomp/default.json").read_text())
    assert seccomp.action_for(default, seccomp.Call("keyctl")) == "SCMP_ACT_ALLOW"
    assert seccomp.action_for(default, seccomp.Call("bpf")) == "SCMP_ACT_ERRNO"


def test_generated_profiles_are_installed(tmp_path: Path) -> None:
    write_generated(tmp_path / "profiles")
    tree = run_security(tmp_path, '[seccomp]\nprofiles = ["profiles/web.seccomp.json"]\n'
                                  '[apparmor]\nprofiles = ["profiles/web.apparmor"]\n'
                                  '[selinux]\nmodules = ["profiles/web.cil"]\n')
    assert (tree / "usr/lib/hardhost/seccomp/web.json").exists()
    assert (tree / "etc/apparmor.d/web").read_text().startswith("# AppArmor profile web")
    assert (tree / "usr/share/hardhost/selinux/web.cil").exists()


def test_missing_profile_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        run_security(tmp_path, '[apparmor]\nprofiles = ["nowhere.apparmor"]\n')
    assert str(info.value) == (f"{tmp_path}/image.toml: apparmor.profiles: "
                               f"{tmp_path}/nowhere.apparmor: profile not found")


def test_invalid_profiles_are_refused(tmp_path: Path) -> None:
    write_generated(tmp_path / "profiles")
    broken = tmp_path / "profiles" / "web.apparmor"
    broken.write_text(broken.read_text().replace("abi <abi/3.0>,", "abi <abi/3.0>, nonsense"))
    with pytest.raises(UsageError, match="apparmor_parser"):
        run_security(tmp_path, '[apparmor]\nprofiles = ["profiles/web.apparmor"]\n')
    cil = tmp_path / "profiles" / "web.cil"
    cil.write_text(cil.read_text() + "(allow web_t undefined_t (file (read)))\n")
    with pytest.raises(UsageError, match=r"secilc|undefined_t|resolve"):
        run_security(tmp_path, '[selinux]\nmodules = ["profiles/web.cil"]\n')


def test_spec_digest_follows_profile_settings() -> None:
    base = parse_spec(SPEC, "x")
    changed = dataclasses.replace(base, seccomp=dataclasses.replace(
        base.seccomp, allow_keyring=True))
    assert base.digest() != changed.digest()


def test_a_profile_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    # No writer ever opens it: a plain read would block the build forever.
    os.mkfifo(tmp_path / "web.seccomp.json")
    with pytest.raises(SpecError, match=r"seccomp\.profiles: .*web\.seccomp\.json: the profile "
                                        r"is a FIFO"):
        run_security(tmp_path, '[seccomp]\nprofiles = ["web.seccomp.json"]\n')
