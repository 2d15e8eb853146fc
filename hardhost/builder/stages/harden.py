"""Stage 2: the hardening layer, rendered from Jinja2 templates and written into the tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from hardhost.builder import container_policy
from hardhost.builder.chroot import run_in_tree
from hardhost.builder.containers import BASELINE_PTRACE_SCOPE, RUNTIMES, Engine
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec
from hardhost.builder.stages import security
from hardhost.core.errors import BuildError
from hardhost.core.log import StepTiming
from hardhost.core.run import run
from hardhost.image import layout

# The hardened baseline. The spec's [sysctl] table overrides any of these and adds more.
BASELINE_SYSCTLS: Mapping[str, str] = {
    # Kernel pointers, logs and introspection.
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "kernel.perf_event_paranoid": "3",
    "kernel.yama.ptrace_scope": BASELINE_PTRACE_SCOPE,  # runsc needs 1 (builder.containers)
    "kernel.sysrq": "0",
    "kernel.randomize_va_space": "2",
    "kernel.kexec_load_disabled": "1",
    "kernel.unprivileged_bpf_disabled": "1",
    "net.core.bpf_jit_harden": "2",
    "dev.tty.ldisc_autoload": "0",
    "fs.suid_dumpable": "0",
    # Filesystem link and file protections.
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
    "fs.protected_fifos": "2",
    "fs.protected_regular": "2",
    # Network: reverse-path filtering, no redirects or source routes, SYN cookies.
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.default.secure_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.conf.default.log_martians": "1",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv6.conf.all.accept_source_route": "0",
    "net.ipv6.conf.default.accept_source_route": "0",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_rfc1337": "1",
}

# Modules the initramfs needs to find the disks, open dm-verity and mount the layers.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "dm_verity", "erofs", "squashfs", "overlay",
                     "ext4", "crc32c_generic")

INITRAMFS_CONFIG = "/etc/initramfs-tools"
LOCALE = "# Rendered by hardhost: read by pam_env at login.\nLANG=C.UTF-8\n"

ENABLED_UNITS = ("systemd-networkd.service", "hardhost-boot-deadline.timer")
# binfmt_misc hands any file whose first bytes match a registered magic to an interpreter
# of root's choosing, with the 'C' flag under that file's set-uid credentials: a way to
# persist that runs nothing any profile names. A container host runs its own architecture's
# binaries, so the prune stage drops the module, and these units would fail at every boot:
# systemd 252's automount has no condition on the module and fires on the first look into
# /proc/sys/fs/binfmt_misc (sysctl -a does), and its mount then cannot load the filesystem,
# leaving the host "degraded". Masked, the directory stays empty.
BINFMT_UNITS = ("proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
                "systemd-binfmt.service")
# A container host does not wait for "network online" to start sshd. With the package
# manager pruned, apt's and dpkg's timers have nothing to run; e2scrub checks LVM snapshots
# of ext4, which the image has none of; the root is read-only, so there is nothing to trim.
MASKED_UNITS = ("systemd-networkd-wait-online.service", "apt-daily.timer",
                "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
                "e2scrub_reap.service", "fstrim.timer", *BINFMT_UNITS)
# A UKI boot measures the "sysinit" phase into PCR 11 before sshd starts; the "ready" phase
# unit runs whenever the boot settles, so a quote taken just after SSH answers could see PCR
# 11 either way. Masking it makes PCR 11 one predictable value from SSH on.
UKI_MASKED_UNITS = ("systemd-pcrphase.service",)
# Only a passing attestation may bless a boot, never the host itself: systemd-boot's own
# blessing service (and its generator, below) would mark any boot that reaches
# boot-complete.target good. The host writes no random seed or system token into the ESP or
# the firmware's variables, and never updates the systemd-boot on its ESP, which PCR 4
# measures: only an update from the verifier changes the ESP.
BOOT_MASKED_UNITS = ("systemd-bless-boot.service", "systemd-boot-system-token.service",
                     "systemd-boot-update.service")
# systemd-gpt-auto-generator would mount the ESP (and any partition of a discoverable type)
# by itself, a mount the verifier must not find; the root comes from the command line.
MASKED_GENERATORS = ("systemd-gpt-auto-generator", "systemd-bless-boot-generator")
BOOT_DEADLINE_UNIT = "hardhost-boot-deadline"
# systemd-boot's vendor GUID: LoaderBootCountPath exists while a boot is under assessment.
_LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
BOOT_COUNT_VARIABLE = f"/sys/firmware/efi/efivars/LoaderBootCountPath-{_LOADER_GUID}"


def masked_units(spec: Spec) -> tuple[str, ...]:
    return MASKED_UNITS + UKI_MASKED_UNITS + BOOT_MASKED_UNITS


def boot_deadline_units(spec: Spec) -> list[RenderedFile]:
    """A timer that reboots a boot under assessment (its UKI still has tries left) that the
    verifier has not blessed within `boot.bless_timeout`: the reboot uses up a try, so a host
    no verifier reaches falls back to its previous slot too. Blessing stops the timer."""
    base = f"/etc/systemd/system/{BOOT_DEADLINE_UNIT}"
    timer = (f"# Rendered by hardhost: reboot a boot under assessment left unblessed.\n"
             f"[Unit]\nDescription=Deadline for blessing this boot\n"
             f"ConditionPathExists={BOOT_COUNT_VARIABLE}\n\n"
             f"[Timer]\nOnBootSec={spec.boot.bless_timeout}s\nAccuracySec=1s\n\n"
             f"[Install]\nWantedBy=timers.target\n")
    service = ("# Rendered by hardhost: the boot was not blessed in time; this reboot uses "
               "up one of its tries.\n[Unit]\nDescription=Reboot an unblessed boot\n"
               f"ConditionPathExists={BOOT_COUNT_VARIABLE}\n\n"
               "[Service]\nType=oneshot\nExecStart=/usr/bin/systemctl --no-block reboot\n")
    return [RenderedFile(f"{base}.timer", timer), RenderedFile(f"{base}.service", service)]


def os_release(text: str, spec: Spec) -> str:
    """os-release with the image's IMAGE_ID and IMAGE_VERSION (os-release(5)) added."""
    lines = [line for line in text.splitlines()
             if not line.startswith(("IMAGE_ID=", "IMAGE_VERSION="))]
    return "\n".join([*lines, f"IMAGE_ID={spec.name}", f"IMAGE_VERSION={spec.version}"]) + "\n"



