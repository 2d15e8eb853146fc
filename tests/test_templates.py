"""Golden files for the rendered hardening layer, and checks by each file's real consumer."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hardhost.builder.spec import Spec, load_spec, with_authorized_keys
from hardhost.builder.stages.harden import (
    BASELINE_SYSCTLS,
    BINFMT_UNITS,
    BOOT_COUNT_VARIABLE,
    BOOT_DEADLINE_UNIT,
    RenderedFile,
    lock_passwords,
    mask_units,
    masked_units,
    no_user_pam_environment,
    render_layer,
)
from hardhost.builder.stages.prune import prune_patterns
from tests.support.keys import make_keypair
from tests.support.paths import IMAGES, REPO
from tests.support.sshd import sshd_binary

GOLDEN = REPO / "tests" / "golden"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFh0ZXN0a2V5Zm9yZ29sZGVuZmlsZXNvbmx5MDEyMzQ1 golden"


def spec(name: str) -> Spec:
    return with_authorized_keys(load_spec(IMAGES / f"{name}.toml"), (KEY,), "test")


def golden_path(image: str, rendered: RenderedFile) -> Path:
    return GOLDEN / image / rendered.path.lstrip("/").replace("/", "__")


@pytest.mark.parametrize("image", ["minimal", "container-host", "podman-host"])
def test_layer_matches_golden_files(image: str) -> None:
    """Regenerate with HARDHOST_UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    files = render_layer(spec(image))
    if os.environ.get("HARDHOST_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN / image, ignore_errors=True)
        (GOLDEN / image).mkdir(parents=True)
        for rendered in files:
            golden_path(image, rendered).write_text(rendered.content)
    expected = sorted(p.name for p in (GOLDEN / image).iterdir())
    assert sorted(golden_path(image, f).name for f in files) == expected
    for rendered in files:
        assert rendered.content == golden_path(image, rendered).read_text(), rendered.path


def test_rendering_is_deterministic() -> None:
    assert render_layer(spec("container-host")) == render_layer(spec("container-host"))


def by_path(files: list[RenderedFile]) -> dict[str, RenderedFile]:
    return {f.path: f for f in files}


def test_sysctls_hold_the_baseline_and_the_overrides() -> None:
    conf = by_path(render_layer(spec("container-host")))["/etc/sysctl.d/zz-hardhost.conf"]
    lines = dict(line.split(" = ") for line in conf.content.splitlines()
                 if line and not line.startswith("#"))
    for key in ("kernel.kptr_restrict", "kernel.dmesg_restrict", "kernel.unprivileged_bpf_disabled",
                "net.core.bpf_jit_harden", "kernel.kexec_load_disabled",
                "kernel.yama.ptrace_scope", "fs.protected_symlinks", "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.all.accept_redirects"):
        assert lines[key] == BASELINE_SYSCTLS[key]
    assert lines["net.ipv4.ip_forward"] == "1"  # the container host's override


@pytest.mark.parametrize("image", ["minimal", "container-host"])
def test_initramfs_scripts_are_valid_shell(image: str, tmp_path: Path) -> None:
    for rendered in render_layer(spec(image)):
        if rendered.mode & 0o111:
            script = tmp_path / Path(rendered.path).name
            script.write_text(rendered.content)
            subprocess.run(["sh", "-n", str(script)], check=True)


@pytest.mark.e2e
def test_sshd_accepts_the_config_and_refuses_passwords(tmp_path: Path) -> None:
    sshd = sshd_binary()
    conf = by_path(render_layer(spec("container-host")))["/etc/ssh/sshd_config.d/00-hardhost.conf"]
    config = tmp_path / "sshd_config"
    config.write_text(conf.content)
    host_key = make_keypair(tmp_path / "keys", "host")
    # -T checks and prints the effective configuration; the image's HostKey lives on the
    # state disk, so a throwaway key stands in for it here.
    effective = subprocess.run([sshd, "-T", "-f", str(config), "-h", str(host_key.private)],
                               check=True, capture_output=True, text=True).stdout
    settings = dict(line.split(" ", 1) for line in effective.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "without-password"
    assert settings["authenticationmethods"] == "publickey"


def test_root_login_is_refused_unless_the_spec_allows_it() -> None:
    import dataclasses

    base = spec("container-host")
    closed = dataclasses.replace(base, ssh=dataclasses.replace(base.ssh, permit_root_login=False),
                                 access=dataclasses.replace(base.access, user="admin"))
    conf = by_path(render_layer(closed))["/etc/ssh/sshd_config.d/00-hardhost.conf"].content
    assert "PermitRootLogin no\n" in conf
    assert "AllowUsers admin\n" in conf


def test_docker_storage_gets_its_own_tmpfs_only_with_docker() -> None:
    assert "/var/lib/docker" in by_path(render_layer(spec("container-host")))["/etc/fstab"].content
    assert "/var/lib/docker" not in by_path(render_layer(spec("minimal")))["/etc/fstab"].content


def test_lock_passwords(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:20000:0:99999:7:::\nbob:$6$salt$hash:20000::::::\n"
                      "daemon:!:20000::::::\n")
    lock_passwords(shadow)
    fields = [line.split(":")[1] for line in shadow.read_text().splitlines()]
    assert fields == ["!*", "!$6$salt$hash", "!"]


# --- a host that boots clean ----------------------------------------------------------------


def pam_env_file(text: str) -> dict[str, str]:
    """What pam_env takes from an envfile: KEY=VALUE lines; '#' starts a comment."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key.isidentifier() and value, f"pam_env cannot read {line!r}"
            values[key] = value
    return values


@pytest.mark.parametrize("image", ["minimal", "container-host"])
def test_logins_find_a_locale_that_pruning_keeps(image: str) -> None:
    """Debian's sshd and login PAM stacks read /etc/default/locale with pam_env; without
    it every login logs 'Unable to open env file'."""
    files = by_path(render_layer(spec(image)))
    assert pam_env_file(files["/etc/default/locale"].content) == {"LANG": "C.UTF-8"}
    # C.UTF-8 is compiled into glibc: none of the locale data the prune drops is needed.
    assert not any(pattern.startswith("usr/lib/locale")
                   for pattern in prune_patterns(spec(image)))


def test_binfmt_misc_stays_out_of_the_image() -> None:
    """The module is pruned, so its units are masked; were it kept, they would not be."""
    for image in ("minimal", "container-host"):
        s = spec(image)
        assert not any(fnmatch.fnmatchcase("binfmt_misc", p) for p in s.kernel.modules)
        assert set(BINFMT_UNITS) <= set(masked_units(s))


@pytest.mark.parametrize("image", ["minimal", "container-host"])
def test_masked_units_are_masked_for_systemd(image: str, tmp_path: Path) -> None:
    """systemctl, the real consumer, reads the tree the stage wrote: the binfmt_misc units
    that would fail every boot of a pruned image are masked, the rest of systemd's untouched."""
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for name in (*BINFMT_UNITS, "dev-mqueue.mount"):
        (units / name).write_text("[Unit]\nDescription=test\n")
    mask_units(tmp_path, spec(image))
    for name in (*BINFMT_UNITS, "dev-mqueue.mount"):
        state = subprocess.run(["systemctl", f"--root={tmp_path}", "is-enabled", name],
                               capture_output=True, text=True).stdout.strip()
        assert state == ("masked" if name in BINFMT_UNITS else "static"), name


DEBIAN_SSHD_PAM = """\
# Standard Un*x authentication.
@include common-auth
session    required     pam_env.so # [1]
# In Debian 4.0 (etch), locale-related environment variables were moved to
# /etc/default/locale, so read that as well.
session    required     pam_env.so user_readenv=1 envfile=/etc/default/locale
# session  required     pam_env.so user_readenv=1 (a comment stays as written)
"""


def test_logins_do_not_read_a_users_pam_environment(tmp_path: Path) -> None:
    """The stanza of Debian 12's /etc/pam.d/sshd: the user's ~/.pam_environment is no longer
    read, the system's locale still is, and nothing else changes."""
    pam = tmp_path / "etc/pam.d"
    pam.mkdir(parents=True)
    (pam / "sshd").write_text(DEBIAN_SSHD_PAM)
    (pam / "other").write_text("@include common-auth\n")
    no_user_pam_environment(tmp_path)
    lines = (pam / "sshd").read_text().splitlines()
    assert "session    required     pam_env.so envfile=/etc/default/locale" in lines
    assert [line for line in lines if "user_readenv" in line] == [
        "# session  required     pam_env.so user_readenv=1 (a comment stays as written)"]
    assert len(lines) == len(DEBIAN_SSHD_PAM.splitlines())
    assert (pam / "other").read_text() == "@include common-auth\n"


def test_the_boot_deadline_carries_the_specs_timeout(tmp_path: Path) -> None:
    """The timer that reboots an unblessed boot fires boot.bless_timeout after boot (the e2e
    update test brings it forward rather than wait), and systemd accepts both units."""
    base = spec("container-host")
    custom = dataclasses.replace(base, boot=dataclasses.replace(base.boot, bless_timeout=600))
    files = by_path(render_layer(custom))
    for kind in ("timer", "service"):
        rendered = files[f"/etc/systemd/system/{BOOT_DEADLINE_UNIT}.{kind}"]
        (tmp_path / f"{BOOT_DEADLINE_UNIT}.{kind}").write_text(rendered.content)
    timer = (tmp_path / f"{BOOT_DEADLINE_UNIT}.timer").read_text().splitlines()
    assert "OnBootSec=600s" in timer
    assert f"ConditionPathExists={BOOT_COUNT_VARIABLE}" in timer
    verified = subprocess.run(["systemd-analyze", "verify", "--man=no",
                               str(tmp_path / f"{BOOT_DEADLINE_UNIT}.timer")],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
