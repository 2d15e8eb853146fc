from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hardhost.builder.spec import (
    MAX_SPEC_BYTES,
    Compression,
    Filesystem,
    load_spec,
    parse_spec,
    with_authorized_keys,
)
from hardhost.builder.stages.bootstrap import sources
from hardhost.core.errors import SpecError, UsageError
from tests.support.paths import IMAGES, REPO

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ7p0x1b2d5a3f0c7e9b8a6d4c2e0f1a3b5c7d9e1f3a5b7 test"

MINIMAL = """
name = "t"
[packages]
include = ["systemd", "openssh-server"]
[ssh]
permit_root_login = true
"""


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "spec.toml")
    return str(info.value)


@pytest.mark.parametrize("name", ["minimal", "container-host"])
def test_shipped_specs_parse(name: str) -> None:
    spec = load_spec(IMAGES / f"{name}.toml")
    assert spec.name == name
    assert "linux-image-amd64" in spec.packages.include
    assert "openssh-server" in spec.packages.include


def test_container_host_carries_the_container_runtime() -> None:
    spec = load_spec(IMAGES / "container-host.toml")
    assert {"docker.io", "containerd", "runc", "apparmor"} <= set(spec.packages.include)
    assert spec.image.filesystem is Filesystem.EROFS
    assert spec.distribution.mirror.startswith("http")


def test_defaults_fill_unset_sections() -> None:
    spec = parse_spec(MINIMAL, "spec.toml")
    assert spec.distribution.suite == "bookworm"
    assert spec.image.effective_compression is Compression.LZ4HC
    assert spec.prune.docs is True
    assert spec.source == "spec.toml"


def test_bad_toml_names_the_line() -> None:
    message = error_of('name = "t"\n[packages]\ninclude = [\n"a",\nnot valid\n')
    assert message.startswith("spec.toml: line 5: invalid TOML")


def test_unknown_top_level_key() -> None:
    assert error_of("colour = 'blue'\n" + MINIMAL).startswith("spec.toml: colour: unknown key")


def test_unknown_nested_key() -> None:
    text = MINIMAL.replace("[ssh]", "[ssh]\npermit_passwords = true")
    assert error_of(text).startswith("spec.toml: ssh.permit_passwords: unknown key")


def test_wrong_type() -> None:
    text = MINIMAL.replace("permit_root_login = true", 'permit_root_login = "yes"')
    assert error_of(text) == "spec.toml: ssh.permit_root_login: expected true or false, " \
                             "got a string"


def test_section_that_is_not_a_table() -> None:
    message = error_of('ssh = "on"\n' + MINIMAL.replace("[ssh]\npermit_root_login = true", ""))
    assert message == "spec.toml: ssh: expected a table, got a string"


def test_empty_package_list() -> None:
    text = MINIMAL.replace('["systemd", "openssh-server"]', "[]")
    assert error_of(text) == "spec.toml: packages.include: must list at least one package"


def test_missing_required_key() -> None:
    assert error_of(MINIMAL.replace('name = "t"', "")) == "spec.toml: name: is required"


def test_invalid_package_name() -> None:
    text = MINIMAL.replace('"systemd"', '"Systemd; rm -rf /"')
    assert "packages.include: 'Systemd; rm -rf /' is not a Debian package name" in error_of(text)


def test_enum_value_lists_the_choices() -> None:
    message = error_of(MINIMAL + '[image]\nfilesystem = "ext4"\n')
    assert message == "spec.toml: image.filesystem: 'ext4' is not one of erofs, squashfs"


def test_compression_must_suit_the_filesystem() -> None:
    message = error_of(MINIMAL + '[image]\nfilesystem = "erofs"\ncompression = "xz"\n')
    assert message.startswith("spec.toml: image.compression: xz is not available for erofs")


def test_squashfs_defaults_to_xz() -> None:
    spec = parse_spec(MINIMAL + '[image]\nfilesystem = "squashfs"\n', "spec.toml")
    assert spec.image.effective_compression is Compression.XZ


