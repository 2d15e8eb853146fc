"""Keys, DSSE envelopes and the manifest model, cross-checked with securesystemslib."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope

# securesystemslib re-exports these without __all__, which mypy reads as private.
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

from hardhost.core.errors import TrustError, UsageError
from hardhost.image import signing
from hardhost.image.manifest import (
    Subject,
    check_artifacts,
    from_statement,
    read_verified,
)
from hardhost.image.signing import KeyPermissionError, key_id, keygen, load_private_key
from tests.support.keys import SigningKeys
from tests.support.manifests import sample_manifest, write_signed
from tests.support.paths import REPO


def test_keygen_writes_a_private_key_only_root_can_read(tmp_path: Path) -> None:
    private, public = keygen(tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_private_key(private) is not None


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    keygen(tmp_path)
    before = (tmp_path / "signing.key").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        keygen(tmp_path)
    assert (tmp_path / "signing.key").read_bytes() == before


def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    private, _ = keygen(tmp_path)
    private.chmod(0o644)
    with pytest.raises(KeyPermissionError) as info:
        load_private_key(private)
    assert str(info.value).endswith(f"Fix with: chmod 600 {private}")


def test_pae_matches_the_dsse_specification() -> None:
    assert signing.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


def test_signed_manifest_round_trips(tmp_path: Path, signing_keys: SigningKeys) -> None:
    manifest = sample_manifest()
    path = write_signed(tmp_path, manifest, signing_keys.key)
    verified, keyid = read_verified(path, signing.load_trusted_keys(signing_keys.public))
    assert verified == manifest
    assert keyid == key_id(signing_keys.key.public_key())
    statement = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"][0] == {"name": "root.img", "digest": {"sha256": "a" * 64}}
    assert from_statement(statement, "x") == manifest


def expect_refusal(path: Path, keys: SigningKeys, match: str) -> None:
    with pytest.raises(TrustError, match=match):
        read_verified(path, signing.load_trusted_keys(keys.public))


def test_one_flipped_byte_is_refused(tmp_path: Path, signing_keys: SigningKeys) -> None:
    path = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    envelope = json.loads(path.read_text())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[len(payload) // 2] ^= 0x01
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    path.write_text(json.dumps(envelope))
    expect_refusal(path, signing_keys, "bad signature")


def test_substituted_subject_digest_is_refused(tmp_path: Path,
                                               signing_keys: SigningKeys) -> None:
    path = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "9" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    expect_refusal(path, signing_keys, "bad signature")


def test_resigned_by_an_untrusted_key_is_refused(tmp_path: Path,
                                                 signing_keys: SigningKeys) -> None:
    path = write_signed(tmp_path, sample_manifest(), Ed25519PrivateKey.generate())
    expect_refusal(path, signing_keys, "untrusted key")


def test_truncated_file_is_refused(tmp_path: Path, signing_keys: SigningKeys) -> None:
    path = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    path.write_bytes(path.read_bytes()[:100])
    expect_refusal(path, signing_keys, "truncated or corrupt")


def test_expired_manifest_is_refused(tmp_path: Path, signing_keys: SigningKeys) -> None:
    manifest = sample_manifest(expires=dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    path = write_signed(tmp_path, manifest, signing_keys.key)
    expect_refusal(path, signing_keys, "expired on 2026-01-02T00:00:00Z")


def test_a_changed_artifact_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root.img").write_bytes(b"data")
    manifest = dataclasses.replace(sample_manifest(), subjects=(
        Subject("root.img", "0" * 64),))
    with pytest.raises(TrustError, match="does not match the manifest"):
        check_artifacts(manifest, tmp_path)


def test_trusted_key_directory(tmp_path: Path, signing_keys: SigningKeys) -> None:
    (tmp_path / "ours.pub").write_bytes(signing_keys.public.read_bytes())
    _, other = keygen(tmp_path / "other")
    (tmp_path / "other.pub").write_bytes(other.read_bytes())
    keys = signing.load_trusted_keys(tmp_path)
    assert key_id(signing_keys.key.public_key()) in keys and len(keys) == 2


def test_securesystemslib_verifies_our_envelope(signing_keys: SigningKeys) -> None:
    data = signing.sign(b'{"hello": "world"}', signing_keys.key)
    envelope = Envelope.from_dict(json.loads(data))
    public = SSlibKey.from_crypto(signing_keys.key.public_key(),
                                  keyid=key_id(signing_keys.key.public_key()))
    accepted = envelope.verify([public], 1)
    assert list(accepted) == [public.keyid]


def test_we_verify_securesystemslib_envelopes(signing_keys: SigningKeys) -> None:
    public = SSlibKey.from_crypto(signing_keys.key.public_key(),
                                  keyid=key_id(signing_keys.key.public_key()))
    envelope = Envelope(b'{"peer": true}', signing.PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(signing_keys.key, public))
    data = json.dumps(envelope.to_dict()).encode()
    verified = signing.verify(data, signing.load_trusted_keys(signing_keys.public), "peer")
    assert verified.payload == b'{"peer": true}'
    # And a payload a peer signed for another type is not accepted as ours.
    other = Envelope(b"{}", "application/other", {})
    other.sign(CryptoSigner(signing_keys.key, public))
    with pytest.raises(TrustError, match="payloadType"):
        signing.verify(json.dumps(other.to_dict()).encode(),
                       signing.load_trusted_keys(signing_keys.public), "peer")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardhost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_manifest_verify_cli_exit_codes(tmp_path: Path, signing_keys: SigningKeys) -> None:
    path = write_signed(tmp_path, sample_manifest(), signing_keys.key)
    good = run_cli("manifest", "verify", str(path), "--trust-key", str(signing_keys.public),
                   "--no-artifacts")
    assert good.returncode == 0, good.stderr
    assert "good signature" in good.stdout
    _, stranger = keygen(tmp_path / "stranger")
    bad = run_cli("manifest", "verify", str(path), "--trust-key", str(stranger))
    assert bad.returncode == 4
    assert bad.stderr.count("\n") == 1 and "untrusted key" in bad.stderr
    shown = run_cli("manifest", "show", str(path), "--trust-key", str(signing_keys.public),
                    "--json")
    assert json.loads(shown.stdout)["predicate"]["root_hash"] == "f" * 64


def test_keygen_cli_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run_cli("keygen", "--out", str(tmp_path)).returncode == 0
    again = run_cli("keygen", "--out", str(tmp_path))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
