"""Build container-host, boot it under qemu, and check it over SSH (paramiko)."""

from __future__ import annotations

import fnmatch
import io
import json
import tarfile
from pathlib import Path

import paramiko
import pytest

from builder.errors import TrustError
from builder.manifest import MANIFEST_NAME, read_verified
from builder.signing import load_trusted_keys
from builder.stages.harden import effective_sysctls
from profiles import apparmor
from profiles.apparmor import DEFAULT_NAME
from profiles.record import record
from tests.conftest import SigningKeys, make_keypair
from tests.e2e.conftest import (
    BOOT_TIMEOUT,
    BootedHost,
    ensure_answering,
    rerun_if_the_guest_stalls,
)
from verifier.evidence import Evidence, collect
from verifier.reset import boot_id, reboot
from verifier.transport import connect, offered_host_key, public_key_from_line

pytestmark = pytest.mark.e2e


def changed(ev: Evidence, name: str) -> tuple[str, ...]:
    """The names the evidence lists of overlay `name`'s upper layer (none without one)."""
    layer = ev.overlay_changes[name]
    return layer.names if layer is not None else ()


@pytest.fixture(autouse=True)
def _answering(booted: BootedHost) -> None:
    ensure_answering(booted.instance, booted.image.directory,
                     trust_key=booted.image.trust_key)


def evidence(host: BootedHost) -> Evidence:
    with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                 timeout=30) as session:
        return collect(session, timeout=60)


def shell(host: BootedHost, *argv: str) -> tuple[int, str, str]:
    with connect(host.target, known_hosts=host.known_hosts, identity=host.identity,
                 timeout=30) as session:
        result = session.run(list(argv), timeout=60)
    return result.exit_status, result.stdout.decode(), result.stderr.decode()


def test_root_is_read_only_erofs_on_verified_dm_verity(booted: BootedHost) -> None:
    ev = evidence(booted)
    root = ev.mount("/")
    assert root is not None
    assert root.fstype == "erofs"
    assert root.read_only
    assert root.source == "/dev/mapper/root"
    assert ev.verity["type"] == "VERITY"
    assert ev.verity["status"] == "verified"
    assert ev.verity["root hash"] == booted.image.record["root_hash"]
    assert ev.cmdline == booted.image.record["cmdline"]
    assert ev.kernel_release == booted.image.record["kernel_release"]


def test_root_refuses_writes(booted: BootedHost) -> None:
    status, _, err = shell(booted, "touch", "/usr/hardhost-write-test")
    assert status != 0
    assert "Read-only file system" in err


def test_etc_and_var_are_tmpfs_overlays(booted: BootedHost) -> None:
    ev = evidence(booted)
    for name in ("etc", "var"):
        mount = ev.mount(f"/{name}")
        assert mount is not None and mount.fstype == "overlay"
        assert not mount.read_only
        assert ev.overlay_changes[name] is not None
    assert "machine-id" in changed(ev, "etc")


def test_sysctls_have_the_values_the_spec_gives(booted: BootedHost) -> None:
    observed = evidence(booted).sysctls
    expected = dict(effective_sysctls(booted.image.spec))
    assert expected["net.ipv4.ip_forward"] == "1"
    wrong = {key: (value, observed.get(key)) for key, value in expected.items()
             if observed.get(key) != value}
    assert wrong == {}


def test_apparmor_is_enabled_and_enforcing(booted: BootedHost) -> None:
    ev = evidence(booted)
    assert ev.apparmor_enabled
    assert "apparmor=1" in ev.cmdline.split()
    assert ev.apparmor_profiles, "no AppArmor profile is loaded"
    assert ev.apparmor_profiles.get("lsb_release") == "enforce"
    assert ev.apparmor_profiles.get("docker-default") == "enforce"
    assert {mode for mode in ev.apparmor_profiles.values()} == {"enforce"}


def test_sshd_refuses_passwords(booted: BootedHost) -> None:
    transport = paramiko.Transport(("127.0.0.1", booted.target.port))
    try:
        transport.start_client(timeout=30)
        with pytest.raises(paramiko.BadAuthenticationType) as info:
            transport.auth_password("root", "root")
        assert info.value.allowed_types == ["publickey"]
    finally:
        transport.close()
    assert evidence(booted).sshd["passwordauthentication"] == "no"


