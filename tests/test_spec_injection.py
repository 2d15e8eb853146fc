"""Every spec value that is rendered somewhere (the kernel command line, sysctl.conf, sshd's
config, subuid, daemon.json, apt's sources, authorized_keys, argv) refuses what would let it
say more than itself: a newline that starts a second line, a space that starts a second
argument, a control character, spaces around it.

The table of fields is checked against the Spec dataclasses, so a new field without a case
here fails `test_every_string_field_is_covered`.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

import pytest

from hardhost.builder.cmdline import kernel_cmdline
from hardhost.builder.spec import Spec, parse_spec
from hardhost.core.errors import SpecError

ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFh0ZXN0a2V5Zm9yZ29sZGVuZmlsZXNvbmx5MDEyMzQ1 "
           "admin@example")

# A valid value for every string-bearing field, all set at once in VALID: each case below
# changes one of them, so a refusal can only come from that one.
SAMPLES: dict[str, Any] = {
    "name": "web-1",
    "description": "A host. With words, and punctuation: fine",
    "distribution.suite": "bookworm",
    "distribution.mirror": "http://deb.debian.org/debian",
    "distribution.security_mirror": "https://security.example/debian-security",
    "distribution.architecture": "amd64",
    "packages.include": ["systemd", "openssh-server", "podman", "runc"],
    "image.filesystem": "erofs",
    "image.compression": "lz4hc",
    "version": "2.4.1",
    "image.secure_boot_key": "keys/db.key",
    "image.secure_boot_cert": "keys/db.crt",
    "kernel.cmdline": ["quiet", "loglevel=3"],
    "kernel.console": "ttyS0,115200n8",
    "kernel.modules": ["dm_verity", "virtio*", "net/netfilter/"],
    "access.user": "admin",
    "access.authorized_keys": [ED25519],
    "prune.paths": ["usr/bin/ctr"],
    "manifest.signing_key": "keys/signing.key",
    "seccomp.profiles": ["profiles/web.seccomp.json"],
    "apparmor.profiles": ["profiles/web.apparmor"],
    "selinux.modules": ["profiles/web.cil"],
    "userns.remap_user": "dockremap",
    "containers.engine": "podman",
    "containers.allowed_registries": ["registry.example:5000", "10.0.0.1"],
    "containers.signing_keys": ["keys/ci.gpg"],
    "containers.lookaside": "https://registry.example/signatures",
    "containers.runtimes": ["runc"],
    "containers.default_runtime": "runc",
    "sysctl": {"net.ipv4.ip_local_port_range": "32768 60999"},
}

# Fields whose values are one token wherever they go (argv, a config word, the command
# line): an inner space is an injection. Free text and file paths may hold spaces.
MAY_HOLD_SPACES = {"description", "image.secure_boot_key", "image.secure_boot_cert",
                   "manifest.signing_key", "seccomp.profiles", "apparmor.profiles",
                   "selinux.modules", "access.authorized_keys", "sysctl",
                   "containers.signing_keys"}


def toml_string(text: str) -> str:
    """A TOML basic string holding exactly `text`, control characters escaped."""
    out = []
    for char in text:
        if char in '"\\' or not " " <= char <= "~":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def render(values: dict[str, Any]) -> str:
    top = [f"{key} = {toml_value(v)}" for key, v in values.items()
           if "." not in key and key != "sysctl"]
    sections: dict[str, list[str]] = {"ssh": ["permit_root_login = true"]}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"{name} = {toml_value(value)}")
    if "sysctl" in values:
        sections["sysctl"] = [f"{toml_string(k)} = {toml_value(v)}"
                              for k, v in values["sysctl"].items()]
    body = "\n".join(top)
    for section, lines in sections.items():
        body += f"\n[{section}]\n" + "\n".join(lines)
    return body + "\n"


def parse(values: dict[str, Any]) -> Spec:
    return parse_spec(render(values), "spec.toml")


def refused(values: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(values)
    return info.value


def string_fields(cls: type[Any] = Spec, prefix: str = "") -> set[str]:
    """Every field of the spec whose TOML value is a string, a list of strings or a table
    of them (the sysctls), by its dotted key."""
    found: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":  # set by the loader, not read from TOML
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = args[0] if typing.get_origin(hint) is not tuple and args else hint
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(inner):
            found |= string_fields(typing.cast(type[Any], inner), f"{key}.")
        elif inner is str or typing.get_origin(inner) is tuple or (
                isinstance(inner, type) and issubclass(inner, enum.Enum)):
            found.add(key)
    return found


VALID = dict(SAMPLES)


def test_every_string_field_is_covered() -> None:
    assert string_fields() == set(SAMPLES)


def test_the_samples_are_valid_together() -> None:
    spec = parse(VALID)
    assert spec.kernel.console == "ttyS0,115200n8"
    assert spec.access.authorized_keys == (ED25519,)


def with_value(key: str, transform: Any) -> dict[str, Any]:
    """VALID with the value of `key` (its first item, for a list) passed through
    `transform`."""
    values = dict(VALID)
    value = values[key]
    if isinstance(value, list):
        values[key] = [transform(value[0]), *value[1:]]
    elif isinstance(value, dict):
        (name, inner), = value.items()
        values[key] = {name: transform(inner)}
    else:
        values[key] = transform(value)
    return values


INJECTIONS = {
    "a trailing newline": lambda v: v + "\n",
    "a second line": lambda v: v + "\ninit=/bin/sh",
    "a carriage return": lambda v: v + "\rx",
    "a tab": lambda v: v + "\tx",
    "an escape sequence": lambda v: v + "\x1b[2J",
    "a NUL": lambda v: v + "\x00",
    "a DEL": lambda v: v + "\x7f",
    "a leading space": lambda v: " " + v,
    "a trailing space": lambda v: v + " ",
}


@pytest.mark.parametrize("key", sorted(SAMPLES))
@pytest.mark.parametrize("how", sorted(INJECTIONS))
def test_injected_characters_are_refused_naming_the_key(key: str, how: str) -> None:
    error = refused(with_value(key, INJECTIONS[how]))
    assert error.key == key
    assert error.path == "spec.toml"
    assert "\n" not in str(error) and "\x1b" not in str(error) and "\r" not in str(error)


@pytest.mark.parametrize("key", sorted(set(SAMPLES) - MAY_HOLD_SPACES))
def test_a_second_word_is_refused_where_a_value_is_one_token(key: str) -> None:
    error = refused(with_value(key, lambda v: v + " init=/bin/sh"))
    assert error.key == key


def test_sysctl_keys_refuse_a_second_line() -> None:
    values = dict(VALID, sysctl={"kernel.sysrq\nkernel.modules_disabled": "0"})
    assert refused(values).key == "sysctl"
    values = dict(VALID, sysctl={"kernel.sysrq ": "0"})
    assert refused(values).key == "sysctl"


@pytest.mark.parametrize("value", ["1 # comment", "1 ; x", "1  2", "", " "])
def test_sysctl_values_are_single_spaced_words(value: str) -> None:
    assert refused(dict(VALID, sysctl={"kernel.sysrq": value})).key == "sysctl"


# --- the kernel command line ----------------------------------------------------------------


def tokens(spec: Spec) -> list[str]:
    return kernel_cmdline(spec, "ab" * 32).split(" ")


@pytest.mark.parametrize("console", [
    "ttyS0 init=/bin/sh",
    "ttyS0 hardhost.roothash=" + "00" * 32,
    "ttyS0=x", 'ttyS0"', "ttyS0\n", "tty S0", "-", "",
])
def test_console_cannot_smuggle_arguments(console: str) -> None:
    assert refused(dict(VALID, **{"kernel.console": console})).key == "kernel.console"


@pytest.mark.parametrize("console", ["ttyS0", "ttyS0,115200n8", "hvc0", "tty0",
                                     "uart8250,io,0x3f8,115200"])
def test_console_accepts_kernel_console_syntax(console: str) -> None:
    spec = parse(dict(VALID, **{"kernel.console": console}))
    assert f"console={console}" in tokens(spec)


@pytest.mark.parametrize("arg", [
    # What boots, and how it is verified.
    "root=/dev/vda", "rootfstype=ext4", "rootflags=rw", "roothash=" + "00" * 32,
    "usrhash=00", "rw", "ro", "init=/bin/sh", "rdinit=/bin/sh", "initrd=/evil.img",
    "hardhost.roothash=" + "00" * 32, "hardhost.data=/dev/vdz", "hardhost.hash=/dev/vdz",
    "hardhost.state=/dev/vdz", "hardhost.anything=1", "dm-mod.create=x", "dm_mod.create=x",
    "nfsroot=1.2.3.4:/x",
    # A shell, another target, or the environment of PID 1.
    "break", "break=premount", "single", "emergency", "rescue", "1", "s",
    "systemd.unit=emergency.target", "rd.systemd.unit=emergency.target",
    "systemd.debug_shell", "systemd.debug-shell=1", "systemd.crash_shell=1",
    "systemd.setenv=SYSTEMD_SULOGIN_FORCE=1", "systemd.run=/bin/sh", "systemd.mask=x.service",
    "systemd.wants=debug-shell.service", "systemd.confirm_spawn=1", "systemd.verity=0",
    # The LSM whose profiles the manifest records.
    "apparmor=0", "security=selinux", "lsm=landlock", "selinux=1", "enforcing=0",
    "apparmor.enabled=0", "apparmor.mode=complain",
    # A failed boot that never restarts never uses up its try.
    "panic=0", "panic=-1",
])
def test_cmdline_refuses_what_decides_the_boot(arg: str) -> None:
    error = refused(dict(VALID, **{"kernel.cmdline": [arg]}))
    assert error.key == "kernel.cmdline"
    assert "the builder sets it and a spec cannot" in error.problem


def test_cmdline_sysctls_belong_in_the_sysctl_table() -> None:
    error = refused(dict(VALID, **{"kernel.cmdline": [
        "sysctl.kernel.unprivileged_userns_clone=1"]}))
    assert error.key == "kernel.cmdline" and "set sysctls in the [sysctl] table" in error.problem


@pytest.mark.parametrize("arg", [
    "quiet init=/bin/sh", "--", "-s", "LD_PRELOAD=/x", "Init=/bin/sh", 'x="a', "x='a",
    "x=$(reboot)", "x=`id`", "x=*", "x=a;b", "x=a\\b", "", "x=a b",
])
def test_cmdline_items_are_one_plain_argument(arg: str) -> None:
    assert refused(dict(VALID, **{"kernel.cmdline": [arg]})).key == "kernel.cmdline"


@pytest.mark.parametrize("arg", [
    "quiet", "loglevel=3", "console=tty0", "mitigations=auto,nosmt",
    "systemd.log_level=debug", "systemd.show_status=0", "systemd.unified_cgroup_hierarchy=0",
    "systemd.journald.forward_to_console=1", "nvme_core.io_timeout=4294967295",
    "ip=dhcp", "module_blacklist=floppy,pcspkr",
])
def test_cmdline_accepts_ordinary_arguments(arg: str) -> None:
    spec = parse(dict(VALID, **{"kernel.cmdline": [arg]}))
    assert tokens(spec)[-1] == arg


def test_the_command_line_carries_one_root_and_one_root_hash() -> None:
    spec = parse(VALID)
    names = [token.split("=", 1)[0] for token in tokens(spec)]
    for name in ("root", "hardhost.roothash", "hardhost.data", "hardhost.hash", "console"):
        assert names.count(name) == 1
    assert "init" not in names


def test_a_failed_boot_restarts_the_machine() -> None:
    """A panic, or a root the initramfs cannot open, restarts after a few seconds (so the
    boot uses up a try) rather than halting or opening a shell on the console."""
    panics = [token for token in tokens(parse(VALID)) if token.startswith("panic=")]
    assert len(panics) == 1 and int(panics[0].partition("=")[2]) > 0


# --- other rendered values ------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    'command="/bin/sh" ' + ED25519,  # options: a spec's key grants a plain login only
    "ssh-ed25519 !!!! x",
    "ssh-ed25519 AAAA",  # base64 of no key
    ED25519.replace("ssh-ed25519", "ssh-rsa", 1),  # the blob says ed25519
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
    ED25519 + "\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFh0ZXN0a2V5 attacker",
    ED25519.replace(" ", "  ", 1),
])
def test_authorized_keys_are_plain_key_lines(line: str) -> None:
    values = dict(VALID, **{"access.authorized_keys": [line]})
    assert refused(values).key == "access.authorized_keys"


@pytest.mark.parametrize("mirror", [
    "http://deb.debian.org/debian main", "http://deb.debian.org/debian\n",
    "http:///debian", "ftp://deb.debian.org/debian", "deb.debian.org/debian",
    "[trusted=yes] http://evil.example/debian",
])
@pytest.mark.parametrize("key", ["distribution.mirror", "distribution.security_mirror"])
def test_mirror_is_one_url(mirror: str, key: str) -> None:
    values = dict(VALID, **{key: mirror})
    assert refused(values).key == key


def test_an_empty_security_mirror_leaves_security_updates_out() -> None:
    assert parse(dict(VALID, **{"distribution.security_mirror": ""})
                 ).distribution.security_mirror == ""
    assert refused(dict(VALID, **{"distribution.mirror": ""})).key == "distribution.mirror"


@pytest.mark.parametrize("architecture", ["arm64", "amd64 --include=evil", "amd64\n", ""])
def test_architecture_is_the_one_hardhost_boots(architecture: str) -> None:
    values = dict(VALID, **{"distribution.architecture": architecture})
    assert refused(values).key == "distribution.architecture"


def test_remap_user_is_neither_root_nor_the_login_user() -> None:
    assert refused(dict(VALID, **{"userns.remap_user": "root"})).key == "userns.remap_user"
    assert refused(dict(VALID, **{"userns.remap_user": "admin"})).key == "userns.remap_user"


def test_subordinate_ids_end_inside_32_bits() -> None:
    text = render(VALID).replace('remap_user = "dockremap"',
                                 'remap_user = "dockremap"\nsubid_start = 4294901760\n'
                                 "subid_count = 65537")
    with pytest.raises(SpecError) as info:
        parse_spec(text, "spec.toml")
    assert info.value.key == "userns.subid_count"


@pytest.mark.parametrize(("key", "value"), [
    ("selinux.modules", "profiles/.."), ("seccomp.profiles", "profiles/"),
    ("apparmor.profiles", ""), ("manifest.signing_key", "keys/."),
])
def test_profile_and_key_paths_name_files(key: str, value: str) -> None:
    values = dict(VALID)
    values[key] = [value] if isinstance(values[key], list) else value
    assert refused(values).key == key


def test_description_is_one_short_line() -> None:
    assert refused(dict(VALID, description="x" * 201)).key == "description"


def test_unknown_keys_are_shown_escaped() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec('"evil\\u001b[2J\\nkey" = 1\n' + render(VALID), "spec.toml")
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message
    assert "\\x1b[2J\\x0akey: unknown key" in message
