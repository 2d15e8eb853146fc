"""Stage 7: the SBOM and the signed manifest, the contract the verifier checks hosts against.

With a known-vulnerability gate (`hardhost build --feed`), the image's packages are scanned
first: a failing image stops the build here, before anything is signed, and the output
folder is never written."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path

from hardhost.advisories.gate import decide, record
from hardhost.builder import sbom
from hardhost.builder.containers import canonical
from hardhost.builder.context import BuildContext
from hardhost.builder.pcr import KNOWN_FIRMWARE
from hardhost.builder.spec import Spec
from hardhost.builder.stages import harden, security
from hardhost.builder.stages.harden import effective_sysctls
from hardhost.core.errors import BuildError
from hardhost.core.log import StepTiming
from hardhost.core.run import output
from hardhost.image import layout, signing
from hardhost.image.manifest import MANIFEST_NAME, HostManifest, Subject, format_time, sha256_file

SBOM_NAME = layout.SBOM
# Signed artifacts, in the order a reproducibility check compares them.
SUBJECTS = (layout.ROOT_IMAGE, layout.ROOT_VERITY, layout.KERNEL, layout.INITRD, SBOM_NAME,
            layout.UKI)


def subjects(*, qcow2: bool = False) -> tuple[str, ...]:
    """The artifacts the manifest signs: the disk image last, as raw or qcow2."""
    return (*SUBJECTS, layout.DISK_QCOW2 if qcow2 else layout.DISK)


def firmware_pcrs() -> dict[str, dict[str, str]]:
    return {f"{golden.code_sha256} {golden.machine}": {str(i): v for i, v in golden.pcrs.items()}
            for golden in KNOWN_FIRMWARE.values()}

# What changes under /etc and /var on a healthy host after boot, as globs per overlay.
# /var holds runtime state by design (logs, caches, container storage), so all of it may
# change; /etc may change only where services write their generated identity.
MUTABLE_PATHS: Mapping[str, tuple[str, ...]] = {
    "etc": (".pwd.lock", "machine-id", "cni", "cni/*", "docker", "docker/key.json"),
    "var": ("*",),
}


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    """Every setting: the manifest records them all. It is never cached; signing is cheap."""
    settings = dataclasses.asdict(spec) | {"source": None}
    containers = canonical(spec.containers)
    if containers is None:
        settings.pop("containers")  # specs from before [containers] keep their key
    else:
        settings["containers"] = containers  # and those from before its later keys
    return {"spec": settings, "epoch": epoch}


def sshd_expectations(spec: Spec) -> dict[str, str]:
    """The `sshd -T` values a booted host must report."""
    return {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitemptypasswords": "no",
        "pubkeyauthentication": "yes",
        "authenticationmethods": "publickey",
        "permitrootlogin": "without-password" if spec.ssh.permit_root_login else "no",
        "hostkey": f"{layout.STATE_MOUNT}/{layout.STATE_HOST_KEY}",
    }


def apparmor_profiles(tree: Path) -> dict[str, str]:
    """Profiles the image loads at boot, with the mode each must be in."""
    base = tree / "etc/apparmor.d"
    disabled = {p.name for p in (base / "disable").glob("*")}
    complain = {p.name for p in (base / "force-complain").glob("*")}
    profiles: dict[str, str] = {}
    for path in sorted(p for p in base.iterdir() if p.is_file() and p.name not in disabled):
        text = path.read_text(errors="replace")
        mode = "complain" if path.name in complain or "complain)" in text else "enforce"
        names = output(["apparmor_parser", "--names", "--base", base, "--Include", base, path])
        for name in names.split():
            profiles[name] = mode
    return profiles


def apparmor_runtime_profiles(spec: Spec, tree: Path) -> dict[str, str]:
    """Profiles services load when they start, after boot."""
    if harden.has_docker(spec):
        return {"docker-default": "enforce"}
    if harden.has_podman(spec):
        return {podman_apparmor_profile(tree): "enforce"}
    return {}


# podman loads its default AppArmor profile at the first container, named after the
# containers/common it was built with (Debian 12's podman 4.3.1: containers-default-0.50.1).
_PODMAN_PROFILE_RE = re.compile(rb"containers-default-[0-9]+\.[0-9]+\.[0-9]+")
PODMAN_BINARY = "usr/bin/podman"


def podman_apparmor_profile(tree: Path) -> str:
    """The name of the AppArmor profile the image's podman loads, read from its binary."""
    found = _PODMAN_PROFILE_RE.search((tree / PODMAN_BINARY).read_bytes())
    if found is None:
        raise BuildError(f"{tree / PODMAN_BINARY}: names no containers-default AppArmor "
                         "profile; the manifest could not expect the one podman loads")
    return found.group().decode()


def seccomp_profiles(tree: Path) -> dict[str, str]:
    """Every seccomp profile the image carries, by its path on the host."""
    directory = tree / security.SECCOMP_DIR.lstrip("/")
    return {f"{security.SECCOMP_DIR}/{p.name}": sha256_file(p)
            for p in sorted(directory.glob("*.json"))}