@dataclass(frozen=True)
class RenderedFile:
    path: str  # absolute path inside the image
    content: str
    mode: int = 0o644


def effective_sysctls(spec: Spec) -> tuple[tuple[str, str], ...]:
    merged = dict(BASELINE_SYSCTLS)
    if spec.userns.restrict_unprivileged:
        # Debian's switch: only root (and so the runtime's userns-remap) creates user
        # namespaces; max_user_namespaces would stop the runtime too.
        merged["kernel.unprivileged_userns_clone"] = "0"
    merged.update(spec.sysctl)
    return tuple(sorted(merged.items()))


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hardhost.builder", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # config files and shell scripts, not HTML
    )


def render_layer(spec: Spec) -> list[RenderedFile]:
    """Every file of the hardening layer, as pure data: what golden tests pin."""
    env = _environment()
    values = {
        "name": spec.name,
        "sysctls": effective_sysctls(spec),
        "host_key": f"{layout.STATE_MOUNT}/{layout.STATE_HOST_KEY}",
        "permit_root_login": spec.ssh.permit_root_login,
        "user": spec.access.user,
        "docker": has_docker(spec),
        "podman": has_podman(spec),
        "modules": INITRAMFS_MODULES,
        "cmdline_roothash": layout.CMDLINE_ROOTHASH,
        "cmdline_data": layout.CMDLINE_DATA,
        "cmdline_hash": layout.CMDLINE_HASH,
        "cmdline_state": layout.CMDLINE_STATE,
        "verity_name": layout.VERITY_NAME,
        "overlay_dir": layout.OVERLAY_DIR,
        "overlaid_dirs": layout.OVERLAID_DIRS,
        "state_mount": layout.STATE_MOUNT,
        "state_machine_id": layout.STATE_MACHINE_ID,
    }

    def render(template: str) -> str:
        return env.get_template(template).render(values)

    initramfs = INITRAMFS_CONFIG
    return [
        # systemd applies sysctl.d files in name order across /etc and /usr/lib, and
        # /usr/lib/sysctl.d/99-protect-links.conf would otherwise undo fs.protected_fifos.
        RenderedFile("/etc/sysctl.d/zz-hardhost.conf", render("sysctl.conf.j2")),
        RenderedFile("/etc/ssh/sshd_config.d/00-hardhost.conf", render("sshd.conf.j2")),
        RenderedFile("/etc/fstab", render("fstab.j2")),
        RenderedFile("/etc/systemd/network/80-hardhost-dhcp.network", render("network.j2")),
        RenderedFile("/etc/hostname", f"{spec.name}\n"),
        # pam_env reads it at every login (Debian's /etc/pam.d/sshd and login); minbase has
        # no locales package to write it, and without it each login logs an error. C.UTF-8
        # is built into glibc 2.35+, so no pruned locale data is needed.
        RenderedFile("/etc/default/locale", LOCALE),
        RenderedFile("/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {spec.name}\n"
                                   "::1 localhost ip6-localhost ip6-loopback\n"),
        RenderedFile(f"{initramfs}/conf.d/hardhost", render("initramfs/conf.j2")),
        RenderedFile(f"{initramfs}/modules", render("initramfs/modules.j2")),
        RenderedFile(f"{initramfs}/hooks/hardhost", render("initramfs/hook.j2"), 0o755),
        RenderedFile(f"{initramfs}/scripts/local-top/hardhost-verity",
                     render("initramfs/verity.j2"), 0o755),
        RenderedFile(f"{initramfs}/scripts/init-bottom/hardhost-overlay",
                     render("initramfs/overlay.j2"), 0o755),
        *runtime_files(spec),
        *boot_deadline_units(spec),
        *container_policy_files(spec),
    ]