def test_host_key_is_the_provisioned_one(booted: BootedHost, tmp_path: Path) -> None:
    provisioned = public_key_from_line(booted.instance.host_public_key.read_text())
    offered = offered_host_key("127.0.0.1", booted.target.port, timeout=30)
    assert offered.asbytes() == provisioned.asbytes()
    # And a verifier holding any other key refuses the host.
    other = make_keypair(tmp_path, "other")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{booted.target.port} {other.public_line}\n")
    with pytest.raises(TrustError), connect(booted.target, known_hosts=known,
                                            identity=booted.identity, timeout=30):
        pass


def test_docker_runs_with_userns_remap_and_the_default_seccomp_profile(
        booted: BootedHost) -> None:
    status, out, err = shell(booted, "docker", "info", "--format", "{{json .SecurityOptions}}")
    assert status == 0, err
    options = json.loads(out)
    assert "name=userns" in options
    assert "name=apparmor" in options
    assert any(o.startswith("name=seccomp,profile=") and o != "name=seccomp,profile=builtin"
               for o in options), options
    status, out, _ = shell(booted, "cat", "/etc/subuid", "/etc/subgid")
    assert out == "dockremap:100000:65536\n" * 2
    status, out, _ = shell(booted, "docker", "info", "--format", "{{.DockerRootDir}}")
    assert out.strip() == "/var/lib/docker/100000.100000"


def test_unprivileged_users_cannot_make_user_namespaces(booted: BootedHost) -> None:
    status, _, err = shell(booted, "setpriv", "--reuid=65534", "--regid=65534",
                           "--clear-groups", "unshare", "--user", "true")
    assert status != 0
    assert "Operation not permitted" in err


def test_passwords_are_locked(booted: BootedHost) -> None:
    status, out, _ = shell(booted, "cut", "-d:", "-f1,2", "/etc/shadow")
    assert status == 0
    unlocked = [line for line in out.splitlines() if not line.split(":")[1].startswith("!")]
    assert unlocked == []


def test_booted_host_matches_the_signed_manifest(booted: BootedHost,
                                                 signing_keys: SigningKeys) -> None:
    """What the builder predicted is what the booted host shows."""
    manifest, _ = read_verified(booted.image.directory / MANIFEST_NAME,
                                load_trusted_keys(signing_keys.public))
    ev = evidence(booted)
    assert ev.verity["root hash"] == manifest.root_hash
    assert ev.verity["salt"] == manifest.verity_salt
    assert ev.cmdline == manifest.cmdline
    assert ev.kernel_release == manifest.kernel_release
    assert {k: ev.sysctls.get(k) for k in manifest.sysctls} == dict(manifest.sysctls)
    # Loaded at boot: exactly these; loaded by services (dockerd) once they run: these modes.
    runtime = dict(manifest.apparmor_runtime_profiles)
    assert {n: m for n, m in ev.apparmor_profiles.items() if n not in runtime} == dict(
        manifest.apparmor_profiles)
    assert all(runtime[n] == m for n, m in ev.apparmor_profiles.items() if n in runtime)
    assert {k: ev.sshd.get(k) for k in manifest.sshd} == dict(manifest.sshd)
    for path, digest in manifest.seccomp_profiles.items():
        status, out, _ = shell(booted, "sha256sum", path)
        assert status == 0 and out.split()[0] == digest
    status, out, _ = shell(booted, "cat", "/etc/subuid")
    assert out.strip() == manifest.userns["subuid"]
    unexpected = [path for path in changed(ev, "etc")
                  if not any(fnmatch.fnmatchcase(path, pattern)
                             for pattern in manifest.mutable_paths["etc"])]
    assert unexpected == []


def test_container_default_profile_is_enforced(booted: BootedHost) -> None:
    assert evidence(booted).apparmor_profiles[DEFAULT_NAME] == "enforce"
    status, out, _ = shell(booted, "aa-exec", "-p", DEFAULT_NAME, "--", "cat", "/etc/hostname")
    assert status == 0 and out.strip() == "container-host"
    status, _, err = shell(booted, "aa-exec", "-p", DEFAULT_NAME, "--", "sh", "-c",
                           "echo 1 > /proc/sys/kernel/sysrq")
    assert status != 0 and "Permission denied" in err