def runtime_config(tree: Path) -> dict[str, str]:
    """The container engine's configuration files the image holds, by path."""
    paths = ("/etc/docker/daemon.json", harden.PODMAN_CONF)
    return {path: sha256_file(tree / path.lstrip("/")) for path in paths
            if (tree / path.lstrip("/")).exists()}


def userns_expectations(spec: Spec) -> dict[str, str]:
    line = harden.subid_line(spec)
    expected = {"remap_user": spec.userns.remap_user, "subuid": line, "subgid": line}
    if harden.has_docker(spec):
        expected["docker_userns_remap"] = spec.userns.remap_user
    return expected


def build_manifest(ctx: BuildContext, packages: list[sbom.Package], sbom_digest: str,
                   now: dt.datetime, advisories: Mapping[str, str] | None = None
                   ) -> HostManifest:
    spec = ctx.spec
    return HostManifest(
        name=spec.name,
        subjects=tuple(Subject(name, ctx.subjects[name]) for name in subjects(qcow2=ctx.qcow2)),
        version=spec.version,
        spec_digest=spec.digest(),
        package_list_digest=sbom.package_list_digest(packages),
        sbom_digest=sbom_digest,
        root_hash=ctx.root_hash,
        verity_salt=ctx.salt,
        filesystem=str(spec.image.filesystem),
        kernel_release=ctx.kernel_release,
        cmdline=ctx.cmdline,
        sysctls=dict(effective_sysctls(spec)),
        apparmor_profiles=apparmor_profiles(ctx.tree),
        apparmor_runtime_profiles=apparmor_runtime_profiles(spec, ctx.tree),
        seccomp_profiles=seccomp_profiles(ctx.tree),
        runtime_config=runtime_config(ctx.tree),
        userns=userns_expectations(spec),
        sshd=sshd_expectations(spec),
        mutable_paths=MUTABLE_PATHS,
        created=format_time(now),
        expires=format_time(now + dt.timedelta(days=spec.manifest.validity_days)),
        boot="uki",
        pcrs={str(index): value for index, value in sorted(ctx.pcrs.items())},
        firmware_pcrs=firmware_pcrs(),
        disk=disk_facts(spec),
        mounts=expected_mounts(spec),
        optional_mounts=layout.OPTIONAL_MOUNTS,
        runtime_mount_areas=layout.RUNTIME_MOUNT_AREAS + (
            layout.DOCKER_RUNTIME_MOUNT_AREAS if harden.has_docker(spec) else ()) + (
            layout.PODMAN_RUNTIME_MOUNT_AREAS if harden.has_podman(spec) else ()),
        advisories=dict(advisories or {}),
        container_policy=container_policy_digests(ctx.tree, spec),
        workloads=workloads(spec),
    )


def workloads(spec: Spec) -> dict[str, tuple[str, ...]]:
    """What the image's container engine may run: the engine, the registries its images come
    from (none: any) and the runtimes it has registered. Nothing without an engine."""
    if not (harden.has_docker(spec) or harden.has_podman(spec)):
        return {}
    containers = spec.containers
    return {"engine": (str(containers.engine),),
            "registries": containers.allowed_registries,
            "runtimes": containers.allowed_runtimes}


def container_policy_digests(tree: Path, spec: Spec) -> dict[str, str]:
    """The sha256 of each file of the image trust policy, as the tree holds it."""
    return {f.path: sha256_file(tree / f.path.lstrip("/"))
            for f in harden.container_policy_files(spec)}


def disk_facts(spec: Spec) -> dict[str, str]:
    """What an update of a host to this image needs: the slot it must fit, and how the new
    boot is assessed."""
    return {"slot_size_mib": str(spec.disk.slot_size_mib),
            "boot_tries": str(spec.boot.tries),
            "bless_timeout": str(spec.boot.bless_timeout)}


def expected_mounts(spec: Spec) -> dict[str, str]:
    """Every mount a booted host of `spec` has, by mount point and filesystem type."""
    mounts = layout.BASE_MOUNTS | {"/": str(spec.image.filesystem)}
    return (mounts | (layout.DOCKER_MOUNTS if harden.has_docker(spec) else {})
            | (layout.PODMAN_MOUNTS if harden.has_podman(spec) else {}))


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    key = ctx.signing_key
    packages = sbom.installed_packages(ctx.tree)
    suite = ctx.spec.distribution.suite
    advisories: dict[str, str] = {}
    if ctx.gate is not None:
        # Before anything is written: a failing image raises, and the build removes its
        # staging folder.
        advisories = record(decide(ctx.gate, sbom.inventory(ctx.spec.name, packages,
                                                            suite=suite)))
    epoch = dt.datetime.fromtimestamp(ctx.source_date_epoch, dt.UTC)
    sbom.write(ctx.staging / SBOM_NAME, sbom.document(
        ctx.spec.name, packages, format_time(epoch), suite=suite))
    ctx.subjects = {name: sha256_file(ctx.staging / name)
                    for name in subjects(qcow2=ctx.qcow2)}
    manifest = build_manifest(ctx, packages, ctx.subjects[SBOM_NAME], dt.datetime.now(dt.UTC),
                              advisories)
    (ctx.staging / MANIFEST_NAME).write_bytes(signing.sign(manifest.payload(), key))
    step.note = f"{len(packages)} packages, key {signing.key_id(key.public_key())[:16]}"
