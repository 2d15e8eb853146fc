"""Workload trust on a booted podman host: the shipped podman-host spec, pointed at two
registries on this machine's loopback, which the guest reaches through qemu's user network
as 10.0.2.2. Images are made offline (buildah, busybox-static), pushed unsigned, and signed
with `hardhost image sign` (skopeo) by keys gpg makes; the signatures are served over HTTP as
the spec's lookaside. Everything the engine refuses is refused by podman in the guest, with
its own reason; everything the attestation reports is reported by `hardhost attest` over SSH.

The spec makes gVisor's runsc the default runtime, and installs a seccomp profile generated
from a recording of the workload made on this machine. Tests that leave drift behind (a
changed policy) come last: the module's guest is its own.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hardhost.builder.build import build
from hardhost.builder.spec import load_spec, with_authorized_keys
from hardhost.profiles import seccomp
from hardhost.profiles.record import record
from hardhost.verifier.transport import connect
from tests.support.gpg import GpgKey, make_key, stop_agent
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES, REPO
from tests.support.registry import (
    BUSYBOX,
    OPEN_POLICY,
    LoopbackRegistry,
    build_images,
    serve_folder,
    skopeo,
    start_registry,
)
from tests.support.vms import BootedHost, BuiltImage, attest_json, boot, ensure_answering

pytestmark = pytest.mark.e2e

TOOLS = ("buildah", "skopeo", "docker-registry", "gpg", "strace")
if any(shutil.which(tool) is None for tool in TOOLS) or not BUSYBOX.exists():
    pytest.skip(f"needs busybox-static and {', '.join(TOOLS)} (make deps installs them)",
                allow_module_level=True)

GUEST_GATEWAY = "10.0.2.2"  # qemu user networking: this machine's loopback, seen by the guest
# The recorded workload, and where the build installs its generated seccomp profile.
WORKLOAD = "echo recorded; /bin/busybox ls / > /dev/null"
PROFILE = "busybox-echo"
PROFILE_PATH = f"/usr/lib/hardhost/seccomp/{PROFILE}.json"  # the build drops ".seccomp"


@dataclass
class Guest:
    host: BootedHost
    base: Path
    allowed: LoopbackRegistry
    outside: LoopbackRegistry
    ci: GpgKey
    intruder: GpgKey
    layout: Path  # OCI layout holding the images `one` and `two`
    sigs: Path  # the lookaside folder the guest reads over HTTP

    def name(self, registry: LoopbackRegistry, path: str) -> str:
        """`path` in `registry`, as the guest names it."""
        return f"{GUEST_GATEWAY}:{registry.address.rpartition(':')[2]}/{path}"

    def push(self, image: str, registry: LoopbackRegistry, path: str) -> str:
        """Push image `image` of the layout, unsigned; its name in the guest."""
        skopeo(self.base, "copy", "--dest-tls-verify=false", f"oci:{self.layout}:{image}",
               f"docker://{registry.address}/{path}")
        return self.name(registry, path)

    def sign(self, registry: LoopbackRegistry, path: str, key: GpgKey) -> None:
        """Sign what `path` names now, for hosts that pull it by its guest name."""
        result = subprocess.run(
            [sys.executable, "-m", "hardhost", "image", "sign", f"{registry.address}/{path}",
             "--identity", self.name(registry, path), "--key", key.fingerprint,
             "--lookaside", str(self.sigs), "--gnupg-home", str(key.home), "--no-tls-verify"],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """`script` (fixed test text, no host data) as root in the guest."""
        with connect(self.host.target, known_hosts=self.host.known_hosts,
                     identity=self.host.identity, timeout=60) as session:
            result = session.run(["sh", "-c", script], timeout=300)
        return subprocess.CompletedProcess(script, result.exit_status,
                                           result.stdout.decode(errors="replace"),
                                           result.stderr.decode(errors="replace"))

    def ok(self, script: str) -> str:
        result = self.run(script)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def attest(self, keys: SigningKeys) -> tuple[int, dict[str, Any]]:
        return attest_json(self.host, keys.public, timeout=120)


def findings(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {f["id"]: f for f in data["findings"] if f["severity"] != "info"}


def records(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {f["id"]: f for f in data["findings"] if f["severity"] == "info"}


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"images/podman-host.toml no longer has {old!r}"
    return text.replace(old, new)


def write_spec(directory: Path, allowed: LoopbackRegistry, lookaside_port: int) -> Path:
    """images/podman-host.toml with this test's registry, key, lookaside and profile, and
    runsc as the default runtime."""
    port = allowed.address.rpartition(":")[2]
    text = (IMAGES / "podman-host.toml").read_text()
    text = replaced(text, 'name = "podman-host"', 'name = "podman-e2e"')
    text = replaced(text, '["registry.example:5000"]', f'["{GUEST_GATEWAY}:{port}"]')
    text = replaced(text, '["keys/example-ci.gpg"]', '["keys/ci.gpg"]')
    text = replaced(text, '"https://registry.example/signatures"',
                    f'"http://{GUEST_GATEWAY}:{lookaside_port}"')
    text = replaced(text, 'runtimes = ["runsc"]\n',
                    'runtimes = ["runsc"]\ndefault_runtime = "runsc"\n')
    text += f'\n[seccomp]\nprofiles = ["{PROFILE}.seccomp.json"]\n'
    path = directory / "podman-e2e.toml"
    path.write_text(text)
    return path


def record_profile(directory: Path) -> None:
    """The workload recorded on this machine (the same busybox-static the image holds), and
    its generated seccomp profile."""
    trace, status = record([str(BUSYBOX), "sh", "-c", WORKLOAD], timeout=60)
    assert status == 0
    (directory / f"{PROFILE}.seccomp.json").write_text(
        seccomp.dumps(seccomp.generate(trace, PROFILE)))


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, client_key: KeyPair,
          signing_keys: SigningKeys) -> Iterator[Guest]:
    base = tmp_path_factory.mktemp("workloads")
    (base / "open.json").write_text(json.dumps(OPEN_POLICY))
    spec_dir = base / "spec"
    ci = make_key(base / "gnupg-ci", "ci", spec_dir / "keys")
    intruder = make_key(base / "gnupg-intruder", "intruder", base / "intruder")
    sigs = base / "sigs"
    sigs.mkdir()
    allowed = start_registry(base / "allowed")
    outside = start_registry(base / "outside")
    try:
        with serve_folder(sigs) as lookaside_port:
            record_profile(spec_dir)
            spec = with_authorized_keys(load_spec(write_spec(spec_dir, allowed, lookaside_port)),
                                        (client_key.public_line,), "test")
            out = base / "images"
            out.mkdir()
            image = BuiltImage(spec, build(spec, out, key=signing_keys.key),
                               signing_keys.public)
            build_images(base, base / "oci")
            with contextlib.contextmanager(boot)(image, "e2e-workloads",
                                                 client_key.private) as host:
                yield Guest(host, base, allowed, outside, ci, intruder, base / "oci", sigs)
    finally:
        allowed.stop()
        outside.stop()
        stop_agent(ci.home)
        stop_agent(intruder.home)


@pytest.fixture(autouse=True)
def _answering(guest: Guest) -> None:
    ensure_answering(guest.host.instance, guest.host.image.directory,
                     trust_key=guest.host.image.trust_key)


@pytest.fixture(scope="module")
def app(guest: Guest) -> str:
    """A signed image from the allowed registry, pulled into the guest: its reference."""
    reference = guest.push("one", guest.allowed, "team/app:1")
    guest.sign(guest.allowed, "team/app:1", guest.ci)
    result = pull(guest, reference)
    assert result.returncode == 0, result.stderr
    return reference


def pull(guest: Guest, reference: str) -> subprocess.CompletedProcess[str]:
    return guest.run(f"podman pull --tls-verify=false {reference}")


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0, result.stdout
    assert reason in result.stderr, result.stderr


def test_a_signed_image_runs_under_the_default_runtime_and_attests(
        guest: Guest, app: str, signing_keys: SigningKeys) -> None:
    reference = app
    # No --runtime: the spec's default, gVisor, whose kernel introduces itself.
    assert "Starting gVisor" in guest.ok(f"podman run --rm {reference} /bin/busybox dmesg")
    guest.ok(f"podman run -d --name signed {reference} /bin/busybox sleep 3600")
    code, data = guest.attest(signing_keys)
    assert (code, data["status"]) == (0, "pass"), findings(data)
    facts = records(data)["container.signed"]["observed"]
    assert "runtime runsc" in facts and reference in facts
    assert f"{guest.name(guest.allowed, 'team/app')}@sha256:" in facts


def test_the_engine_refuses_every_image_the_policy_does_not_accept(guest: Guest) -> None:
    unsigned = guest.push("one", guest.allowed, "team/unsigned:1")
    refused(pull(guest, unsigned), "A signature was required, but no signature exists")

    intruder = guest.push("one", guest.allowed, "team/intruder:1")
    guest.sign(guest.allowed, "team/intruder:1", guest.intruder)
    refused(pull(guest, intruder), "Invalid GPG signature")

    outside = guest.push("one", guest.outside, "team/app:1")
    guest.sign(guest.outside, "team/app:1", guest.ci)  # the right key, the wrong registry
    refused(pull(guest, outside), f"Running image docker://{outside} is rejected by policy")

    moved = guest.push("one", guest.allowed, "team/moved:1")
    guest.sign(guest.allowed, "team/moved:1", guest.ci)
    guest.push("two", guest.allowed, "team/moved:1")  # the tag now names an unsigned image
    refused(pull(guest, moved), "A signature was required, but no signature exists")

    # A policy of root's own would come first, but root's home is on the verified root.
    result = guest.run("mkdir -p /root/.config/containers")
    refused(result, "Read-only file system")


def test_a_generated_profile_is_enforced_on_a_container(guest: Guest, app: str) -> None:
    reference = app
    run = f"podman run --rm --runtime crun --security-opt seccomp={PROFILE_PATH} {reference}"
    assert guest.ok(f"{run} /bin/busybox sh -c '{WORKLOAD}'") == "recorded\n"
    # mkdir was never recorded: the profile refuses it, and only the profile does.
    refused(guest.run(f"{run} /bin/busybox mkdir /new"), "Operation not permitted")
    guest.ok(f"podman run --rm --runtime crun {reference} /bin/busybox mkdir /new")


def test_workloads_outside_the_spec_are_findings(guest: Guest, app: str,
                                                 signing_keys: SigningKeys) -> None:
    reference = app
    # An image made on the host never met the policy; a runtime copied to /tmp is not one
    # the spec allows.
    guest.ok(f"podman create --runtime crun --name src {reference} >/dev/null && "
             f"podman commit -q src localhost/built:1 >/dev/null && podman rm src >/dev/null && "
             f"podman run -d --name built localhost/built:1 /bin/busybox sleep 3600 && "
             f"cp /usr/bin/crun /tmp/rt && "
             f"podman run -d --name elsewhere --runtime /tmp/rt {reference} "
             f"/bin/busybox sleep 3600")
    try:
        code, data = guest.attest(signing_keys)
        found = findings(data)
        assert code == 1
        assert {"workload.unverified.built", "workload.runtime.elsewhere"} <= set(found), found
        assert found["workload.runtime.elsewhere"]["observed"] == "/tmp/rt"
        assert "container.built" in records(data)
    finally:
        guest.ok("podman rm -f -t 0 built elsewhere >/dev/null && podman rmi localhost/built:1 "
                 ">/dev/null && rm /tmp/rt")
    code, data = guest.attest(signing_keys)
    assert (code, data["status"]) == (0, "pass"), findings(data)


def test_a_policy_of_a_users_own_is_reported(guest: Guest, signing_keys: SigningKeys) -> None:
    """Root can point HOME at a writable folder and bring its own policy: podman then pulls
    what the host's refuses. It cannot be prevented by files; the attestation names it."""
    unsigned = guest.push("one", guest.allowed, "team/unsigned:1")
    open_policy = json.dumps(json.dumps(OPEN_POLICY))
    guest.ok(f"mkdir -p /tmp/u/.config/containers && printf %s {open_policy} "
             f"> /tmp/u/.config/containers/policy.json && HOME=/tmp/u podman pull "
             f"--tls-verify=false {unsigned} >/dev/null")
    code, data = guest.attest(signing_keys)
    assert code == 1
    assert "containers.override./tmp/u/.config/containers/policy.json" in findings(data)
    guest.ok(f"podman rmi {unsigned} >/dev/null && rm -r /tmp/u")


def test_a_changed_policy_is_reported(guest: Guest, signing_keys: SigningKeys) -> None:
    """Last: the change stays in /etc's upper layer until the guest reboots."""
    guest.ok("printf '%s' '{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}' "
             "> /etc/containers/policy.json")
    code, data = guest.attest(signing_keys)
    assert code == 1
    found = findings(data)
    assert "containers.policy./etc/containers/policy.json" in found, found
