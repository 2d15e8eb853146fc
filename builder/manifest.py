"""The host manifest: the one contract between the builder and the verifier.

An in-toto Statement v1 whose subjects are the sha256 of every artifact, and whose predicate
is everything a verifier must expect of a booted host. It travels signed in a DSSE envelope
(`builder.signing`). Parsing is strict: a manifest that does not match this model is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from builder import signing
from builder.errors import TrustError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:hardhost:host-manifest:v1"
MANIFEST_NAME = "manifest.dsse.json"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Subject:
    name: str
    sha256: str


@dataclass(frozen=True)
class HostManifest:
    name: str
    subjects: tuple[Subject, ...]
    spec_digest: str
    package_list_digest: str
    sbom_digest: str
    root_hash: str
    verity_salt: str
    filesystem: str
    kernel_release: str
    cmdline: str
    sysctls: Mapping[str, str]
    apparmor_profiles: Mapping[str, str]  # profile name -> mode the booted host must show
    # Profiles a service loads when it starts (dockerd's docker-default): absent is fine,
    # present must be in this mode.
    apparmor_runtime_profiles: Mapping[str, str]
    seccomp_profiles: Mapping[str, str]  # path on the host -> sha256
    runtime_config: Mapping[str, str]  # container runtime configuration: path -> sha256
    userns: Mapping[str, str]
    sshd: Mapping[str, str]  # `sshd -T` keys -> values
    mutable_paths: Mapping[str, tuple[str, ...]]  # overlay (etc, var) -> allowed globs
    created: str
    expires: str
    boot: str = "direct"  # or "uki": then the PCRs below are what a TPM quote must show
    # PCR index -> sha256-bank value predicted from the UKI at build time (4, 9, 11, 12, 13).
    pcrs: Mapping[str, str] = field(default_factory=dict)
    # PCR 0 and 7 depend on the firmware build and the machine, not the image: golden values
    # recorded per "FIRMWARE_SHA256 MACHINE" (see builder.pcr.KNOWN_FIRMWARE).
    firmware_pcrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The booted host's mount table (builder.layout): mount point -> filesystem type, each
    # present exactly once; optional ones at most once; runtime areas are mount-point globs
    # where services mount at will. Any other mount is drift.
    mounts: Mapping[str, str] = field(default_factory=dict)
    optional_mounts: Mapping[str, str] = field(default_factory=dict)
    runtime_mount_areas: tuple[str, ...] = ()

    def statement(self) -> dict[str, Any]:
        predicate = asdict(self)
        predicate.pop("name")
        predicate.pop("subjects")
        predicate["mutable_paths"] = {k: list(v) for k, v in self.mutable_paths.items()}
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in self.subjects],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"name": self.name, **predicate},
        }

    def payload(self) -> bytes:
        return json.dumps(self.statement(), sort_keys=True, separators=(",", ":")).encode()

    def expires_at(self) -> dt.datetime:
        return _parse_time(self.expires, "expires", "manifest")


def _parse_time(value: str, key: str, origin: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        raise TrustError(f"{origin}: predicate.{key}: {value!r} is not a UTC time") from None


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(TIME_FORMAT)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Reader:
    """Strict field access over untrusted JSON, every failure naming the key."""

    def __init__(self, data: Mapping[str, Any], origin: str, prefix: str) -> None:
        self.data, self.origin, self.prefix = data, origin, prefix

    def fail(self, key: str, problem: str) -> TrustError:
        return TrustError(f"{self.origin}: {self.prefix}{key}: {problem}")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self.fail(key, "missing or not a string")
        return value

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.fail(key, "missing or not a table of strings")
        return dict(value)

    def optional_text(self, key: str, default: str) -> str:
        return self.text(key) if key in self.data else default

    def optional_text_map(self, key: str) -> dict[str, str]:
        return self.text_map(key) if key in self.data else {}

    def optional_nested_map(self, key: str) -> dict[str, dict[str, str]]:
        value = self.data.get(key, {})
        if not isinstance(value, dict) or not all(
                isinstance(inner, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in inner.items())
                for inner in value.values()):
            raise self.fail(key, "not a table of tables of strings")
        return {str(k): dict(v) for k, v in value.items()}

    def optional_text_list(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            raise self.fail(key, "not a list of strings")
        return tuple(value)

    def list_map(self, key: str) -> dict[str, tuple[str, ...]]:
        value = self.data.get(key)
        if not isinstance(value, dict) or not all(
                isinstance(v, list) and all(isinstance(i, str) for i in v)
                for v in value.values()):
            raise self.fail(key, "missing or not a table of string lists")
        return {str(k): tuple(v) for k, v in value.items()}


def from_statement(statement: Any, origin: str) -> HostManifest:
    if not isinstance(statement, dict):
        raise TrustError(f"{origin}: the payload is not an in-toto statement")
    top = _Reader(statement, origin, "")
    if statement.get("_type") != STATEMENT_TYPE:
        raise top.fail("_type", f"expected {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise top.fail("predicateType", f"expected {PREDICATE_TYPE}")
    raw_subjects = statement.get("subject")
    if not isinstance(raw_subjects, list) or not raw_subjects:
        raise top.fail("subject", "missing or empty")
    subjects = []
    for entry in raw_subjects:
        if not isinstance(entry, dict):
            raise top.fail("subject", "malformed entry")
        name = _Reader(entry, origin, "subject.").text("name")
        sha = entry.get("digest", {}).get("sha256") if isinstance(entry.get("digest"),
                                                                  dict) else None
        if not isinstance(sha, str) or len(sha) != 64:
            raise top.fail("subject", f"{name}: missing sha256 digest")
        subjects.append(Subject(name, sha))
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise top.fail("predicate", "missing")
    p = _Reader(predicate, origin, "predicate.")
    manifest = HostManifest(
        name=p.text("name"), subjects=tuple(subjects), spec_digest=p.text("spec_digest"),
        package_list_digest=p.text("package_list_digest"), sbom_digest=p.text("sbom_digest"),
        root_hash=p.text("root_hash"), verity_salt=p.text("verity_salt"),
        filesystem=p.text("filesystem"), kernel_release=p.text("kernel_release"),
        cmdline=p.text("cmdline"), sysctls=p.text_map("sysctls"),
        apparmor_profiles=p.text_map("apparmor_profiles"),
        apparmor_runtime_profiles=p.text_map("apparmor_runtime_profiles"),
        seccomp_profiles=p.text_map("seccomp_profiles"),
        runtime_config=p.text_map("runtime_config"), userns=p.text_map("userns"),
        sshd=p.text_map("sshd"), mutable_paths=p.list_map("mutable_paths"),
        created=p.text("created"), expires=p.text("expires"),
        # Optional: manifests of direct-boot images made before UKIs existed omit them.
        boot=p.optional_text("boot", "direct"), pcrs=p.optional_text_map("pcrs"),
        firmware_pcrs=p.optional_nested_map("firmware_pcrs"),
        # Optional in the model, so that an older manifest still parses; the comparison
        # reports a manifest without a mount table as drift.
        mounts=p.optional_text_map("mounts"), optional_mounts=p.optional_text_map(
            "optional_mounts"), runtime_mount_areas=p.optional_text_list("runtime_mount_areas"))
    if manifest.boot not in ("direct", "uki"):
        raise p.fail("boot", f"{manifest.boot!r} is neither 'direct' nor 'uki'")
    _parse_time(manifest.created, "created", origin)
    _parse_time(manifest.expires, "expires", origin)
    return manifest


def read_verified(path: Path, trusted: dict[str, Ed25519PublicKey],
                  now: dt.datetime | None = None) -> tuple[HostManifest, str]:
    """Verify the envelope at `path` and return the manifest and the signer's key id.

    Raises `TrustError` for a bad signature, an untrusted key, a malformed or truncated file,
    or an expired manifest.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    verified = signing.verify(data, trusted, str(path))
    try:
        statement = json.loads(verified.payload)
    except ValueError:
        raise TrustError(f"{path}: the signed payload is not JSON") from None
    manifest = from_statement(statement, str(path))
    moment = now or dt.datetime.now(dt.UTC)
    if moment >= manifest.expires_at():
        raise TrustError(f"{path}: expired on {manifest.expires}; rebuild or re-sign the image")
    return manifest, verified.key_id


def check_artifacts(manifest: HostManifest, directory: Path) -> list[str]:
    """Compare each subject found in `directory` with its digest; return the names checked.

    Raises `TrustError` naming the first artifact whose digest differs.
    """
    checked = []
    for subject in manifest.subjects:
        path = directory / subject.name
        if not path.is_file():
            continue
        actual = sha256_file(path)
        if actual != subject.sha256:
            raise TrustError(f"{path}: sha256 {actual[:16]}… does not match the manifest's "
                             f"{subject.sha256[:16]}…")
        checked.append(subject.name)
    return checked


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