def container_policy_files(spec: Spec) -> list[RenderedFile]:
    """podman's image trust policy, its registry settings and keys; none without
    `containers.allowed_registries`."""
    return [RenderedFile(f.path, f.content)
            for f in container_policy.policy_files(spec.containers, spec.source)]


def has_docker(spec: Spec) -> bool:
    return "docker.io" in spec.packages.include


def has_podman(spec: Spec) -> bool:
    # The spec refuses engine = "podman" without the podman package, or with docker.io.
    return spec.containers.engine is Engine.PODMAN


def subid_line(spec: Spec) -> str:
    ns = spec.userns
    return f"{ns.remap_user}:{ns.subid_start}:{ns.subid_count}"


def docker_daemon_config(spec: Spec) -> dict[str, object]:
    """dockerd's daemon.json: user-namespace remapping, the default seccomp profile, no new
    privileges, no inter-container traffic by default, and no userland proxy."""
    config: dict[str, object] = {
        "userns-remap": spec.userns.remap_user,
        "no-new-privileges": True,
        "icc": False,
        "userland-proxy": False,
    }
    if spec.seccomp.default_profile:
        config["seccomp-profile"] = security.SECCOMP_DEFAULT
    containers = spec.containers
    if containers.runtimes:
        # dockerd (20.10) runs a runtime of this table by its path; `runc`, its own, is
        # reserved there, which the spec's check keeps out.
        config["runtimes"] = {name: {"path": RUNTIMES[name]} for name in containers.runtimes}
    if containers.default_runtime:
        config["default-runtime"] = containers.default_runtime
    return config


def runtime_files(spec: Spec) -> list[RenderedFile]:
    """Container runtime configuration and user-namespace ranges."""
    files = [RenderedFile("/etc/subuid", subid_line(spec) + "\n"),
             RenderedFile("/etc/subgid", subid_line(spec) + "\n")]
    if has_docker(spec):
        files.append(RenderedFile("/etc/docker/daemon.json", json.dumps(
            docker_daemon_config(spec), indent=2, sort_keys=True) + "\n"))
    if has_podman(spec) and (spec.seccomp.default_profile or spec.containers.sets_runtimes):
        files.append(RenderedFile(PODMAN_CONF, podman_containers_conf(spec)))
    return files