def test_root_login_must_be_allowed_for_root_access() -> None:
    text = MINIMAL.replace("permit_root_login = true", "permit_root_login = false")
    assert error_of(text).startswith("spec.toml: access.user: root cannot log in")


def test_sysctl_overrides_accept_flat_and_nested_keys() -> None:
    spec = parse_spec(MINIMAL + '[sysctl]\n"kernel.sysrq" = 1\n[sysctl.net.ipv4]\n'
                      "ip_forward = 1\n", "spec.toml")
    assert dict(spec.sysctl) == {"kernel.sysrq": "1", "net.ipv4.ip_forward": "1"}


@pytest.mark.parametrize(("line", "problem"), [
    ('"kernel.sysrq" = true', "expected an integer or string, got a boolean"),
    ('"kernel sysrq" = 1', "is not a sysctl name"),
    ('"kernel.sysrq" = "1\\n2"', "a value is printable words separated by single spaces"),
])
def test_bad_sysctls(line: str, problem: str) -> None:
    message = error_of(MINIMAL + f"[sysctl]\n{line}\n")
    assert message.startswith("spec.toml: sysctl: ") and problem in message


def test_authorized_keys_must_be_public_key_lines() -> None:
    message = error_of(MINIMAL + '[access]\nauthorized_keys = ["not a key"]\n')
    assert message.startswith("spec.toml: access.authorized_keys: 'not a key' is not an OpenSSH")


def test_cmdline_cannot_override_the_root() -> None:
    message = error_of(MINIMAL + '[kernel]\ncmdline = ["root=/dev/sda1"]\n')
    assert message == ("spec.toml: kernel.cmdline: 'root=/dev/sda1': root decides what boots "
                       "or how it is verified; the builder sets it and a spec cannot")


def test_added_keys_are_validated_and_deduplicated() -> None:
    spec = parse_spec(MINIMAL + f'[access]\nauthorized_keys = ["{KEY}"]\n', "spec.toml")
    merged = with_authorized_keys(spec, (KEY,), "--authorized-key")
    assert merged.access.authorized_keys == (KEY,)
    with pytest.raises(SpecError):
        with_authorized_keys(spec, ("ssh-dss AAAA",), "--authorized-key")


def test_specs_from_before_the_update_suites_keep_their_digest() -> None:
    plain = parse_spec(MINIMAL, "a.toml")
    explicit = parse_spec(MINIMAL + '[distribution]\nupdates = true\nsecurity_mirror = '
                          '"http://deb.debian.org/debian-security"\n', "a.toml")
    assert plain == explicit and plain.digest() == explicit.digest()
    without = parse_spec(MINIMAL + '[distribution]\nsecurity_mirror = ""\n', "a.toml")
    assert without.digest() != plain.digest()
    assert error_of(MINIMAL + '[distribution]\nupdates = "yes"\n').startswith(
        "spec.toml: distribution.updates:")


@pytest.mark.parametrize(("distribution", "expected"), [
    ("", ["deb http://deb.debian.org/debian bookworm main",
          "deb http://deb.debian.org/debian bookworm-updates main",
          "deb http://deb.debian.org/debian-security bookworm-security main"]),
    ('mirror = "http://m.example/d"\nsecurity_mirror = "https://s.example/ds"\n',
     ["deb http://m.example/d bookworm main", "deb http://m.example/d bookworm-updates main",
      "deb https://s.example/ds bookworm-security main"]),
    ("updates = false\n", ["deb http://deb.debian.org/debian bookworm main",
                           "deb http://deb.debian.org/debian-security bookworm-security main"]),
    ('security_mirror = ""\n', ["deb http://deb.debian.org/debian bookworm main",
                                "deb http://deb.debian.org/debian bookworm-updates main"]),
    ('suite = "sid"\n', ["deb http://deb.debian.org/debian sid main"]),
])
def test_the_sources_are_the_release_its_updates_and_its_security_updates(
        distribution: str, expected: list[str]) -> None:
    spec = parse_spec(MINIMAL + f"[distribution]\n{distribution}", "spec.toml")
    assert sources(spec) == expected


