"""The signed manifest under attack: hostile envelopes and statements, the validity window,
artifacts outside the image folder or not files at all, and inputs that are not files."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.core.errors import TrustError, UsageError
from hardhost.image import signing
from hardhost.image.manifest import (
    CLOCK_SKEW,
    MANIFEST_NAME,
    MAX_VALIDITY_DAYS,
    HostManifest,
    Subject,
    check_artifacts,
    format_time,
    read_verified,
)
from tests.support.keys import SigningKeys
from tests.support.manifests import sample_manifest
from tests.support.paths import REPO

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
MINIMAL = """
name = "t"
[packages]
include = ["systemd", "openssh-server"]
[ssh]
permit_root_login = true
"""


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def one_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """The command failed with `code` and one line holding `text`, and no traceback."""
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("hardhost: ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert text in result.stderr, result.stderr


def envelope(payload: bytes, key: Ed25519PrivateKey) -> dict[str, Any]:
    return dict(json.loads(signing.sign(payload, key)))


def signed_statement(statement: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    return signing.sign(json.dumps(statement).encode(), key)


def statement_of(manifest: HostManifest) -> dict[str, Any]:
    return json.loads(manifest.payload())  # type: ignore[no-any-return]


def verify_bytes(tmp_path: Path, data: bytes, keys: SigningKeys,
                 now: dt.datetime | None = None) -> HostManifest:
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(data)
    return read_verified(path, signing.load_trusted_keys(keys.public), now)[0]


# --- The envelope: hostile JSON and wrong types --------------------------------------------


def test_a_deeply_nested_envelope_is_a_trust_error_not_a_crash(
        tmp_path: Path, signing_keys: SigningKeys) -> None:
    with pytest.raises(TrustError, match="nested too deeply"):
        verify_bytes(tmp_path, b"[" * 200_000 + b"]" * 200_000, signing_keys)
    path = tmp_path / MANIFEST_NAME
    result = run_cli("manifest", "verify", str(path), "--trust-key", str(signing_keys.public))
    one_line(result, 4, "nested too deeply")


def test_a_deeply_nested_signed_payload_is_refused(tmp_path: Path,
                                                    signing_keys: SigningKeys) -> None:
    data = signing.sign(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, signing_keys.key)
    with pytest.raises(TrustError, match="signed payload: JSON nested too deeply"):
        verify_bytes(tmp_path, data, signing_keys)


def test_a_duplicated_payload_key_is_refused(tmp_path: Path,
                                             signing_keys: SigningKeys) -> None:
    # Parsers differ on which of two equal keys wins: a verifier that reads the signed one
    # and a consumer that reads the other disagree on what was signed.
    good = envelope(sample_manifest().payload(), signing_keys.key)
    forged = json.dumps(good)[:-1] + ', "payload": "e30="}'
    with pytest.raises(TrustError, match="'payload' appears twice"):
        verify_bytes(tmp_path, forged.encode(), signing_keys)


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda e: e | {"signatures": [{**e["signatures"][0], "keyid": 7}]},
     r"signatures\[0\]\.keyid is not a string"),
    (lambda e: e | {"signatures": [{**e["signatures"][0], "keyid": ["x"]}]},
     r"signatures\[0\]\.keyid is not a string"),
    (lambda e: e | {"signatures": ["sig"]}, r"signatures\[0\] is not an object"),
    (lambda e: e | {"signatures": [e["signatures"][0], None]},
     r"signatures\[1\] is not an object"),
    (lambda e: e | {"signatures": {"keyid": "x"}}, "carries no signature"),
    (lambda e: e | {"payload": "not base64!"}, "payload is not valid base64"),
    (lambda e: e | {"payload": 12}, "payload is not a string"),
    (lambda e: e | {"payloadType": {"x": 1}}, "payloadType is not a string"),
    (lambda e: e | {"signatures": [{**e["signatures"][0], "sig": "@@"}]},
     r"signatures\[0\]\.sig is not valid base64"),
    (lambda e: e | {"signatures": e["signatures"] * (signing.MAX_SIGNATURES + 1)},
     "more than 16 signatures"),
    (lambda e: [e], "not a DSSE envelope"),
])
def test_wrong_typed_envelope_fields_are_trust_errors(
        tmp_path: Path, signing_keys: SigningKeys,
        edit: Callable[[dict[str, Any]], Any], reason: str) -> None:
    good = envelope(sample_manifest().payload(), signing_keys.key)
    with pytest.raises(TrustError, match=reason):
        verify_bytes(tmp_path, json.dumps(edit(good)).encode(), signing_keys)


def test_a_valid_signature_after_a_junk_one_still_verifies(tmp_path: Path,
                                                           signing_keys: SigningKeys) -> None:
    # A junk entry first must neither crash nor hide the good signature behind it.
    good = envelope(sample_manifest().payload(), signing_keys.key)
    junk = {"keyid": "", "sig": base64.b64encode(b"\0" * 64).decode()}
    data = json.dumps(good | {"signatures": [junk, *good["signatures"]]}).encode()
    assert verify_bytes(tmp_path, data, signing_keys) == sample_manifest()


def test_a_signature_by_a_stranger_under_our_keyid_is_a_bad_signature(
        tmp_path: Path, signing_keys: SigningKeys) -> None:
    stranger = envelope(sample_manifest().payload(), Ed25519PrivateKey.generate())
    ours = signing.key_id(signing_keys.key.public_key())
    stranger["signatures"][0]["keyid"] = ours
    with pytest.raises(TrustError, match="bad signature"):
        verify_bytes(tmp_path, json.dumps(stranger).encode(), signing_keys)


# --- The statement: subjects -----------------------------------------------------------------


def with_subjects(subjects: list[Any]) -> dict[str, Any]:
    statement = statement_of(sample_manifest())
    statement["subject"] = subjects
    return statement


@pytest.mark.parametrize("name", [
    "../root.img", "../../etc/shadow", "/etc/shadow", "boot/vmlinuz", ".", "..", "",
    "root.img\0", "root\x1b[2Jimg", "root\nimg", "x" * 256, 7, None,
])
def test_a_subject_that_is_not_a_plain_file_name_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, name: Any) -> None:
    data = signed_statement(with_subjects([{"name": name, "digest": {"sha256": "a" * 64}}]),
                            signing_keys.key)
    with pytest.raises(TrustError, match=r"subject\[0\]\.name: not a plain file name"):
        verify_bytes(tmp_path, data, signing_keys)


@pytest.mark.parametrize(("subjects", "reason"), [
    ([{"name": "root.img", "digest": "a" * 64}], r"subject\[0\]\.digest: root\.img"),
    ([{"name": "root.img", "digest": ["a" * 64]}], r"subject\[0\]\.digest"),
    ([{"name": "root.img", "digest": {"sha256": "g" * 64}}], "not a lower-case hex sha256"),
    ([{"name": "root.img", "digest": {"sha256": "A" * 64}}], "not a lower-case hex sha256"),
    ([{"name": "root.img", "digest": {"sha256": 5}}], "not a lower-case hex sha256"),
    (["root.img"], r"subject\[0\]: not an object"),
    ([{"name": "root.img", "digest": {"sha256": "a" * 64}}] * 2, "root.img: listed twice"),
    ([{"name": f"f{i}", "digest": {"sha256": "a" * 64}} for i in range(257)],
     "more than 256 entries"),
    ([], "subject: missing or empty"),
])
def test_malformed_subjects_are_refused(tmp_path: Path, signing_keys: SigningKeys,
                                        subjects: list[Any], reason: str) -> None:
    data = signed_statement(with_subjects(subjects), signing_keys.key)
    with pytest.raises(TrustError, match=reason):
        verify_bytes(tmp_path, data, signing_keys)


# --- The validity window ---------------------------------------------------------------------


def window(created: dt.datetime, expires: dt.datetime) -> HostManifest:
    return dataclasses.replace(sample_manifest(), created=format_time(created),
                               expires=format_time(expires))


@pytest.mark.parametrize(("created", "expires", "reason"), [
    (NOW + dt.timedelta(hours=1), NOW + dt.timedelta(days=2), "later than now"),
    (NOW + CLOCK_SKEW + dt.timedelta(seconds=30), NOW + dt.timedelta(days=2),
     "later than now"),
    (NOW - dt.timedelta(days=1), NOW - dt.timedelta(days=2), "is not later than created"),
    (NOW - dt.timedelta(days=1), NOW - dt.timedelta(days=1), "is not later than created"),
    (NOW - dt.timedelta(days=1), dt.datetime(9999, 12, 31, tzinfo=dt.UTC),
     f"more than {MAX_VALIDITY_DAYS} days after created"),
    (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=MAX_VALIDITY_DAYS, seconds=1),
     f"more than {MAX_VALIDITY_DAYS} days after created"),
])
def test_a_manifest_outside_its_window_is_refused(
        tmp_path: Path, signing_keys: SigningKeys, created: dt.datetime,
        expires: dt.datetime, reason: str) -> None:
    data = signing.sign(window(created, expires).payload(), signing_keys.key)
    with pytest.raises(TrustError, match=reason):
        verify_bytes(tmp_path, data, signing_keys, now=NOW)


@pytest.mark.parametrize(("created", "expires"), [
    (NOW + CLOCK_SKEW - dt.timedelta(seconds=1), NOW + dt.timedelta(days=1)),  # skew
    (NOW - dt.timedelta(days=1), NOW - dt.timedelta(days=1)
     + dt.timedelta(days=MAX_VALIDITY_DAYS)),  # the longest allowed
])
def test_a_manifest_inside_its_window_is_accepted(
        tmp_path: Path, signing_keys: SigningKeys, created: dt.datetime,
        expires: dt.datetime) -> None:
    manifest = window(created, expires)
    data = signing.sign(manifest.payload(), signing_keys.key)
    assert verify_bytes(tmp_path, data, signing_keys, now=NOW) == manifest


def test_the_cli_refuses_a_manifest_from_the_future(tmp_path: Path,
                                                    signing_keys: SigningKeys) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(signing.sign(window(NOW + dt.timedelta(days=1), NOW + dt.timedelta(
        days=30)).payload(), signing_keys.key))
    result = run_cli("manifest", "verify", str(path), "--trust-key", str(signing_keys.public),
                     "--no-artifacts")
    one_line(result, 4, "later than now")


def test_the_spec_refuses_a_validity_beyond_the_manifest_maximum() -> None:
    from hardhost.builder.spec import parse_spec
    from hardhost.core.errors import SpecError

    text = MINIMAL + f"[manifest]\nvalidity_days = {MAX_VALIDITY_DAYS + 1}\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, "spec.toml")
    assert str(info.value) == (f"spec.toml: manifest.validity_days: {MAX_VALIDITY_DAYS + 1} "
                               f"is outside 1..{MAX_VALIDITY_DAYS} days")
    parse_spec(MINIMAL + f"[manifest]\nvalidity_days = {MAX_VALIDITY_DAYS}\n", "spec.toml")


# --- Artifacts ---------------------------------------------------------------------------


def image_folder(path: Path, key: Ed25519PrivateKey,
                 files: dict[str, bytes] | None = None) -> Path:
    """A folder with real artifacts and a manifest signed over their digests."""
    path.mkdir()
    files = files or {"root.img": b"root image", "root.verity": b"hash tree"}
    for name, data in files.items():
        (path / name).write_bytes(data)
    manifest = dataclasses.replace(sample_manifest(), subjects=tuple(
        Subject(name, hashlib.sha256(data).hexdigest()) for name, data in files.items()))
    (path / MANIFEST_NAME).write_bytes(signing.sign(manifest.payload(), key))
    return path / MANIFEST_NAME


def verify_cli(manifest: Path, keys: SigningKeys, *extra: str
               ) -> subprocess.CompletedProcess[str]:
    return run_cli("manifest", "verify", str(manifest), "--trust-key", str(keys.public),
                   *extra, timeout=30)


def test_every_artifact_is_checked(tmp_path: Path, signing_keys: SigningKeys) -> None:
    manifest = image_folder(tmp_path / "image", signing_keys.key)
    good = verify_cli(manifest, signing_keys)
    assert good.returncode == 0, good.stderr
    assert "all 2 artifacts match" in good.stdout


def test_a_missing_artifact_fails_unless_no_artifacts(tmp_path: Path,
                                                      signing_keys: SigningKeys) -> None:
    manifest = image_folder(tmp_path / "image", signing_keys.key)
    (manifest.parent / "root.verity").unlink()
    one_line(verify_cli(manifest, signing_keys), 4, "root.verity: artifact missing")
    skipped = verify_cli(manifest, signing_keys, "--no-artifacts")
    assert skipped.returncode == 0 and "artifacts not checked" in skipped.stdout


def test_a_symlink_artifact_is_refused_even_with_the_right_content(
        tmp_path: Path, signing_keys: SigningKeys) -> None:
    # The link's target has exactly the signed bytes: following it would pass, but the
    # folder's root.img is then whatever the link points to next.
    manifest = image_folder(tmp_path / "image", signing_keys.key)
    outside = tmp_path / "elsewhere.img"
    outside.write_bytes(b"root image")
    (manifest.parent / "root.img").unlink()
    (manifest.parent / "root.img").symlink_to(outside)
    one_line(verify_cli(manifest, signing_keys), 4, "root.img: artifact is a symbolic link")
    (manifest.parent / "root.img").unlink()
    (manifest.parent / "root.img").symlink_to(tmp_path / "dangling")
    one_line(verify_cli(manifest, signing_keys), 4, "root.img: artifact is a symbolic link")


def test_a_fifo_or_folder_artifact_is_refused_without_waiting(
        tmp_path: Path, signing_keys: SigningKeys) -> None:
    manifest = image_folder(tmp_path / "image", signing_keys.key)
    (manifest.parent / "root.img").unlink()
    os.mkfifo(manifest.parent / "root.img")  # no writer: opening it for reading would block
    one_line(verify_cli(manifest, signing_keys), 4, "root.img: artifact is not a regular file")
    (manifest.parent / "root.img").unlink()
    (manifest.parent / "root.img").mkdir()
    one_line(verify_cli(manifest, signing_keys), 4, "root.img: artifact is not a regular file")


def test_a_changed_artifact_fails_and_names_it(tmp_path: Path,
                                               signing_keys: SigningKeys) -> None:
    manifest = image_folder(tmp_path / "image", signing_keys.key)
    (manifest.parent / "root.verity").write_bytes(b"hash trees")
    one_line(verify_cli(manifest, signing_keys), 4, "root.verity: sha256")


def test_a_subject_outside_the_folder_is_never_hashed(tmp_path: Path,
                                                      signing_keys: SigningKeys) -> None:
    # A signed "../secret" would make the verifier hash, and print a prefix of the digest
    # of, a file outside the image folder.
    secret = tmp_path / "secret"
    secret.write_bytes(b"private")
    folder = tmp_path / "image"
    folder.mkdir()
    statement = with_subjects([{"name": "../secret", "digest": {"sha256": "0" * 64}}])
    (folder / MANIFEST_NAME).write_bytes(signed_statement(statement, signing_keys.key))
    result = verify_cli(folder / MANIFEST_NAME, signing_keys)
    one_line(result, 4, "not a plain file name")
    assert hashlib.sha256(b"private").hexdigest()[:16] not in result.stderr


def test_check_artifacts_returns_every_name(tmp_path: Path, signing_keys: SigningKeys) -> None:
    manifest_path = image_folder(tmp_path / "image", signing_keys.key)
    manifest, _ = read_verified(manifest_path, signing.load_trusted_keys(signing_keys.public))
    assert check_artifacts(manifest, manifest_path.parent) == ["root.img", "root.verity"]


# --- Inputs that are not files -----------------------------------------------------------


def test_a_manifest_that_is_not_a_file_is_usage(tmp_path: Path,
                                                signing_keys: SigningKeys) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path, reason in ((tmp_path / "absent.json", "manifest not found"),
                         (fifo, "is a FIFO"), (tmp_path, "is a directory"),
                         (Path("/dev/zero"), "is a device")):
        result = verify_cli(path, signing_keys)
        one_line(result, 2, reason)
    with pytest.raises(UsageError, match="manifest not found"):
        read_verified(tmp_path / "absent.json", signing.load_trusted_keys(signing_keys.public))


def test_an_oversized_manifest_is_refused_before_parsing(tmp_path: Path,
                                                         signing_keys: SigningKeys) -> None:
    path = tmp_path / MANIFEST_NAME
    with path.open("wb") as f:
        f.truncate(signing.MAX_ENVELOPE_BYTES + 1)  # sparse: costs no disk
    one_line(verify_cli(path, signing_keys), 2, "larger than")


def test_trust_keys_that_are_not_key_files(tmp_path: Path, signing_keys: SigningKeys) -> None:
    manifest = image_folder(tmp_path / "image", signing_keys.key)
    fifo = tmp_path / "fifo.pub"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.pub"
    huge.write_bytes(b"A" * (signing.MAX_KEY_BYTES + 1))
    for key, reason in ((fifo, "is a FIFO"), (Path("/dev/zero"), "is a device"),
                        (tmp_path / "absent.pub", "trusted key not found"),
                        (huge, "larger than")):
        result = run_cli("manifest", "verify", str(manifest), "--trust-key", str(key),
                         timeout=30)
        one_line(result, 2, reason)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.write_text("not a key\n"), "bad.pub: not a PEM public key"),
    (lambda p: os.mkfifo(p), "bad.pub: the trusted key is a FIFO"),
    (lambda p: p.mkdir(), "bad.pub: the trusted key is a directory"),
    (lambda p: p.symlink_to("/dev/zero"), "bad.pub: the trusted key is a device"),
])
def test_a_key_folder_names_the_file_that_is_not_a_key(
        tmp_path: Path, signing_keys: SigningKeys, make: Callable[[Path], Any],
        reason: str) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "good.pub").write_bytes(signing_keys.public.read_bytes())
    make(folder / "bad.pub")
    with pytest.raises(UsageError, match=reason):
        signing.load_trusted_keys(folder)


def test_a_private_key_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "signing.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match="signing key is a FIFO"):
        signing.load_private_key(fifo)


# --- keygen ------------------------------------------------------------------------------


def test_keygen_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    target = tmp_path / "attacker-chosen.pub"
    (folder / "signing.pub").symlink_to(target)
    one_line(run_cli("keygen", "--out", str(folder)), 2, "signing.pub: already exists as a "
             "symbolic link")
    assert not target.exists()
    assert not (folder / "signing.key").exists()  # no half pair left


def test_keygen_refuses_a_folder_others_may_write(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    result = run_cli("keygen", "--out", str(folder))
    one_line(result, 2, f"Fix with: chmod go-w {folder}")
    assert list(folder.iterdir()) == []
    folder.chmod(0o770)
    one_line(run_cli("keygen", "--out", str(folder)), 2, "writable by group or others")


@pytest.mark.parametrize(("out", "reason"), [
    ("/proc", "cannot create the key"),
    ("/proc/hardhost-keys", "cannot make the key folder"),
    ("{tmp}/file", "not a folder"),
    ("{tmp}/absent/keys", "does not exist"),
])
def test_keygen_gives_one_line_for_a_bad_out(tmp_path: Path, out: str, reason: str) -> None:
    (tmp_path / "file").write_text("x")
    one_line(run_cli("keygen", "--out", out.format(tmp=tmp_path)), 2, reason)


def test_keygen_makes_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private, public = signing.keygen(tmp_path / "keys")
    finally:
        os.umask(old)
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert signing.load_private_key(private).public_key().public_bytes_raw() == \
        signing.load_trusted_keys(public).popitem()[1].public_bytes_raw()
