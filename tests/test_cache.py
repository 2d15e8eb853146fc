from __future__ import annotations

import dataclasses

from builder.spec import Spec, load_spec, parse_spec
from builder.stages.bootstrap import bootstrap_key
from builder.stages.rootfs import derived_identity
from tests.conftest import IMAGES


def container_host() -> Spec:
    return load_spec(IMAGES / "container-host.toml")


def test_key_is_stable() -> None:
    assert bootstrap_key(container_host()) == bootstrap_key(container_host())


def test_key_ignores_package_order() -> None:
    text = (IMAGES / "container-host.toml").read_text()
    reordered = text.replace('    "systemd",\n    "systemd-sysv",\n',
                             '    "systemd-sysv",\n    "systemd",\n')
    assert reordered != text
    assert bootstrap_key(parse_spec(reordered, "x")) == bootstrap_key(container_host())


def test_key_follows_every_bootstrap_input() -> None:
    base = container_host()
    changed = [
        dataclasses.replace(base, packages=dataclasses.replace(
            base.packages, include=(*base.packages.include, "curl"))),
        dataclasses.replace(base, distribution=dataclasses.replace(
            base.distribution, mirror="http://mirror.example/debian")),
        dataclasses.replace(base, distribution=dataclasses.replace(
            base.distribution, suite="trixie")),
        dataclasses.replace(base, distribution=dataclasses.replace(
            base.distribution, architecture="arm64")),
    ]
    keys = {bootstrap_key(spec) for spec in changed}
    assert len(keys) == len(changed)
    assert bootstrap_key(base) not in keys


def test_key_ignores_later_stages_inputs() -> None:
    base = container_host()
    later = [
        dataclasses.replace(base, sysctl=(("kernel.sysrq", "1"),)),
        dataclasses.replace(base, ssh=dataclasses.replace(base.ssh, permit_root_login=False)),
        dataclasses.replace(base, kernel=dataclasses.replace(base.kernel, cmdline=("debug",))),
        dataclasses.replace(base, description="changed"),
    ]
    assert {bootstrap_key(spec) for spec in later} == {bootstrap_key(base)}


def test_verity_salt_and_uuid_derive_from_the_inputs() -> None:
    base = container_host()
    salt, uuid = derived_identity(base, "k1")
    assert (salt, uuid) == derived_identity(base, "k1")
    assert len(salt) == 64 and int(salt, 16) >= 0
    assert derived_identity(base, "k2")[0] != salt
    other = dataclasses.replace(base, sysctl=(("kernel.sysrq", "1"),))
    assert derived_identity(other, "k1") != (salt, uuid)