def test_digest_ignores_package_order_and_source() -> None:
    a = parse_spec(MINIMAL, "a.toml")
    b = parse_spec(MINIMAL.replace('["systemd", "openssh-server"]',
                                   '["openssh-server", "systemd"]'), "b.toml")
    assert a == b and a.digest() == b.digest()
    c = parse_spec(MINIMAL + '[sysctl]\n"kernel.sysrq" = 1\n', "a.toml")
    assert c.digest() != a.digest()


def test_unreadable_spec_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_spec(tmp_path / "missing.toml")
    assert str(info.value) == f"{tmp_path}/missing.toml: spec not found"


@pytest.mark.parametrize(("line", "problem"), [
    ('modules = ["dm verity"]', "'dm verity': expected a module name or glob"),
    ('modules = ["../net/"]', "'../net/': expected a module name or glob"),
    ('modules = "dm_verity"', "expected a list of strings"),
])
def test_bad_kernel_modules(line: str, problem: str) -> None:
    assert f"spec.toml: kernel.modules: {problem}" in error_of(MINIMAL + f"[kernel]\n{line}\n")


@pytest.mark.parametrize("path", ["/usr/bin/ctr", "usr/../etc/shadow", "usr//bin", "a b"])
def test_prune_paths_stay_inside_the_root(path: str) -> None:
    message = error_of(MINIMAL + f'[prune]\npaths = ["{path}"]\n')
    assert f"spec.toml: prune.paths: {path!r}: expected a path glob relative" in message


def test_module_pruning_is_on_by_default_with_the_container_set() -> None:
    spec = parse_spec(MINIMAL, "spec.toml")
    assert spec.prune.kernel_modules and spec.prune.firmware and spec.prune.hwdb
    assert {"dm_verity", "erofs", "overlay", "veth", "vxlan", "net/bridge/", "button"} \
        <= set(spec.kernel.modules)


def test_secure_boot_signing_needs_both_files() -> None:
    assert "image.secure_boot_key: set both secure_boot_key and secure_boot_cert" in error_of(
        MINIMAL + '[image]\nsecure_boot_key = "db.key"\n')
    spec = parse_spec(MINIMAL + '[image]\nsecure_boot_key = "db.key"\n'
                      'secure_boot_cert = "db.crt"\n', "spec.toml")
    assert spec.image.secure_boot_cert == "db.crt"


def test_every_image_boots_a_uki_so_the_old_boot_key_is_unknown() -> None:
    assert "spec.toml: image.boot: unknown key" in error_of(
        MINIMAL + '[image]\nboot = "uki"\n')


@pytest.mark.parametrize(("text", "problem"), [
    ('version = "1.02"', 'version: \'1.02\': use numbers joined by dots'),
    ('version = "v2"', "version: 'v2': use numbers joined by dots"),
    ('version = 2', "version: 2: use numbers joined by dots"),
    ('[disk]\nslot_size_mib = 10', "disk.slot_size_mib: 10 is outside 64..65536 MiB"),
    ('[disk]\nesp_size_mib = "256M"', "disk.esp_size_mib: expected a number of MiB"),
    ('[boot]\ntries = 0', "boot.tries: expected a number of tries from 1 to 9, got 0"),
    ('[boot]\nbless_timeout = 5', "boot.bless_timeout: expected seconds from 60 to 86400"),
])
def test_version_disk_and_boot_settings_are_checked(text: str, problem: str) -> None:
    top, _, rest = text.partition("\n") if text.startswith("version") else ("", "", text)
    assert f"spec.toml: {problem}" in error_of(top + MINIMAL + rest)


def test_version_disk_and_boot_defaults() -> None:
    spec = parse_spec(MINIMAL, "spec.toml")
    assert spec.version == "1"
    assert (spec.disk.slot_size_mib, spec.disk.esp_size_mib, spec.disk.state_size_mib) == (
        1024, 256, 64)
    assert (spec.boot.tries, spec.boot.bless_timeout) == (3, 900)


