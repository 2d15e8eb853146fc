"""`hardhost update`: move a host to a new image through its idle slot, and keep the new boot
only when it passes attestation.

The order is what keeps a host bootable whatever happens. Nothing on the host changes until
the new image's manifest verifies and the host passes attestation on the image it runs. The
idle slot is written and read back (its sha256 checked against the manifest's) while no boot
entry points at it; the new UKI goes to the ESP under a temporary name and is checked there
too. Only then does a rename make it a boot entry, with systemd-boot's boot counter: a new
image that cannot boot uses up its tries and systemd-boot starts the old slot by itself. A
new image that boots is attested against its own manifest; a pass blesses it, a failure
marks it bad and reboots into the old slot, which is attested again.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hardhost.core.errors import HardhostError, TrustError, UsageError
from hardhost.image import layout
from hardhost.image.manifest import (
    MANIFEST_NAME,
    HostManifest,
    check_named_artifacts,
    read_verified,
    require_subjects,
)
from hardhost.image.version import is_older
from hardhost.verifier import reset
from hardhost.verifier.attestation import Connection, judge, manifest_digest, session_for
from hardhost.verifier.evidence import Evidence, collect
from hardhost.verifier.transport import HostOutputError, Session, Target
from hardhost.verifier.verdict import Verdict

log = logging.getLogger(__name__)

SCRIPT = resources.files("hardhost.verifier").joinpath("update_script.sh").read_text()
# What an update writes: the slot's two partitions, then the boot entry.
PAYLOAD = (layout.ROOT_IMAGE, layout.ROOT_VERITY, layout.UKI)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY = re.compile(r"hardhost-[0-9]{1,9}(\+[0-9]{1,2}(-[0-9]{1,2})?)?\.efi")
_STORE_LIMIT = 10_000  # manifests in one store
_SCRIPT_OUTPUT = 64 * 1024
# The slowest transfer an update waits for: a TCG guest takes tens of MiB/s.
MIN_RATE = 2**18  # bytes per second
BLESS_TIMEOUT = 120.0


class Outcome(enum.StrEnum):
    UPDATED = "updated"  # the new image booted, passed attestation and is blessed
    ROLLED_BACK = "rolled-back"  # the host runs its old image again, and passes on it
    CURRENT = "current"  # the host already runs the new image


class UpdateError(HardhostError):
    """An update that stopped before the switch: the host still boots its running image."""


@dataclass(frozen=True)
class Image:
    """A built image whose manifest verified and whose payload matches it."""

    directory: Path
    manifest: HostManifest
    digest: str


@dataclass(frozen=True)
class UpdateResult:
    host: str
    outcome: Outcome
    from_version: str
    to_version: str
    before: Verdict  # the running image, attested before anything changed
    new_boot: Verdict | None = None  # the new image's boot, when it booted
    after: Verdict | None = None  # the old image again, after a rollback
    reason: str = ""

    @property
    def version(self) -> str:
        """The version the host runs now."""
        return self.to_version if self.outcome is not Outcome.ROLLED_BACK else self.from_version

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "outcome": str(self.outcome),
                "from_version": self.from_version, "to_version": self.to_version,
                "version": self.version, "reason": self.reason,
                "before": self.before.to_dict(),
                "new_boot": self.new_boot.to_dict() if self.new_boot else None,
                "after": self.after.to_dict() if self.after else None}


def load_image(directory: Path, trusted: dict[str, Ed25519PublicKey]) -> Image:
    """The image at `directory`, its manifest verified against `trusted` and every file an
    update sends matching it. `TrustError` otherwise: the host is never contacted."""
    path = directory / MANIFEST_NAME
    manifest, _ = read_verified(path, trusted)
    require_subjects(manifest, path, PAYLOAD, "an update writes")
    check_named_artifacts(manifest, directory, PAYLOAD)
    if not manifest.version or not manifest.disk:
        raise TrustError(f"{path}: the image has no version or disk layout; rebuild it with "
                         "this hardhost")
    return Image(directory, manifest, manifest_digest(path))


def load_store(folder: Path, trusted: dict[str, Ed25519PublicKey]) -> dict[str, Image]:
    """The manifest store: every image folder in `folder` (FOLDER/NAME/manifest.dsse.json)
    and every manifest file (FOLDER/*.dsse.json), verified, by root hash. A manifest that
    does not verify is a `TrustError` naming it: a store holds only what its owner signed."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: the manifest store is not a folder")
    paths = sorted(folder.glob("*.dsse.json")) + sorted(folder.glob(f"*/{MANIFEST_NAME}"))
    if len(paths) > _STORE_LIMIT:
        raise UsageError(f"{folder}: more than {_STORE_LIMIT} manifests")
    if not paths:
        raise UsageError(f"{folder}: the manifest store holds no manifest (NAME/"
                         f"{MANIFEST_NAME} or *.dsse.json); add the running image's")
    store: dict[str, Image] = {}
    for path in paths:
        manifest, _ = read_verified(path, trusted)
        store.setdefault(manifest.root_hash, Image(path.parent, manifest,
                                                   manifest_digest(path)))
    return store


def _running_hash(evidence: Evidence) -> str:
    for arg in evidence.cmdline.split():
        key, _, value = arg.partition("=")
        if key == layout.CMDLINE_ROOTHASH and _HEX64.fullmatch(value):
            return value
    return ""


def _parse(result_stdout: bytes, target: Target, action: str) -> list[tuple[str, str]]:
    """The "key value" lines of one script action, which must end with "ok"."""
    try:
        text = result_stdout.decode("ascii")
    except UnicodeDecodeError:
        raise HostOutputError(f"{target}: update {action}: output is not ASCII") from None
    lines = text.splitlines()
    for line in lines:
        if line.startswith("error "):
            raise UpdateError(f"{target}: update {action}: {line[6:][:300]}")
    if not lines or lines[-1] != "ok":
        raise HostOutputError(f"{target}: update {action}: the host did not finish the step "
                              f"({text[-200:]!r})")
    facts = []
    for line in lines[:-1]:
        key, sep, value = line.partition(" ")
        if not sep or not re.fullmatch(r"[a-z0-9_]{1,20}", key) or len(value) > 200:
            raise HostOutputError(f"{target}: update {action}: unexpected line {line[:80]!r}")
        facts.append((key, value))
    return facts


class _Host:
    """The update script's actions on one host, over one SSH session."""

    def __init__(self, session: Session, target: Target, timeout: float) -> None:
        self.session, self.target, self.timeout = session, target, timeout

    def run(self, action: str, *args: str) -> list[tuple[str, str]]:
        result = self.session.run_script(SCRIPT, args=(action, *args), timeout=self.timeout,
                                         limit=_SCRIPT_OUTPUT)
        return _parse(result.stdout, self.target, action)

    def send(self, action: str, args: tuple[str, ...], source: BinaryIO, size: int,
             what: str) -> list[tuple[str, str]]:
        command = ["/bin/sh", "-c", SCRIPT, "hardhost-update", action, *args]
        started = time.monotonic()
        shown = [0]

        def progress(sent: int) -> None:
            if sent * 10 // max(size, 1) > shown[0] or sent == size:
                shown[0] = sent * 10 // max(size, 1)
                rate = sent / max(time.monotonic() - started, 1e-3) / 2**20
                log.info("  %s: %s %3.0f%% (%.1f MiB/s)", self.target, what,
                         100 * sent / max(size, 1), rate)

        result = self.session.stream(command, source, timeout=self.timeout + size / MIN_RATE,
                                     limit=_SCRIPT_OUTPUT, progress=progress)
        return _parse(result.stdout, self.target, action)


def _fact(facts: list[tuple[str, str]], key: str, pattern: str, target: Target) -> str:
    values = [v for k, v in facts if k == key]
    if len(values) != 1 or not re.fullmatch(pattern, values[0]):
        raise HostOutputError(f"{target}: update: expected one {key} fact, got {values[:3]}")
    return values[0]


def _attest_now(target: Target, store: Mapping[str, Image], conn: Connection,
                expect: Image | None = None) -> tuple[Verdict, Image | None, str]:
    """Attest `target` against the manifest of the image it runs, found in `store` (or
    `expect`) by the root hash it reports. Returns the verdict, that image (None when
    neither has it) and the root hash."""
    with session_for(target, conn) as session:
        images = dict(store)
        if expect is not None:
            images[expect.manifest.root_hash] = expect
        some = expect or next(iter(images.values()))
        evidence = collect(session, timeout=conn.timeout,
                           mutable_paths=dict(some.manifest.mutable_paths))
        running = _running_hash(evidence)
        image = images.get(running)
        if image is None:
            return Verdict(str(target), evidence.boot_id, "", "", ()), None, running
        if image.manifest.mutable_paths != some.manifest.mutable_paths:
            evidence = collect(session, timeout=conn.timeout,
                               mutable_paths=dict(image.manifest.mutable_paths))
        verdict, _ = judge(session, target, image.manifest, image.digest, evidence, conn)
    return verdict, image, running


def running_version(target: Target, store: Mapping[str, Image], conn: Connection) -> str:
    """The version of the image `target` runs, by the root hash it reports ("" when no
    manifest in `store` signs it)."""
    _, image, _ = _attest_now(target, store, conn)
    return image.manifest.version if image is not None else ""


def update(target: Target, new: Image, store: Mapping[str, Image], conn: Connection, *,
           allow_downgrade: bool = False, reboot_timeout: float = 600.0,
           open_payload: Callable[[Path], BinaryIO] | None = None) -> UpdateResult:
    """Update `target` to `new` and return what happened.

    Raises `TrustError` when the host runs an image no manifest in `store` signs,
    `UsageError` for a downgrade without `allow_downgrade` or an image that does not fit,
    `UpdateError` (the host untouched or still on its running image) when a step before the
    switch fails, and `Unreachable`. `open_payload` opens each file sent (tests pass one
    that corrupts the stream in flight).
    """
    opener = open_payload or (lambda path: path.open("rb"))
    before, running, running_hash = _attest_now(target, store, conn)
    if running is None:
        raise TrustError(f"{target}: runs root hash {running_hash[:16] or 'unknown'}…, which "
                         "no manifest in the store signs; add that image's manifest")
    old = running.manifest
    if before.status != "pass":
        failed = ", ".join(f.id for f in before.findings if f.counts())[:300]
        raise UpdateError(f"{target}: does not pass attestation on its running image "
                          f"{old.name} {old.version} ({failed}); reset it before updating")
    result = UpdateResult(str(target), Outcome.CURRENT, old.version, new.manifest.version,
                          before)
    if running_hash == new.manifest.root_hash:
        return result
    if old.version and is_older(new.manifest.version, old.version) and not allow_downgrade:
        raise UsageError(f"{target}: runs {old.name} {old.version}; {new.manifest.version} is "
                         "older: pass --allow-downgrade to install it anyway")
    _install(target, new, running_hash, conn, opener)
    log.info("%s: rebooting into %s %s", target, new.manifest.name, new.manifest.version)
    reset.reboot(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=reboot_timeout, ssh_config=conn.ssh_config,
                 connect_timeout=min(conn.timeout, reset.RECONNECT_TIMEOUT))
    booted, image, booted_hash = _attest_now(target, store, conn, expect=new)
    if booted_hash == running_hash:
        # systemd-boot fell back by itself: the new image used up its tries.
        return dataclasses.replace(
            result, outcome=Outcome.ROLLED_BACK, after=booted,
            reason="the new image did not boot: systemd-boot used up its tries and started "
                   "the previous slot")
    if image is not new:
        raise TrustError(f"{target}: came back with root hash {booted_hash[:16]}…, neither "
                         "the old image nor the new one")
    if booted.status == "pass":
        _bless(target, conn, "good")
        log.info("%s: %s %s passed attestation and is blessed", target, new.manifest.name,
                 new.manifest.version)
        return dataclasses.replace(result, outcome=Outcome.UPDATED, new_boot=booted)
    log.info("%s: the new boot failed attestation; marking it bad and rolling back", target)
    _bless(target, conn, "bad")
    reset.reboot(target, known_hosts=conn.known_hosts, identity=conn.identity,
                 timeout=reboot_timeout, ssh_config=conn.ssh_config,
                 connect_timeout=min(conn.timeout, reset.RECONNECT_TIMEOUT))
    after, _, after_hash = _attest_now(target, {running_hash: running}, conn)
    if after_hash != running_hash:
        raise TrustError(f"{target}: did not return to its old image after the new boot was "
                         f"marked bad (root hash {after_hash[:16]}…)")
    failed = ", ".join(f.id for f in booted.findings if f.counts())[:300]
    return dataclasses.replace(result, outcome=Outcome.ROLLED_BACK, new_boot=booted,
                               after=after, reason=f"the new boot failed attestation: {failed}")


def _install(target: Target, new: Image, running_hash: str, conn: Connection,
             opener: Callable[[Path], BinaryIO]) -> None:
    """Write the idle slot and the boot entry; every step before the rename is undone by
    the next update's clean-up, and none of them makes the host boot anything new."""
    manifest = new.manifest
    sizes = {name: (new.directory / name).stat().st_size for name in PAYLOAD}
    digests = {s.name: s.sha256 for s in manifest.subjects}
    tries = int(manifest.disk.get("boot_tries", "3"))
    with session_for(target, conn) as session:
        host = _Host(session, target, max(conn.timeout, 60.0))
        slots = host.run("slots", running_hash)
        if any(key == "assessing" for key, _ in slots):
            raise UpdateError(f"{target}: its running boot is still under assessment (an "
                              "update that did not finish): attest it with --reset first")
        idle = _fact(slots, "idle", "[ab]", target)
        for name, key in ((layout.ROOT_IMAGE, "root_size"), (layout.ROOT_VERITY, "verity_size")):
            room = int(_fact(slots, key, "[0-9]{1,15}", target))
            if sizes[name] > room:
                raise UsageError(f"{target}: {name} of {manifest.name} {manifest.version} is "
                                 f"{sizes[name]} bytes; slot {idle} holds {room}")
        cleaned = host.run("clean", running_hash)
        newest = int(_fact(cleaned, "newest", "[0-9]{1,9}", target))
        if newest == 0:
            raise UpdateError(f"{target}: no boot entry on its ESP boots the running image")
        free = int(_fact(cleaned, "free", "[0-9]{1,15}", target))
        if sizes[layout.UKI] + 2**20 > free:
            raise UpdateError(f"{target}: the ESP has {free} bytes free; the UKI needs "
                              f"{sizes[layout.UKI]}")
        labels = {layout.ROOT_IMAGE: layout.root_label(idle),
                  layout.ROOT_VERITY: layout.verity_label(idle)}
        for name, label in labels.items():
            with opener(new.directory / name) as source:
                written = host.send("write", (label, str(sizes[name])), source, sizes[name],
                                    f"{name} -> {label}")
            _check_digest(target, name, _fact(written, "sha256", _HEX64.pattern, target),
                          digests[name])
        root_uuid, verity_uuid = layout.slot_uuids(manifest.root_hash)
        host.run("uuid", layout.root_label(idle), root_uuid)
        host.run("uuid", layout.verity_label(idle), verity_uuid)
        entry = f"{layout.ENTRY_PREFIX}{newest + 1}+{tries}.efi"
        with opener(new.directory / layout.UKI) as source:
            sent = host.send("entry", (entry, str(sizes[layout.UKI])), source,
                             sizes[layout.UKI], f"{layout.UKI} -> ESP")
        partial = _fact(sent, "partial", r"\.hardhost-[0-9+\-]+\.efi\.partial", target)
        _check_digest(target, layout.UKI, _fact(sent, "sha256", _HEX64.pattern, target),
                      digests[layout.UKI])
        if not _ENTRY.fullmatch(entry):
            raise UpdateError(f"{target}: {entry!r} is not a boot entry name")
        host.run("install", partial, entry)
        log.info("%s: slot %s holds %s %s; boot entry %s", target, idle, manifest.name,
                 manifest.version, entry)


def _check_digest(target: Target, name: str, found: str, expected: str) -> None:
    if found != expected:
        raise UpdateError(f"{target}: {name} arrived with sha256 {found[:16]}…, not the "
                          f"manifest's {expected[:16]}…; nothing was switched, the host "
                          "still boots its running image")


def _bless(target: Target, conn: Connection, verdict: str) -> None:
    with session_for(target, conn) as session:
        _Host(session, target, BLESS_TIMEOUT).run("bless", verdict)


def describe(result: UpdateResult) -> str:
    """One line for people."""
    text = {Outcome.UPDATED: f"updated {result.from_version} -> {result.to_version}",
            Outcome.CURRENT: f"already runs {result.to_version}",
            Outcome.ROLLED_BACK: f"rolled back to {result.from_version} "
                                 f"({result.reason})"}[result.outcome]
    return f"{result.host}: {text}"


__all__ = ["Image", "Outcome", "UpdateError", "UpdateResult", "describe", "load_image",
           "load_store", "running_version", "update"]
