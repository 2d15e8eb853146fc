"""The evidence script's `workloads` section against real podman containers on this machine.

The script runs unchanged under dash; its plain `podman` commands find this test's storage
through CONTAINERS_STORAGE_CONF and run as this machine can run them through CONTAINERS_CONF
(runc, cgroupfs, events in a file: see tests/test_container_policy_enforcement.py). Two
containers run busybox: one from an image imported on the host (`localhost/...`), one from
an image pulled from Debian's docker-registry on 127.0.0.1. What the parser makes of the
section is checked against what podman itself says, and then compared with a manifest.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.verifier.comparison import examine
from hardhost.verifier.evidence import (
    PodmanState,
    parse,
    script_with_nonce,
    split_sections,
)
from tests.support.manifests import sample_manifest
from tests.support.registry import BUSYBOX, OPEN_POLICY, LoopbackRegistry, start_registry
from tests.support.tools import skip_module_unless_root_with

pytestmark = pytest.mark.e2e  # root, podman containers and a loopback registry; boots nothing

skip_module_unless_root_with(("podman", "docker-registry", "runc", "dash"),
                             "podman docker-registry busybox-static runc dash", (BUSYBOX,))

NONCE = "0123456789abcdef0123456789abcdef"


@dataclass
class Podman:
    base: Path
    registry: LoopbackRegistry

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.base / "home"),
                "CONTAINERS_CONF": str(self.base / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf")}

    def __call__(self, *args: str) -> str:
        result = subprocess.run(["podman", *args], env=self.env(), capture_output=True,
                                text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def policy(self) -> str:
        """The machine's /etc/containers/policy.json is not this test's: an open one."""
        return f"--signature-policy={self.base / 'open.json'}"


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    base = tmp_path_factory.mktemp("podman-workloads")
    (base / "home").mkdir()
    (base / "open.json").write_text(json.dumps(OPEN_POLICY))
    (base / "containers.conf").write_text(
        "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n"
        f"cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
        f"tmp_dir = {json.dumps(str(base / 'libpod'))}\n")
    (base / "storage.conf").write_text(
        f"[storage]\ndriver = \"vfs\"\ngraphroot = {json.dumps(str(base / 'storage'))}\n"
        f"runroot = {json.dumps(str(base / 'run'))}\n")
    rootfs = base / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
    registry = start_registry(base / "registry")
    podman = Podman(base, registry)
    try:
        yield podman
    finally:
        # Each container's shm is a mount on this machine until the container is removed.
        subprocess.run(["podman", "rm", "--force", "--all", "--time", "0"], env=podman.env(),
                       capture_output=True, timeout=180, stdin=subprocess.DEVNULL)
        registry.stop()


def import_image(podman: Podman, name: str) -> str:
    """busybox alone, imported on the host as `name`; the label makes each image its own."""
    return podman("import", podman.policy(), "--change", f"LABEL hardhost.test={name}",
                  str(podman.base / "rootfs.tar"), name)


def run_script(podman: Podman) -> bytes:
    """What the whole evidence script prints under dash, as a host runs it."""
    result = subprocess.run(["dash", "-s"], input=script_with_nonce(NONCE).encode(),
                            env=podman.env(), capture_output=True, timeout=120, check=False)
    return result.stdout


def test_the_workloads_section_lists_real_containers(podman: Podman) -> None:
    local_id = import_image(podman, "localhost/hh-local:1").removeprefix("sha256:")
    import_image(podman, "localhost/hh-upload:1")
    pulled = f"{podman.registry.address}/team/app:1"
    digest_file = podman.base / "pushed.digest"
    podman("push", podman.policy(), "--tls-verify=false", "--digestfile", str(digest_file),
           "localhost/hh-upload:1", f"docker://{pulled}")
    podman("rmi", "localhost/hh-upload:1")
    podman("pull", podman.policy(), "--tls-verify=false", pulled)
    pushed = digest_file.read_text().strip()
    for name, image in (("hh-local", "localhost/hh-local:1"), ("hh-pulled", pulled)):
        podman("run", "--detach", "--name", name, "--network", "none", image,
               "/bin/busybox", "sleep", "600")
    podman("create", "--name", "hh-stopped", "localhost/hh-local:1", "/bin/busybox", "true")

    raw = run_script(podman)

    # One line per container and per image, each a JSON object, after the count.
    lines = split_sections(raw, "h", NONCE)["workloads"].splitlines()
    assert lines[0] == "count 2"  # running ones only: the created container is not counted
    assert [line.split(" ", 1)[0] for line in lines[1:]] == ["container"] * 2 + ["image"] * 2
    assert all(json.loads(line.split(" ", 1)[1]) for line in lines[1:])
    ev = parse(raw, "h", nonce=NONCE)
    assert ev.podman is PodmanState.ANSWERED and ev.workload_count == 2
    local, remote = ev.workloads
    assert (local.name, local.image_ref, local.image_id, local.runtime) == (
        "hh-local", "localhost/hh-local:1", local_id, "runc")
    # podman import names the image's own manifest digest under localhost/: no registry's.
    assert local.repo_digests and all(d.startswith("localhost/hh-local@sha256:")
                                      for d in local.repo_digests)
    assert (remote.name, remote.image_ref, remote.runtime) == ("hh-pulled", pulled, "runc")
    assert remote.image_id == podman("container", "inspect", "--format", "{{.Image}}",
                                     "hh-pulled")
    assert f"{podman.registry.address}/team/app@{pushed}" in remote.repo_digests
    assert set(remote.repo_digests) == set(json.loads(podman(
        "image", "inspect", "--format", "{{json .RepoDigests}}", remote.image_id)))

    manifest = dataclasses.replace(sample_manifest(), workloads={
        "engine": ("podman",), "registries": (podman.registry.address,),
        "runtimes": ("crun",)})
    found = {f.id for f in examine(manifest, ev).findings
             if f.id.startswith("workload") and f.counts()}
    assert found == {"workload.unverified.hh-local", "workload.runtime.hh-local",
                     "workload.runtime.hh-pulled"}
    elsewhere = dataclasses.replace(manifest, workloads={
        "engine": ("podman",), "registries": ("registry.example",), "runtimes": ("runc",)})
    found = {f.id for f in examine(elsewhere, ev).findings
             if f.id.startswith("workload") and f.counts()}
    assert found == {"workload.unverified.hh-local", "workload.registry.hh-pulled"}
