"""podman under the policy a podman host is built with, enforced for real on loopback.

The host's /etc/containers (policy.json, registries.conf, registries.d, the keys) is what
`hardhost.builder.container_policy` renders for a spec, bind-mounted over /etc/containers in
a private mount namespace, so podman reads it from its default paths as the booted image's
podman does, with no flag or variable pointing at it. Its containers.conf (the seccomp
profile) is given with the settings this machine needs to run containers at all. Images
come from Debian's docker-registry on 127.0.0.1 and are built offline (buildah from scratch
with busybox-static); they are signed with `hardhost image sign` (skopeo) by keys gpg
makes. Every refusal is checked by the reason podman gives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import container_policy
from hardhost.builder.spec import load_spec
from hardhost.builder.stages import harden, security
from hardhost.cli.main import main
from hardhost.profiles import default as seccomp_defaults
from tests.support.gpg import GpgKey, make_key, stop_agent
from tests.support.registry import (
    BUSYBOX,
    OPEN_POLICY,
    LoopbackRegistry,
    build_images,
    skopeo,
    start_registry,
)
from tests.support.tools import skip_module_unless_root_with

pytestmark = pytest.mark.e2e  # root, a mount namespace and loopback daemons; boots nothing

skip_module_unless_root_with(
    ("podman", "buildah", "skopeo", "docker-registry", "gpg", "runc", "unshare"),
    "podman skopeo buildah docker-registry gnupg busybox-static runc", (BUSYBOX,))

# Not trust settings: how podman runs on this machine, merged into the image's rendered
# containers.conf. Its root lacks CAP_SYS_RESOURCE, so the default ulimits cannot be set;
# crun 1.8 refuses the hybrid cgroup layout here ("cgroups in hybrid mode not supported"),
# runc runs; there is no systemd for cgroups or the journal. podman run as root reads
# CONTAINERS_CONF alone when it is set, and no $HOME/.config/containers/containers.conf.
MACHINE_CONTAINERS = "default_ulimits = []\n"
MACHINE_ENGINE = """[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def machine_containers_conf(rendered: str) -> str:
    """The image's containers.conf as this machine can run it: its seccomp profile read from
    the file the build installs from, and the settings above added."""
    text = rendered.replace(security.SECCOMP_DEFAULT, str(seccomp_defaults.OUTPUT))
    assert "[containers]\n" in text and "[engine]" not in text
    return text.replace("[containers]\n", "[containers]\n" + MACHINE_CONTAINERS) + MACHINE_ENGINE


@dataclass
class World:
    base: Path
    allowed: LoopbackRegistry
    outside: LoopbackRegistry
    ci: GpgKey
    intruder: GpgKey
    etc: Path  # the rendered /etc/containers
    layout: Path  # an OCI layout holding the images `one` and `two`
    sigs: Path  # the lookaside folder

    def podman(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """podman as the host runs it, its /etc/containers the rendered one."""
        # $0 is the folder to mount; the rest is podman's argv, passed on as words.
        script = 'mount --bind "$0" /etc/containers && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.etc), "podman", "--root", str(self.base / "storage"),
                "--runroot", str(self.base / "run"), "--storage-driver", "vfs", *args]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.base / "home"),
               "CONTAINERS_CONF": str(self.base / "containers.conf")}
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180,
                                stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def push(self, image: str, reference: str) -> str:
        """Copy image `image` of the layout to `reference`, unsigned; return its digest."""
        digest = self.base / "pushed.digest"
        skopeo(self.base, "copy", "--dest-tls-verify=false", "--digestfile", str(digest),
               f"oci:{self.layout}:{image}", f"docker://{reference}")
        return digest.read_text().strip()

    def sign(self, reference: str, key: GpgKey, *extra: str) -> None:
        code = main(["image", "sign", reference, "--key", key.fingerprint, "--lookaside",
                     str(self.sigs), "--gnupg-home", str(key.home), "--no-tls-verify",
                     *extra])
        assert code == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("podman-policy")
    (base / "open.json").write_text(json.dumps(OPEN_POLICY))
    (base / "home").mkdir()
    ci = make_key(base / "gnupg-ci", "ci", base / "spec" / "keys")
    intruder = make_key(base / "gnupg-intruder", "intruder", base / "intruder")
    allowed = start_registry(base / "allowed")
    outside = start_registry(base / "outside")
    try:
        sigs = base / "sigs"
        sigs.mkdir()
        # The spec a podman host is built from, and its policy rendered as the build does.
        spec_path = base / "spec" / "host.toml"
        spec_path.write_text(
            'name = "podman-test"\n[packages]\ninclude = ["podman", "crun"]\n'
            "[ssh]\npermit_root_login = true\n[containers]\nengine = \"podman\"\n"
            f"allowed_registries = [{json.dumps(allowed.address)}]\n"
            'signing_keys = ["keys/ci.gpg"]\n'
            f"lookaside = {json.dumps(sigs.as_uri())}\n")
        spec = load_spec(spec_path)
        root = base / "root"
        rendered = {f.path: f.content for f in harden.render_layer(spec)
                    if f.path.startswith("/etc/containers/")}
        assert set(rendered) == {f.path for f in container_policy.policy_files(
            spec.containers, spec.source)} | {harden.PODMAN_CONF}
        for path, content in rendered.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        (base / "containers.conf").write_text(
            machine_containers_conf(rendered[harden.PODMAN_CONF]))
        layout = base / "oci"
        build_images(base, layout)
        world = World(base, allowed, outside, ci, intruder, root / "etc/containers", layout,
                      sigs)
        yield world
    finally:
        allowed.stop()
        outside.stop()
        stop_agent(ci.home)
        stop_agent(intruder.home)