# podman's containers.conf (containers.conf(5), containers/common 0.50): read after
# /usr/share/containers/containers.conf, whose values it overrides.
PODMAN_CONF = "/etc/containers/containers.conf"


def podman_containers_conf(spec: Spec) -> str:
    """Every container's seccomp profile is the image's default, as dockerd's is: stricter
    than containers-common's (it refuses user namespaces inside a container, for one). The
    spec's extra runtimes are registered, and its default runtime made podman's."""
    # JSON's strings are TOML's basic strings: the same quotes and escapes.
    tables = []
    if spec.seccomp.default_profile:
        tables.append(f"[containers]\nseccomp_profile = {json.dumps(security.SECCOMP_DEFAULT)}\n")
    containers = spec.containers
    if containers.default_runtime:
        tables.append(f"[engine]\nruntime = {json.dumps(containers.default_runtime)}\n")
    if containers.runtimes:
        # containers/common's built-in table looks for each runtime in several places and
        # takes the first that exists, /run/current-system/sw/bin (on a writable tmpfs)
        # among them; an entry here replaces that list with the binary the package installs
        # on the verified root, so a missing one fails instead of falling through.
        tables.append("[engine.runtimes]\n" + "".join(
            f"{name} = [{json.dumps(RUNTIMES[name])}]\n" for name in containers.runtimes))
    return "# Rendered by hardhost: podman's defaults for every container.\n" + "\n".join(tables)


def _inside(tree: Path, path: str) -> Path:
    return tree / path.lstrip("/")


def write_layer(tree: Path, files: list[RenderedFile]) -> None:
    for rendered in files:
        target = _inside(tree, rendered.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()  # never write through a link that points out of the tree
        target.write_text(rendered.content)
        target.chmod(rendered.mode)


def lock_passwords(shadow: Path) -> None:
    """Lock every account's password: keys are the only way in."""
    lines = []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and not fields[1].startswith("!"):
            fields[1] = "!" + fields[1]
        lines.append(":".join(fields))
    shadow.write_text("\n".join(lines) + "\n")


def _passwd_entry(tree: Path, user: str) -> tuple[int, int, str]:
    for line in (tree / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    raise BuildError(f"user {user!r} is missing from the image's /etc/passwd")


def install_authorized_keys(tree: Path, spec: Spec, epoch: int) -> None:
    user = spec.access.user
    if user != "root":
        # useradd dates the password change from SOURCE_DATE_EPOCH: reproducible shadow.
        run_in_tree(tree, ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash",
                           user], env={"SOURCE_DATE_EPOCH": str(epoch)})
    uid, gid, home = _passwd_entry(tree, user)
    ssh_dir = _inside(tree, home) / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text("".join(f"{line}\n" for line in spec.access.authorized_keys))
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, uid, gid)


def install_userns_user(tree: Path, spec: Spec, epoch: int) -> None:
    """The unprivileged user whose subordinate ids containers are remapped into."""
    user = spec.userns.remap_user
    if any(line.split(":")[0] == user for line in (tree / "etc/passwd").read_text().splitlines()):
        return
    run_in_tree(tree, ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                       "--shell", "/usr/sbin/nologin", user],
                env={"SOURCE_DATE_EPOCH": str(epoch)})


def remove_baked_host_keys(tree: Path) -> None:
    """Debian's postinst made host keys at build time; every instance must have its own."""
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


def file_digests(files: list[RenderedFile]) -> dict[str, str]:
    return {f.path: f"{f.mode:o}:{hashlib.sha256(f.content.encode()).hexdigest()}"
            for f in files}


