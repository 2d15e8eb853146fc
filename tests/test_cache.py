from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hardhost.builder.build import STAGES, stage_keys
from hardhost.builder.cache import StageCache
from hardhost.builder.spec import (
    Compression,
    Spec,
    load_spec,
    parse_spec,
    with_authorized_keys,
)
from hardhost.builder.stages.bootstrap import UNUSED_DAYS, bootstrap_key, evict_unused
from hardhost.builder.stages.rootfs import derived_identity
from tests.support.paths import IMAGES


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


def test_verity_salt_and_uuid_derive_from_the_rootfs_key() -> None:
    salt, uuid = derived_identity("k1")
    assert (salt, uuid) == derived_identity("k1")
    assert len(salt) == 64 and int(salt, 16) >= 0
    assert derived_identity("k2")[0] != salt
    assert derived_identity("k2")[1] != uuid


# container-host boots a UKI: it embeds the root hash, so whatever reaches the root image
# reaches the UKI too.
ALL = {"bootstrap", "harden", "security", "initramfs", "prune", "rootfs", "uki", "disk",
       "manifest"}
FROM_HARDEN = {"harden", "rootfs", "uki", "disk", "manifest"}
FROM_SECURITY = {"security", "rootfs", "uki", "disk", "manifest"}
FROM_PRUNE = {"prune", "rootfs", "uki", "disk", "manifest"}
FROM_ROOTFS = {"rootfs", "uki", "disk", "manifest"}
FROM_UKI = {"uki", "disk", "manifest"}
FROM_DISK = {"disk", "manifest"}
ONLY_MANIFEST = {"manifest"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ7p0x1b2d5a3f0c7e9b8a6d4c2e0f1a3b5c7d9e1f3a5b7 a"
OTHER_KEY = KEY.replace(" a", " b").replace("AAAAIG", "AAAAIH")
EPOCH = 1700000000


def changed_stages(before: Spec, after: Spec, epoch: int = EPOCH) -> set[str]:
    old, new = stage_keys(before, EPOCH), stage_keys(after, epoch)
    return {name for name in old if old[name] != new[name]}


def test_stage_keys_are_stable_and_distinct() -> None:
    base = with_authorized_keys(container_host(), (KEY,), "test")
    keys = stage_keys(base, EPOCH)
    assert keys == stage_keys(base, EPOCH)
    assert [s.name for s in STAGES] == list(keys)
    assert len(set(keys.values())) == len(keys)


def _section(spec: Spec, name: str, **changes: object) -> Spec:
    return dataclasses.replace(spec, **{name: dataclasses.replace(getattr(spec, name),
                                                                  **changes)})


CHANGES: list[tuple[str, Callable[[Spec], Spec], set[str]]] = [
    ("a package", lambda s: _section(s, "packages", include=(*s.packages.include, "curl")),
     ALL),
    ("the mirror", lambda s: _section(s, "distribution", mirror="http://mirror.example/d"),
     ALL),
    ("the security mirror", lambda s: _section(
        s, "distribution", security_mirror="http://mirror.example/debian-security"), ALL),
    ("no security updates", lambda s: _section(s, "distribution", security_mirror=""), ALL),
    ("no stable updates", lambda s: _section(s, "distribution", updates=False), ALL),
    ("one sysctl", lambda s: dataclasses.replace(s, sysctl=(*s.sysctl, ("kernel.sysrq", "1"))),
     FROM_HARDEN),
    ("an authorized key", lambda s: with_authorized_keys(s, (OTHER_KEY,), "test"),
     FROM_HARDEN),
    ("the sshd root login", lambda s: _section(s, "ssh", permit_root_login=False), FROM_HARDEN),
    ("the subordinate ids", lambda s: _section(s, "userns", subid_start=200000), FROM_HARDEN),
    ("the keyring syscalls", lambda s: _section(s, "seccomp", allow_keyring=True),
     FROM_SECURITY),
    ("the container AppArmor profile",
     lambda s: _section(s, "apparmor", container_profile=False), FROM_SECURITY),
    ("docs pruning", lambda s: _section(s, "prune", docs=False), FROM_PRUNE),
    ("module pruning", lambda s: _section(s, "prune", kernel_modules=False), FROM_PRUNE),
    ("hwdb pruning", lambda s: _section(s, "prune", hwdb=False), FROM_PRUNE),
    ("the module set", lambda s: _section(s, "kernel", modules=(*s.kernel.modules, "fuse")),
     FROM_PRUNE),
    ("a pruned path", lambda s: _section(s, "prune", paths=("usr/bin/ctr",)), FROM_PRUNE),
    ("the compression", lambda s: _section(s, "image", compression=Compression.LZ4),
     FROM_ROOTFS),
    ("the kernel command line", lambda s: _section(s, "kernel", cmdline=("debug",)),
     FROM_UKI),
    # os-release carries it, and the UKI carries os-release.
    ("the version", lambda s: dataclasses.replace(s, version="2"), FROM_HARDEN),
    ("the slot size", lambda s: _section(s, "disk", slot_size_mib=2048), FROM_DISK),
    # The deadline timer is a unit file of the image.
    ("the bless timeout", lambda s: _section(s, "boot", bless_timeout=600), FROM_HARDEN),
    # An update names the new UKI with it; the image itself does not change.
    ("the boot tries", lambda s: _section(s, "boot", tries=5), ONLY_MANIFEST),
    ("the manifest validity", lambda s: _section(s, "manifest", validity_days=7),
     ONLY_MANIFEST),
    ("the description", lambda s: dataclasses.replace(s, description="other"), ONLY_MANIFEST),
    ("nothing but the spec's path", lambda s: dataclasses.replace(s, source="/elsewhere.toml"),
     set()),
]


@pytest.mark.parametrize(("what", "change", "expected"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_input_invalidates_exactly_its_dependent_stages(
        what: str, change: Callable[[Spec], Spec], expected: set[str]) -> None:
    base = with_authorized_keys(container_host(), (KEY,), "test")
    assert changed_stages(base, change(base)) == expected, what


def test_the_epoch_reaches_the_stages_that_write_times() -> None:
    base = with_authorized_keys(container_host(), (KEY,), "test")
    assert changed_stages(base, base, EPOCH + 1) == {"harden", "initramfs", "rootfs", "uki",
                                                     "disk", "manifest"}


def test_a_profile_file_is_an_input_by_content(tmp_path: Path) -> None:
    profile = tmp_path / "web.apparmor"
    profile.write_text("profile web {}\n")
    base = _section(with_authorized_keys(container_host(), (KEY,), "test"), "apparmor",
                    profiles=(str(profile),))
    before = stage_keys(base, EPOCH)
    profile.write_text("profile web { /etc/hostname r, }\n")
    after = stage_keys(base, EPOCH)
    assert {name for name in before if before[name] != after[name]} == FROM_SECURITY


def test_stage_cache_keeps_the_most_recently_used(tmp_path: Path) -> None:
    source = tmp_path / "artifact"
    cache = StageCache(tmp_path / "cache", "rootfs", keep=2)
    for number, key in enumerate(("a", "b", "c")):
        source.write_text(key)
        cache.store(key, {"root.img": source})
        os.utime(tmp_path / "cache/rootfs" / key, (1000 + number, 1000 + number))
        if key == "b":
            assert cache.lookup("a") is not None  # used again: now the newest
    assert cache.lookup("b") is None
    entry = cache.lookup("a")
    assert entry is not None and (entry / "root.img").read_text() == "a"
    assert sorted(p.name for p in (tmp_path / "cache/rootfs").iterdir()) == ["a", "c"]


def test_cached_trees_unused_for_a_month_and_dead_partial_ones_are_deleted(
        tmp_path: Path) -> None:
    now = 2_000_000_000.0
    day = 86400.0

    def tree(name: str, *, used_days_ago: float, made_days_ago: float) -> None:
        (tmp_path / name).write_bytes(b"tree")
        os.utime(tmp_path / name, (now - used_days_ago * day, now - made_days_ago * day))

    tree("unused.tar", used_days_ago=UNUSED_DAYS + 1, made_days_ago=UNUSED_DAYS + 1)
    # Made long ago but used last week: its age is not what counts.
    tree("old-but-used.tar", used_days_ago=7, made_days_ago=100)
    tree(".dead.123.partial.tar", used_days_ago=0, made_days_ago=2)
    tree(".writing.456.partial.tar", used_days_ago=0, made_days_ago=0.1)
    tree("notes.txt", used_days_ago=400, made_days_ago=400)
    (tmp_path / "folder.tar").mkdir()
    assert evict_unused(tmp_path, now=now) == [".dead.123.partial.tar", "unused.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".writing.456.partial.tar", "folder.tar", "notes.txt", "old-but-used.tar"]
