"""The host manifest: the one contract between the builder and the verifier.

An in-toto Statement v1 whose subjects are the sha256 of every artifact, and whose predicate
is everything a verifier must expect of a booted host. It travels signed in a DSSE envelope
(`hardhost.image.signing`). Parsing is strict: a manifest that does not match this model is refused.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hardhost.core.errors import TrustError, UsageError
from hardhost.core.inputs import decode_json, read_bytes
from hardhost.image import signing
from hardhost.image.version import IMAGE_VERSION_RE

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:hardhost:host-manifest:v1"
MANIFEST_NAME = "manifest.dsse.json"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# The longest a manifest may be valid, `expires - created`. The spec's
# `manifest.validity_days` refuses more, and a verifier refuses a manifest that claims more:
# a key that signs a manifest valid until 9999 must not make it trusted forever.
MAX_VALIDITY_DAYS = 3650
# How far in the future `created` may lie: the clocks of the build host and of the verifier
# disagree a little, but a manifest made later than now plus this was not made by a build.
CLOCK_SKEW = dt.timedelta(minutes=5)
# A build writes about ten artifacts; the bound keeps a hostile statement small to check.
MAX_SUBJECTS = 256
# NAME_MAX of Linux file systems: a subject name is one file name in the image folder.
MAX_SUBJECT_NAME = 255
# An artifact's bytes are hashed only up to this size (root images are a few hundred MiB),
# so a huge sparse file cannot keep `manifest verify` busy for hours.
MAX_ARTIFACT_BYTES = 64 << 30
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
    # The image's version (numbers joined by dots, hardhost.image.version); "" in manifests
    # made before images had one.
    version: str = ""
    boot: str = "direct"  # or "uki": then the PCRs below are what a TPM quote must show
    # PCR index -> sha256-bank value predicted from the UKI at build time (4, 9, 11, 12, 13).
    pcrs: Mapping[str, str] = field(default_factory=dict)
    # PCR 0 and 7 depend on the firmware build and the machine, not the image: golden values
    # recorded per "FIRMWARE_SHA256 MACHINE" (see builder.pcr.KNOWN_FIRMWARE).
    firmware_pcrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The booted host's mount table (hardhost.image.layout): mount point -> filesystem type, each
    # present exactly once; optional ones at most once; runtime areas are mount-point globs
    # where services mount at will. Any other mount is drift.
    mounts: Mapping[str, str] = field(default_factory=dict)
    optional_mounts: Mapping[str, str] = field(default_factory=dict)
    runtime_mount_areas: tuple[str, ...] = ()
    # How the image's disk is laid out and how an update to it is assessed: slot_size_mib,
    # boot_tries, bless_timeout (decimal text each). Empty before images had a disk.
    disk: Mapping[str, str] = field(default_factory=dict)
    # The known-vulnerability gate the build passed (ADVISORY_KEYS): the feed's digest and
    # date, the release, the policy and the counts. Empty, and left out of the statement,
    # when the build had no --feed: such manifests are byte for byte what they were before.
    advisories: Mapping[str, str] = field(default_factory=dict)
    # The container engine's image trust policy (podman's policy.json, registries.conf, each
    # registries.d file and each key): path on the host -> sha256. Empty, and left out of the
    # statement, for images without one: their manifests are byte for byte what they were.
    container_policy: Mapping[str, str] = field(default_factory=dict)
    # What the container engine may run (WORKLOAD_KEYS): `engine` (one name), the
    # `registries` images may come from (none: any) and the OCI `runtimes` containers may run
    # under. Empty, and left out of the statement, for images without a container engine.
    workloads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def statement(self) -> dict[str, Any]:
        predicate = asdict(self)
        predicate.pop("name")
        predicate.pop("subjects")
        predicate["mutable_paths"] = {k: list(v) for k, v in self.mutable_paths.items()}
        if not self.advisories:
            predicate.pop("advisories")
        if not self.container_policy:
            predicate.pop("container_policy")
        if not self.workloads:
            predicate.pop("workloads")
        else:
            predicate["workloads"] = {k: list(v) for k, v in self.workloads.items()}
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
        raise TrustError(f"{origin}: predicate.{key}: {value[:40]!r} is not a UTC time "
                         "(YYYY-MM-DDTHH:MM:SSZ)") from None


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(TIME_FORMAT)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The keys of HostManifest.disk.
DISK_KEYS = ("slot_size_mib", "boot_tries", "bless_timeout")
# The keys of HostManifest.advisories (hardhost.advisories.scan.manifest_record).
ADVISORY_KEYS = ("feed_sha256", "feed_date", "release", "fail_on", "fail_unfixed", "affected",
                 "unfixed", "undetermined", "minor", "waived", "failing")
# The keys of HostManifest.workloads.
WORKLOAD_KEYS = ("engine", "registries", "runtimes")
_WORKLOAD_VALUE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,252}")
# Where the files of HostManifest.container_policy live on the host.
CONTAINER_POLICY_DIR = "/etc/containers/"
_ADVISORY_VALUE = re.compile(r"[0-9A-Za-z:.+~_-]{1,80}")


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
    if len(raw_subjects) > MAX_SUBJECTS:
        raise top.fail("subject", f"more than {MAX_SUBJECTS} entries")
    subjects: list[Subject] = []
    for index, entry in enumerate(raw_subjects):
        where = f"subject[{index}]"
        if not isinstance(entry, dict):
            raise top.fail(where, "not an object")
        name = _subject_name(entry.get("name"))
        if name is None:
            raise top.fail(f"{where}.name", "not a plain file name of the image folder "
                           f"(no '/', '.', '..' or control characters; at most "
                           f"{MAX_SUBJECT_NAME} characters)")
        digests = entry.get("digest")
        sha = digests.get("sha256") if isinstance(digests, dict) else None
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise top.fail(f"{where}.digest", f"{name}: missing or not a lower-case hex sha256")
        if any(s.name == name for s in subjects):
            raise top.fail(where, f"{name}: listed twice")
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
            "optional_mounts"), runtime_mount_areas=p.optional_text_list("runtime_mount_areas"),
        version=p.optional_text("version", ""), disk=p.optional_text_map("disk"),
        advisories=p.optional_text_map("advisories"),
        container_policy=p.optional_text_map("container_policy"),
        workloads=p.list_map("workloads") if "workloads" in predicate else {})
    if manifest.version and not IMAGE_VERSION_RE.fullmatch(manifest.version):
        raise p.fail("version", f"{manifest.version[:40]!r} is not an image version (numbers "
                     "joined by dots)")
    for key, value in manifest.disk.items():
        if key not in DISK_KEYS or not value.isdigit() or len(value) > 9:
            raise p.fail(f"disk.{key[:40]}", "not a known key with a decimal value")
    for key, value in manifest.advisories.items():
        if key not in ADVISORY_KEYS or not _ADVISORY_VALUE.fullmatch(value):
            raise p.fail(f"advisories.{key[:40]!r}", "not a known key with a plain value")
    for path, sha in manifest.container_policy.items():
        parts = path.removeprefix(CONTAINER_POLICY_DIR).split("/")
        if (not path.startswith(CONTAINER_POLICY_DIR) or len(parts) > 4
                or any(_subject_name(part) is None for part in parts)
                or not _SHA256.match(sha)):
            raise p.fail(f"container_policy.{path[:60]!r}", f"not a file under "
                         f"{CONTAINER_POLICY_DIR} with a lower-case hex sha256")
    for key, values in manifest.workloads.items():
        if key not in WORKLOAD_KEYS or not all(_WORKLOAD_VALUE.fullmatch(v) for v in values):
            raise p.fail(f"workloads.{key[:40]!r}", "not a known key with a list of names")
    if manifest.workloads and len(manifest.workloads.get("engine", ())) != 1:
        raise p.fail("workloads.engine", "expected exactly one engine")
    if manifest.boot not in ("direct", "uki"):
        raise p.fail("boot", f"{manifest.boot[:40]!r} is neither 'direct' nor 'uki'")
    created = _parse_time(manifest.created, "created", origin)
    expires = _parse_time(manifest.expires, "expires", origin)
    if expires <= created:
        raise p.fail("expires", f"{manifest.expires} is not later than created "
                                f"{manifest.created}")
    if expires - created > dt.timedelta(days=MAX_VALIDITY_DAYS):
        raise p.fail("expires", f"{manifest.expires} is more than {MAX_VALIDITY_DAYS} days "
                                f"after created {manifest.created}")
    return manifest


def _subject_name(value: object) -> str | None:
    """`value` if it names one file directly in the image folder, else None."""
    if (not isinstance(value, str) or not value or len(value) > MAX_SUBJECT_NAME
            or "/" in value or value in (".", "..") or _CONTROL.search(value)):
        return None
    return value


def read_verified(path: Path, trusted: dict[str, Ed25519PublicKey],
                  now: dt.datetime | None = None) -> tuple[HostManifest, str]:
    """Verify the envelope at `path` and return the manifest and the signer's key id.

    Raises `UsageError` when `path` is not a readable regular file (missing, a FIFO, a
    device, a folder, too large), and `TrustError` for a bad signature, an untrusted key, a
    malformed or truncated file, a manifest created in the future, valid for longer than
    `MAX_VALIDITY_DAYS`, or expired.
    """
    data = read_bytes(path, what="manifest", limit=signing.MAX_ENVELOPE_BYTES)
    verified = signing.verify(data, trusted, str(path))
    statement = decode_json(verified.payload, origin=f"{path}: the signed payload",
                            error=TrustError)
    manifest = from_statement(statement, str(path))
    moment = now or dt.datetime.now(dt.UTC)
    created = _parse_time(manifest.created, "created", str(path))
    if created > moment + CLOCK_SKEW:
        raise TrustError(f"{path}: created {manifest.created}, later than now "
                         f"({format_time(moment)}); check the clocks of the build host and "
                         "this one")
    if moment >= manifest.expires_at():
        raise TrustError(f"{path}: expired on {manifest.expires}; rebuild or re-sign the image")
    return manifest, verified.key_id


def check_artifacts(manifest: HostManifest, directory: Path) -> list[str]:
    """Compare every subject with the file of that name in `directory`; return the names.

    Each artifact must be a regular file directly in `directory`: a missing one, a symbolic
    link, a FIFO or a folder is a `TrustError`, as is the first digest that differs. Subject
    names are plain file names (`from_statement` refuses others), and each is opened relative
    to the folder without following a link, so nothing outside the folder is read.
    """
    try:
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot open the image folder: {exc.strerror}") from None
    try:
        for subject in manifest.subjects:
            actual = _hash_artifact(folder, directory, subject.name)
            if actual != subject.sha256:
                raise TrustError(f"{directory / subject.name}: sha256 {actual[:16]}… does not "
                                 f"match the manifest's {subject.sha256[:16]}…")
    finally:
        os.close(folder)
    return [subject.name for subject in manifest.subjects]


class ArtifactMissing(TrustError):
    """A file the manifest signs is not in the image folder."""


def require_subjects(manifest: HostManifest, path: Path, names: Collection[str],
                     reader: str) -> None:
    """`TrustError` unless the manifest at `path` signs a digest for each of `names`, the
    files that `reader` (say "the boot reads") would otherwise take on trust."""
    signed = {subject.name for subject in manifest.subjects}
    unsigned = [name for name in names if name not in signed]
    if unsigned:
        raise TrustError(f"{path}: signs no digest for {', '.join(unsigned)}, which {reader}; "
                         "rebuild the image")


def check_named_artifacts(manifest: HostManifest, directory: Path,
                          names: Collection[str]) -> None:
    """`check_artifacts` for the subjects in `names` only (each must be one)."""
    chosen = tuple(subject for subject in manifest.subjects if subject.name in names)
    if len(chosen) != len(set(names)):
        raise TrustError(f"{directory}: the manifest signs no digest for one of "
                         f"{', '.join(sorted(names))}")
    check_artifacts(replace(manifest, subjects=chosen), directory)


def _hash_artifact(folder: int, directory: Path, name: str) -> str:
    path = directory / name
    try:
        # O_NOFOLLOW: a link could point anywhere. O_NONBLOCK: a FIFO must not wait for a
        # writer; it is refused below as not a regular file.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY, dir_fd=folder)
    except FileNotFoundError:
        raise ArtifactMissing(f"{path}: artifact missing; restore it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TrustError(f"{path}: artifact is a symbolic link; the manifest names "
                             "regular files of the image folder") from None
        raise TrustError(f"{path}: cannot read the artifact: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise TrustError(f"{path}: artifact is not a regular file")
    if info.st_size > MAX_ARTIFACT_BYTES:
        os.close(fd)
        raise TrustError(f"{path}: artifact is larger than {MAX_ARTIFACT_BYTES} bytes")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", buffering=0) as f:
        h, size = hashlib.sha256(), 0
        try:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > info.st_size:
                    raise TrustError(f"{path}: artifact grew while it was read")
                h.update(chunk)
        except OSError as exc:
            raise TrustError(f"{path}: cannot read the artifact: {exc.strerror}") from None
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 of a file the build itself wrote (not for untrusted paths)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