def pull(world: World, reference: str) -> subprocess.CompletedProcess[str]:
    return world.podman("pull", "--tls-verify=false", reference)


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Source image rejected" in result.stderr, result.stderr
    assert reason in result.stderr, result.stderr


def test_a_signed_image_from_an_allowed_registry_pulls_and_runs(world: World) -> None:
    reference = f"{world.allowed.address}/team/app:1"
    world.push("one", reference)
    world.sign(reference, world.ci)
    # skopeo wrote the signature under the registry's own folder, where the host reads it.
    assert list((world.sigs / world.allowed.address / "team").glob("app@sha256=*/signature-1"))
    pull(world, reference)
    result = world.podman("run", "--rm", "--network", "none", reference,
                          "/bin/busybox", "echo", "ok")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_an_unsigned_image_is_refused(world: World) -> None:
    reference = f"{world.allowed.address}/team/unsigned:1"
    world.push("one", reference)
    refused(pull(world, reference), "A signature was required, but no signature exists")


def test_an_image_signed_by_another_key_is_refused(world: World) -> None:
    reference = f"{world.allowed.address}/team/intruder:1"
    world.push("one", reference)
    world.sign(reference, world.intruder)
    refused(pull(world, reference), "Invalid GPG signature")


def test_an_image_from_a_registry_outside_the_list_is_refused(world: World) -> None:
    reference = f"{world.outside.address}/team/app:1"
    world.push("one", reference)
    world.sign(reference, world.ci)  # signed by the right key: the registry is still wrong
    refused(pull(world, reference), f"Running image docker://{reference} is rejected by policy")


def test_a_tag_moved_to_another_digest_is_refused(world: World) -> None:
    allowed = world.allowed.address
    reference = f"{allowed}/team/moved:1"
    world.push("one", reference)
    world.sign(reference, world.ci)
    world.push("two", reference)  # the tag now names another image, which nobody signed
    refused(pull(world, reference), "A signature was required, but no signature exists")
    # The moved-to image signed under another name: its signature, copied beside the
    # moved tag's digest, names that other reference and is refused too.
    world.push("two", f"{allowed}/team/other:1")
    world.sign(f"{allowed}/team/other:1", world.ci)
    (signature,) = (world.sigs / allowed / "team").glob("other@sha256=*/signature-1")
    stolen = world.sigs / allowed / "team" / signature.parent.name.replace("other@", "moved@")
    stolen.mkdir()
    shutil.copy(signature, stolen / "signature-1")
    refused(pull(world, reference), "is not accepted")