def test_generated_profile_confines_a_recorded_workload(booted: BootedHost,
                                                        tmp_path: Path) -> None:
    """Record on this machine, load the generated profile on the booted host (Debian 12 on
    both, so the recorded paths exist there), and run the workload confined."""
    trace, status = record(["/usr/bin/cat", "/etc/hostname"])
    assert status == 0
    profile = apparmor.generate(trace, "hardhost-e2e-cat")
    with connect(booted.target, known_hosts=booted.known_hosts, identity=booted.identity,
                 timeout=30) as session:
        session.run(["tee", "/tmp/hardhost-e2e-cat"], stdin=profile.encode())
        loaded = session.run(["apparmor_parser", "--replace", "/tmp/hardhost-e2e-cat"])
        assert loaded.exit_status == 0, loaded.stderr
        allowed = session.run(["aa-exec", "-p", "hardhost-e2e-cat", "--", "/usr/bin/cat",
                               "/etc/hostname"])
        # /etc/os-release would not do: AppArmor's base abstraction lets everyone read it.
        denied = session.run(["aa-exec", "-p", "hardhost-e2e-cat", "--", "/usr/bin/cat",
                              "/etc/shadow"])
        modes = collect(session, timeout=60).apparmor_profiles
    assert modes["hardhost-e2e-cat"] == "enforce"
    assert allowed.exit_status == 0 and allowed.stdout == b"container-host\n"
    assert denied.exit_status != 0 and b"Permission denied" in denied.stderr


@rerun_if_the_guest_stalls
def test_reboot_resets_etc_and_keeps_the_host_key(booted: BootedHost) -> None:
    """Runs last in this module: it reboots the host."""
    marker = "/etc/hardhost-drift-test"
    status, _, _ = shell(booted, "sh", "-c", f"echo drift > {marker}")
    assert status == 0
    before = evidence(booted)
    assert "hardhost-drift-test" in changed(before, "etc")
    new_boot = reboot(booted.target, known_hosts=booted.known_hosts, identity=booted.identity,
                      timeout=BOOT_TIMEOUT)
    assert new_boot != before.boot_id
    # The strict known_hosts check passing is the proof that the host key survived.
    after = evidence(booted)
    assert after.boot_id == new_boot
    assert "hardhost-drift-test" not in changed(after, "etc")
    status, _, err = shell(booted, "cat", marker)
    assert status != 0 and "No such file" in err
    assert boot_id(booted.target, known_hosts=booted.known_hosts, identity=booted.identity,
                   timeout=30) == new_boot


def _busybox_image() -> bytes:
    """A one-binary container image, made here: the guest has no registry to pull from."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.skip("needs busybox-static on the build host (make deps installs it)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
    return buffer.getvalue()


def test_containers_run_on_the_pruned_kernel(booted: BootedHost) -> None:
    """Only the declared modules are left, and Docker's bridge, veth, netfilter and vxlan
    networking still work with them."""
    with connect(booted.target, known_hosts=booted.known_hosts, identity=booted.identity,
                 timeout=30) as session:
        modules = session.run(["sh", "-c", 'find /usr/lib/modules/"$(uname -r)" -name "*.ko"'
                               ' | wc -l'], timeout=60)
        imported = session.run(["docker", "import", "-", "hardhost-e2e/busybox"],
                               stdin=_busybox_image(), timeout=120)
        assert imported.exit_status == 0, imported.stderr.decode()
        ran = session.run(["docker", "run", "--rm", "hardhost-e2e/busybox", "/bin/busybox",
                           "ip", "-4", "-o", "addr", "show", "eth0"], timeout=120)
        vxlan = session.run(["ip", "link", "add", "vx-e2e", "type", "vxlan", "id", "42",
                             "dstport", "4789"], timeout=60)
        session.run(["ip", "link", "delete", "vx-e2e"], timeout=60)
        loaded = session.run(["cat", "/proc/modules"], timeout=60).stdout.decode()
    assert 100 < int(modules.stdout) < 600, "modules were not pruned to the declared set"
    assert ran.exit_status == 0, ran.stderr.decode()
    assert " inet 172.17." in ran.stdout.decode()  # a veth on the docker0 bridge
    assert vxlan.exit_status == 0, vxlan.stderr.decode()
    names = {line.split()[0] for line in loaded.splitlines()}
    assert {"veth", "bridge", "vxlan", "overlay"} <= names
    assert names & {"nf_tables", "ip_tables"}  # dockerd's NAT and isolation rules