def inputs(spec: Spec, epoch: int) -> dict[str, object]:
    """What the stage writes or runs, so its key changes exactly when its effect can."""
    found: dict[str, object] = {
        "version": 2,
        "files": file_digests(render_layer(spec)),
        "user": spec.access.user,
        "authorized_keys": list(spec.access.authorized_keys),
        "remap_user": spec.userns.remap_user,
        "docker": has_docker(spec),
        "enabled": ENABLED_UNITS,
        "masked": masked_units(spec),
        "generators": MASKED_GENERATORS,
        "os_release": os_release("", spec),
        "epoch": epoch,  # useradd dates accounts from it
    }
    if container_policy_files(spec):
        # Only then are the registries.conf drop-ins removed; other specs keep their keys.
        found["registries_conf_d"] = "emptied"
    return found


def run_stage(ctx: BuildContext, step: StepTiming) -> None:
    tree = ctx.tree
    files = render_layer(ctx.spec)
    if container_policy_files(ctx.spec):
        empty_registries_conf_d(tree)
    write_layer(tree, files)
    lock_passwords(tree / "etc/shadow")
    install_authorized_keys(tree, ctx.spec, ctx.source_date_epoch)
    remove_baked_host_keys(tree)
    if has_docker(ctx.spec):
        (tree / "var/lib/docker").mkdir(mode=0o710, exist_ok=True)
    if has_podman(ctx.spec):
        (tree / "var/lib/containers").mkdir(mode=0o700, exist_ok=True)
    install_userns_user(tree, ctx.spec, ctx.source_date_epoch)
    no_user_pam_environment(tree)
    (tree / "etc/machine-id").write_text("")
    release = tree / "usr/lib/os-release"
    release.write_text(os_release(release.read_text(), ctx.spec))
    # Where an update and the verifier mount the ESP; the root is read-only at run time.
    (tree / layout.ESP_MOUNT.lstrip("/")).mkdir(mode=0o700, exist_ok=True)
    run(["systemctl", f"--root={tree}", "enable", *ENABLED_UNITS])
    mask_units(tree, ctx.spec)
    generators = tree / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in MASKED_GENERATORS:
        (generators / name).unlink(missing_ok=True)
        (generators / name).symlink_to("/dev/null")
    step.note = f"{len(files)} files"


def empty_registries_conf_d(tree: Path) -> None:
    """Remove registries.conf's drop-ins (Debian's containers-common ships shortnames.conf):
    they are merged over the rendered registries.conf, and could bring back short names or
    search registries that no digest in the manifest would show."""
    folder = _inside(tree, container_policy.REGISTRIES_CONF_D)
    for path in sorted(folder.glob("*")) if folder.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            raise BuildError(f"{path}: a folder in registries.conf.d; the image's "
                             "registries.conf is rendered whole")
        path.unlink()


def no_user_pam_environment(tree: Path) -> None:
    """Drop pam_env's `user_readenv=1` from the PAM services: it reads ~/.pam_environment,
    which lets a user set variables in sessions that PAM modules after it see, is
    deprecated since Linux-PAM 1.5 and logs a warning at every login."""
    for path in sorted((tree / "etc/pam.d").glob("*")):
        text = path.read_text()
        lines = [re.sub(r"(pam_env\.so\b.*?)\s+user_readenv=1\b", r"\1", line)
                 if not line.lstrip().startswith("#") else line for line in text.splitlines()]
        changed = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
        if changed != text:
            path.write_text(changed)


# systemd-pcrphase 252 dlopen()s the TPM2 libraries (libtss2, from tpm2-tools' dependencies);
# an image without them cannot measure a boot phase, and its sysinit unit would fail at every
# boot with a TPM. Such an image masks it, and its PCR 11 is predicted without the phase.
TSS2_LIBRARY = "usr/lib/x86_64-linux-gnu/libtss2-esys.so.0"
PCRPHASE_SYSINIT = "systemd-pcrphase-sysinit.service"


def measures_phases(tree: Path) -> bool:
    return (tree / TSS2_LIBRARY).exists()


def mask_units(tree: Path, spec: Spec) -> None:
    extra = () if measures_phases(tree) else (PCRPHASE_SYSINIT,)
    run(["systemctl", f"--root={tree}", "mask", *masked_units(spec), *extra])