def test_podman_load_and_import_are_refused(world: World, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    skopeo(world.base, "copy", f"oci:{world.layout}:one", f"docker-archive:{archive}:x/y:1")
    refused(world.podman("load", "-i", str(archive)), "is rejected by policy")
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
    result = world.podman("import", str(rootfs), "x/imported:1")
    refused(result, "is rejected by policy")


def test_short_names_resolve_nowhere(world: World) -> None:
    # A name no local image has: podman 4.3 resolves a short name that matches a stored
    # image to that image's registry first (and pulls it from there under the policy).
    result = pull(world, "team/nowhere:1")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "short-name" in result.stderr and "did not resolve" in result.stderr


def test_a_users_own_policy_would_override_the_hosts(world: World, tmp_path: Path) -> None:
    """Why the image keeps root's home on the verified root: podman reads
    $HOME/.config/containers/policy.json before /etc/containers/policy.json."""
    reference = f"{world.allowed.address}/team/unsigned:1"
    world.push("one", reference)
    override = world.base / "home" / ".config" / "containers"
    override.mkdir(parents=True)
    try:
        (override / "policy.json").write_text(json.dumps(OPEN_POLICY))
        result = pull(world, reference)
        assert result.returncode == 0, result.stderr
    finally:
        shutil.rmtree(world.base / "home" / ".config")
    world.podman("rmi", "--force", reference)
    refused(pull(world, reference), "A signature was required")


def test_an_image_built_on_the_host_runs_whatever_the_policy(world: World,
                                                             tmp_path: Path) -> None:
    """The documented limit: the policy gates what enters storage from outside. A build
    from scratch pulls nothing, so what root builds on the host runs unchecked."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(BUSYBOX, context / "busybox")
    (context / "Containerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    build = world.podman("build", "--network", "none", "-t", "localhost/built:1",
                         str(context))
    assert build.returncode == 0, build.stderr
    result = world.podman("run", "--rm", "--network", "none", "localhost/built:1",
                          "/bin/busybox", "echo", "built")
    assert result.stdout == "built\n", result.stderr


def test_containers_run_under_the_images_seccomp_profile(world: World) -> None:
    reference = f"{world.allowed.address}/team/seccomp:1"
    world.push("one", reference)
    world.sign(reference, world.ci)
    pull(world, reference)
    inner = ["/bin/busybox", "unshare", "-U", "/bin/busybox", "echo", "inner"]
    result = world.podman("run", "--rm", "--network", "none", reference, *inner)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr, result
    # containers-common's own profile lets the same call through: the image's is in force.
    result = world.podman("run", "--rm", "--network", "none", "--security-opt",
                          "seccomp=/usr/share/containers/seccomp.json", reference, *inner)
    assert result.stdout == "inner\n", result.stderr


def test_sign_with_a_digest_signs_that_image_not_the_tags(world: World) -> None:
    reference = f"{world.allowed.address}/team/pinned:1"
    reviewed = world.push("one", reference)
    world.push("two", reference)  # the tag moved before the signer got to it
    world.sign(reference, world.ci, "--digest", reviewed)
    # The copy tagged the reviewed image again, and only its digest carries a signature.
    (signed,) = (world.sigs / world.allowed.address / "team").glob("pinned@*")
    assert signed.name == f"pinned@{reviewed.replace(':', '=')}"
    pull(world, reference)
    label = world.podman("image", "inspect", "--format",
                         '{{index .Labels "hardhost.test"}}', reference, check=True)
    assert label.stdout.strip() == "one"