# --- the spec file is untrusted input -------------------------------------------------------


def load_error(path: Path) -> str:
    """load_spec's error for `path`, which must come within seconds, not a hang."""
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_spec(path)
            outcome.append(None)
        except BaseException as exc:  # handed back to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome, f"load_spec({path}) did not return within 10 s"
    error = outcome[0]
    assert isinstance(error, UsageError), error
    message = str(error)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_a_fifo_spec_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    assert load_error(fifo) == f"{fifo}: the spec is a FIFO, not a regular file"


def test_a_device_or_a_folder_is_not_a_spec(tmp_path: Path) -> None:
    assert load_error(Path("/dev/zero")).endswith("the spec is a device, not a regular file")
    assert load_error(tmp_path).endswith("the spec is a directory, not a regular file")


def test_a_huge_spec_is_refused_before_parsing(tmp_path: Path) -> None:
    spec = tmp_path / "big.toml"
    spec.write_text(MINIMAL + "#" * MAX_SPEC_BYTES)
    assert load_error(spec) == f"{spec}: the spec is larger than {MAX_SPEC_BYTES} bytes"


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "latin1.toml"
    spec.write_bytes(MINIMAL.encode() + b'description = "caf\xe9"\n')
    assert load_error(spec).startswith(f"{spec}: the spec is not UTF-8 text")


@pytest.mark.parametrize(("text", "problem"), [
    ("x = " + "[" * 100_000, "TOML: arrays or tables nested too deeply"),
    ("x = " + "{a = " * 50_000, "TOML: arrays or tables nested too deeply"),
    ("x = 1" + "0" * 5000, "TOML: invalid TOML: Exceeds the limit"),
])
def test_toml_that_tomllib_cannot_take_is_one_line(text: str, problem: str) -> None:
    message = error_of(text)
    assert message.startswith(f"spec.toml: {problem}") and "\n" not in message


@pytest.mark.parametrize("key", ["a" + ".a" * 200_000, '"a".' * 100 + "a",
                                 "[" + "a." * 100_000 + "a]"])
def test_a_deep_dotted_key_is_refused_before_tomllib_sees_it(key: str) -> None:
    # tomllib's memory grows with the square of a dotted key's parts: 200,000 of them
    # (400 KB) exhaust a machine. The refusal must be quick.
    started = time.monotonic()
    message = error_of(f"{key} = 1\n" if not key.startswith("[") else f"{key}\n")
    assert message == "spec.toml: TOML: a dotted key of more than 32 parts"
    assert time.monotonic() - started < 2


def test_sysctl_tables_nested_beyond_any_sysctl_are_refused() -> None:
    def nested(depth: int) -> str:
        return "{a = " * depth + "1" + "}" * depth

    spec = parse_spec(MINIMAL + f"[sysctl]\nnet = {nested(20)}\n", "spec.toml")
    assert spec.sysctl[0][0] == "net" + ".a" * 20
    message = error_of(MINIMAL + f"[sysctl]\nnet = {nested(40)}\n")
    assert message.startswith("spec.toml: sysctl: ") and "is nested deeper than any sysctl" \
        in message


def test_the_cli_reports_an_unreadable_spec_in_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "hardhost", "build", str(fifo),
                             "-o", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"hardhost: {fifo}: the spec is a FIFO, not a regular file\n"


@pytest.mark.parametrize("text", [
    "a" * MAX_SPEC_BYTES,  # a run of key characters: a match may not start inside it
    '"' + "a" * MAX_SPEC_BYTES,  # a string that never closes
    '"' + "\\\\" * (MAX_SPEC_BYTES // 2),
    "a." * 31 + "=" + "a" * MAX_SPEC_BYTES,
])
def test_the_deep_key_scan_stays_linear(text: str) -> None:
    started = time.monotonic()
    error_of(text)
    assert time.monotonic() - started < 2
