"""hardhost update and fleet update up to where a host is contacted, and the host's answers
parsed strictly: versions, waves, the image and store checks, and hostile script output
(a FAKE host's bytes, since a real one answers only what the script prints)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hardhost.cli.main import _two_words
from hardhost.core.errors import TrustError, UsageError
from hardhost.image.manifest import MANIFEST_NAME, read_verified
from hardhost.image.signing import keygen, load_private_key, load_trusted_keys
from hardhost.image.version import VersionError, is_older, version_key
from hardhost.verifier import rollout
from hardhost.verifier.transport import HostOutputError, Target
from hardhost.verifier.update import UpdateError, _parse, load_image, load_store
from tests.support.images import fake_image, sign_into
from tests.support.keys import SigningKeys
from tests.support.paths import REPO

TARGET = Target("root", "192.0.2.1", 22)


@pytest.mark.parametrize(("older", "newer"), [
    ("1", "2"), ("1.9", "1.10"), ("1.2", "1.2.1"), ("2026.11.30", "2026.12.1"), ("9", "10")])
def test_versions_order_number_by_number(older: str, newer: str) -> None:
    assert is_older(older, newer) and not is_older(newer, older)


def test_trailing_zeros_do_not_make_a_version_newer() -> None:
    assert version_key("2") == version_key("2.0.0") and not is_older("2.0", "2")


@pytest.mark.parametrize("text", ["", "01", "1.", "v1", "1..2", "1.-2", "1 2", "\uff11"])
def test_what_is_not_a_version_is_refused(text: str) -> None:
    with pytest.raises(VersionError):
        version_key(text)


def test_waves_reach_further_each_time_and_end_at_the_whole_fleet() -> None:
    waves = rollout.parse_waves("1,10%,50%,100%")
    assert rollout.wave_bounds(waves, 2) == [1, 2]
    assert rollout.wave_bounds(waves, 20) == [1, 2, 10, 20]
    assert rollout.wave_bounds(rollout.parse_waves("5,100%"), 3) == [3]
    for bad in ("1,50%", "0,100%", "1,101%", "abc,100%", "1;100%"):
        with pytest.raises(UsageError, match="--waves"):
            rollout.parse_waves(bad)


def test_max_failures_is_a_count_or_a_share_of_the_wave() -> None:
    assert rollout.parse_max_failures("0", 10) == 0
    assert rollout.parse_max_failures("2", 10) == 2
    assert rollout.parse_max_failures("25%", 10) == 2
    with pytest.raises(UsageError):
        rollout.parse_max_failures("-1", 10)


def test_fleet_update_is_spelled_in_two_words() -> None:
    assert _two_words(["fleet", "update", "inv"]) == ["fleet-update", "inv"]
    assert _two_words(["-v", "fleet", "update", "inv"]) == ["-v", "fleet-update", "inv"]
    assert _two_words(["fleet", "./update"]) == ["fleet", "./update"]
    assert _two_words(["attest", "fleet", "update"]) == ["attest", "fleet", "update"]


@pytest.mark.parametrize(("output", "error", "match"), [
    (b"error the ESP is full\n", UpdateError, "update clean: the ESP is full"),
    (b"newest 1\n", HostOutputError, "did not finish the step"),
    (b"newest 1\nok\nok\n", HostOutputError, "unexpected line"),
    (b"\xff\xfe\nok\n", HostOutputError, "not ASCII"),
    (b"newest 1 extra words are fine\nBAD KEY here\nok\n", HostOutputError, "unexpected"),
    (b"", HostOutputError, "did not finish"),
])
def test_hostile_script_output_is_one_clear_error(output: bytes, error: type[Exception],
                                                  match: str) -> None:
    with pytest.raises(error, match=match):
        _parse(output, TARGET, "clean")


def test_script_facts_are_parsed() -> None:
    assert _parse(b"kept hardhost-1.efi\nnewest 1\nfree 123\nok\n", TARGET, "clean") == [
        ("kept", "hardhost-1.efi"), ("newest", "1"), ("free", "123")]


def _image(tmp_path: Path, keys: SigningKeys, version: str = "2") -> Path:
    image = fake_image(tmp_path / f"image-{version}", keys.key)
    manifest, _ = read_verified(image / MANIFEST_NAME, load_trusted_keys(keys.public))
    sign_into(image, dataclasses.replace(manifest, version=version, disk={
        "slot_size_mib": "1024", "boot_tries": "3", "bless_timeout": "900"}), keys.key)
    return image


def test_a_good_image_loads(tmp_path: Path, signing_keys: SigningKeys) -> None:
    image = load_image(_image(tmp_path, signing_keys), load_trusted_keys(signing_keys.public))
    assert image.manifest.version == "2"


@pytest.mark.parametrize("name", ["root.img", "root.verity", "uki.efi"])
def test_a_changed_payload_is_refused_before_any_host(tmp_path: Path,
                                                      signing_keys: SigningKeys,
                                                      name: str) -> None:
    image = _image(tmp_path, signing_keys)
    with (image / name).open("ab") as f:
        f.write(b"x")
    with pytest.raises(TrustError):
        load_image(image, load_trusted_keys(signing_keys.public))


@pytest.mark.parametrize("name", ["root.img", "uki.efi"])
def test_a_missing_payload_is_named_and_unsigned_is_refused(tmp_path: Path,
                                                            signing_keys: SigningKeys,
                                                            name: str) -> None:
    image = _image(tmp_path, signing_keys)
    trusted = load_trusted_keys(signing_keys.public)
    (image / name).rename(tmp_path / name)
    with pytest.raises(TrustError, match=rf"{name}: artifact missing; restore it$"):
        load_image(image, trusted)
    (tmp_path / name).rename(image / name)
    manifest, _ = read_verified(image / MANIFEST_NAME, trusted)
    sign_into(image, dataclasses.replace(manifest, subjects=tuple(
        s for s in manifest.subjects if s.name != name)), signing_keys.key)
    with pytest.raises(TrustError, match=rf"signs no digest for {name}, which an update "
                                         "writes"):
        load_image(image, trusted)


def test_a_store_with_a_manifest_by_another_key_is_refused(tmp_path: Path,
                                                           signing_keys: SigningKeys) -> None:
    store = tmp_path / "store"
    store.mkdir()
    image = _image(tmp_path, signing_keys)
    (store / "good.dsse.json").write_bytes((image / MANIFEST_NAME).read_bytes())
    trusted = load_trusted_keys(signing_keys.public)
    assert set(load_store(store, trusted)) == {"ab" * 32}
    private, _ = keygen(tmp_path / "other")
    manifest, _ = read_verified(image / MANIFEST_NAME, trusted)
    other = tmp_path / "other-image"
    other.mkdir()
    sign_into(other, manifest, load_private_key(private))
    (store / "forged.dsse.json").write_bytes((other / MANIFEST_NAME).read_bytes())
    with pytest.raises(TrustError, match=r"forged\.dsse\.json"):
        load_store(store, trusted)


def test_an_empty_store_is_a_usage_error(tmp_path: Path, signing_keys: SigningKeys) -> None:
    with pytest.raises(UsageError, match="holds no manifest"):
        load_store(tmp_path, load_trusted_keys(signing_keys.public))
    with pytest.raises(UsageError, match="not a folder"):
        load_store(tmp_path / "absent", load_trusted_keys(signing_keys.public))


def hardhost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_update_refuses_a_tampered_image_offline(tmp_path: Path,
                                                     signing_keys: SigningKeys) -> None:
    image = _image(tmp_path, signing_keys)
    (image / "root.img").write_bytes(b"not the signed root")
    store = tmp_path / "store"
    store.mkdir()
    # 192.0.2.1 (TEST-NET-1) is never contacted: the image is refused first.
    result = hardhost("update", "root@192.0.2.1", "--image", str(image), "--manifests",
                      str(store), "--trust-key", str(signing_keys.public), "--known-hosts",
                      str(tmp_path / "known_hosts"), "--history", str(tmp_path / "h.db"))
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "root.img" in result.stderr


def test_cli_fleet_update_refuses_bad_waves_before_any_host(tmp_path: Path,
                                                            signing_keys: SigningKeys) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("web ansible_host=192.0.2.1\n")
    result = hardhost("fleet", "update", str(inventory), "--image", str(tmp_path),
                      "--manifests", str(tmp_path), "--trust-key", str(signing_keys.public),
                      "--waves", "1,50%")
    assert result.returncode == 2
    assert result.stderr.strip() == ("hardhost: --waves: the last wave must be 100%, so every "
                                     "host is reached")


def test_update_help_names_the_outcomes_and_exit_codes() -> None:
    result = hardhost("update", "--help")
    assert result.returncode == 0
    for word in ("updated", "rolled-back", "--allow-downgrade", "--manifests", "--tpm"):
        assert word in result.stdout
    assert "hardhost fleet update" in hardhost("fleet", "update", "--help").stdout
