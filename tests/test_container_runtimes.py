"""`containers.runtimes` and `containers.default_runtime`: extra OCI runtimes (gVisor's runsc)
registered with the engine, as containers.conf and daemon.json have them, the spec's refusals,
and the manifest's `workloads`. A spec without the keys renders, digests and signs exactly as
before them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardhost.builder import container_policy
from hardhost.builder.containers import Containers, Engine
from hardhost.builder.context import BuildContext
from hardhost.builder.spec import Spec, load_spec, parse_spec
from hardhost.builder.stages import harden, security
from hardhost.builder.stages import manifest as manifest_stage
from hardhost.core.errors import SpecError
from hardhost.image.manifest import from_statement
from tests.support.paths import IMAGES

SECCOMP = {"seccomp_profile": security.SECCOMP_DEFAULT}
PODMAN = '"podman", "crun"'
DOCKER = '"docker.io", "runc"'


# runsc's ptrace platform needs it (hardhost.builder.containers.RUNSC_PTRACE).
PTRACE_SCOPE = '[sysctl]\n"kernel.yama.ptrace_scope" = 1\n'


def spec_text(containers: str, packages: str, extra: str = "") -> str:
    return (f'name = "t"\n[packages]\ninclude = ["systemd", {packages}]\n'
            f"[ssh]\npermit_root_login = true\n[containers]\n{containers}\n{extra}"
            f"{PTRACE_SCOPE if 'runsc' in packages else ''}")


def make_spec(containers: str, packages: str = PODMAN, extra: str = "") -> Spec:
    return parse_spec(spec_text(containers, packages, extra), "spec.toml")


def podman(runtimes: str = "", packages: str = f'{PODMAN}, "runsc"', extra: str = "") -> Spec:
    return make_spec(f'engine = "podman"\n{runtimes}', packages, extra)


def docker(runtimes: str = "", packages: str = f'{DOCKER}, "runsc"') -> Spec:
    return make_spec(f'engine = "docker"\n{runtimes}', packages)


def refusal(containers: str, packages: str = PODMAN) -> SpecError:
    with pytest.raises(SpecError) as info:
        make_spec(containers, packages)
    assert "\n" not in str(info.value)
    return info.value


def rendered(spec: Spec) -> dict[str, str]:
    return {f.path: f.content for f in harden.render_layer(spec)}


def containers_conf(spec: Spec) -> dict[str, object]:
    return tomllib.loads(rendered(spec)[harden.PODMAN_CONF])


def daemon_json(spec: Spec) -> dict[str, object]:
    config: dict[str, object] = json.loads(rendered(spec)["/etc/docker/daemon.json"])
    return config


# --- specs without the keys are what they were -----------------------------------------------


def test_a_podman_spec_without_the_keys_keeps_its_digest_and_files() -> None:
    spec = podman(packages=PODMAN)
    # Pinned before the keys existed: a podman spec's [containers] is part of its digest, so
    # counting the unset keys in would re-sign every podman image.
    assert spec.digest() == "a0749f59249e986daef43d11562571bdebc2be390051e268d3e7186115eac923"
    assert rendered(spec)[harden.PODMAN_CONF] == (
        "# Rendered by hardhost: podman's defaults for every container.\n"
        '[containers]\nseccomp_profile = "/usr/lib/hardhost/seccomp/default.json"\n')
    settings = manifest_stage.inputs(spec, 0)["spec"]
    assert isinstance(settings, dict)
    assert set(settings["containers"]) == {"engine", "allowed_registries", "signing_keys",
                                           "lookaside"}
    without_seccomp = podman(packages=PODMAN, extra="[seccomp]\ndefault_profile = false\n")
    assert harden.PODMAN_CONF not in rendered(without_seccomp)


def test_empty_keys_are_the_same_spec() -> None:
    plain = podman(packages=PODMAN)
    explicit = podman('runtimes = []\ndefault_runtime = ""', packages=PODMAN)
    assert plain == explicit and plain.digest() == explicit.digest()
    assert rendered(plain) == rendered(explicit)


def test_the_keys_are_part_of_the_digest() -> None:
    base = podman()
    listed = podman('runtimes = ["runsc"]')
    default = podman('runtimes = ["runsc"]\ndefault_runtime = "runsc"')
    assert len({base.digest(), listed.digest(), default.digest()}) == 3
    settings = manifest_stage.inputs(default, 0)["spec"]
    assert isinstance(settings, dict)
    assert settings["containers"]["runtimes"] == ("runsc",)
    assert settings["containers"]["default_runtime"] == "runsc"


# --- podman: containers.conf -----------------------------------------------------------------


def test_podman_host_registers_runsc_beside_crun() -> None:
    spec = load_spec(IMAGES / "podman-host.toml")
    assert spec.containers.runtimes == ("runsc",) and spec.containers.default_runtime == ""
    assert "runsc" in spec.packages.include
    # The default stays podman's own (crun): no `runtime` key at all.
    assert containers_conf(spec) == {"containers": SECCOMP,
                                     "engine": {"runtimes": {"runsc": ["/usr/bin/runsc"]}}}
    assert spec.containers.allowed_runtimes == ("crun", "runsc")


def test_podman_default_runtime_is_the_engine_runtime() -> None:
    spec = podman('runtimes = ["runsc", "runc"]\ndefault_runtime = "runsc"',
                  packages=f'{PODMAN}, "runsc", "runc"')
    assert containers_conf(spec) == {"containers": SECCOMP, "engine": {
        "runtime": "runsc",
        "runtimes": {"runsc": ["/usr/bin/runsc"], "runc": ["/usr/bin/runc"]}}}
    assert spec.containers.allowed_runtimes == ("crun", "runc", "runsc")


def test_podman_default_named_as_its_own_runtime() -> None:
    spec = podman('default_runtime = "crun"', packages=PODMAN)
    assert containers_conf(spec) == {"containers": SECCOMP, "engine": {"runtime": "crun"}}
    assert spec.containers.allowed_runtimes == ("crun",)


def test_runtimes_are_registered_without_the_default_seccomp_profile() -> None:
    spec = podman('runtimes = ["runsc"]\ndefault_runtime = "runsc"',
                  extra="[seccomp]\ndefault_profile = false\n")
    text = rendered(spec)[harden.PODMAN_CONF]
    assert "seccomp_profile" not in text
    assert tomllib.loads(text) == {"engine": {"runtime": "runsc",
                                              "runtimes": {"runsc": ["/usr/bin/runsc"]}}}


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("podman") is None
                    or not Path("/usr/bin/runsc").exists(),
                    reason="needs root, podman and runsc (apt-get install podman runsc)")
def test_podman_reads_the_registration(tmp_path: Path) -> None:
    # Debian 12's podman 4.3.1 (containers/common 0.50.1) resolves the default runtime from
    # the rendered table. The seccomp profile's path exists only on the image.
    spec = podman('runtimes = ["runsc"]\ndefault_runtime = "runsc"',
                  extra="[seccomp]\ndefault_profile = false\n")
    conf = tmp_path / "containers.conf"
    conf.write_text(rendered(spec)[harden.PODMAN_CONF])
    # podman refuses a runroot longer than 50 characters, which pytest's folders are.
    with tempfile.TemporaryDirectory(prefix="hh-run-") as runroot:
        result = subprocess.run(
            ["podman", "--root", str(tmp_path / "storage"), "--runroot", runroot,
             "--storage-driver", "vfs", "info", "--format",
             "{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Path}}"],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
                 "CONTAINERS_CONF": str(conf)},
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["runsc", "/usr/bin/runsc"]


def test_a_docker_spec_gets_no_containers_conf() -> None:
    files = rendered(docker('runtimes = ["runsc"]'))
    assert harden.PODMAN_CONF not in files
    assert not any(path.startswith("/etc/containers/") for path in files)


# --- docker: daemon.json ---------------------------------------------------------------------


def test_docker_registers_runsc_in_daemon_json() -> None:
    plain = daemon_json(docker(packages=DOCKER))
    assert "runtimes" not in plain and "default-runtime" not in plain
    listed = daemon_json(docker('runtimes = ["runsc"]'))
    assert listed == plain | {"runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}
    default = daemon_json(docker('runtimes = ["runsc", "crun"]\ndefault_runtime = "runsc"',
                                 packages=f'{DOCKER}, "runsc", "crun"'))
    assert default == plain | {"runtimes": {"runsc": {"path": "/usr/bin/runsc"},
                                            "crun": {"path": "/usr/bin/crun"}},
                               "default-runtime": "runsc"}


def test_container_host_adding_runsc_keeps_its_other_settings() -> None:
    base = load_spec(IMAGES / "container-host.toml")
    assert "runtimes" not in daemon_json(base)
    spec = dataclasses.replace(base, containers=Containers(runtimes=("runsc",)))
    config = daemon_json(spec)
    assert config.pop("runtimes") == {"runsc": {"path": "/usr/bin/runsc"}}
    assert config == daemon_json(base)
    assert spec.containers.allowed_runtimes == ("runc", "runsc")


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(("containers", "packages", "key", "problem"), [
    ('runtimes = ["kata"]', PODMAN, "runtimes",
     "'kata' is not a runtime hardhost knows (known: crun, runc, runsc)"),
    ('runtimes = ["runsc", "runsc"]', f'{PODMAN}, "runsc"', "runtimes", "lists a runtime twice"),
    ('runtimes = "runsc"', f'{PODMAN}, "runsc"', "runtimes", "expected a list of strings"),
    ('runtimes = ["runsc\\n"]', f'{PODMAN}, "runsc"', "runtimes", "control characters"),
    ('runtimes = ["crun"]', PODMAN, "runtimes",
     "crun is podman's own runtime, registered already"),
    ('runtimes = ["runsc"]', PODMAN, "runtimes",
     "runsc is not installed; add runsc to packages.include"),
    ('runtimes = ["runsc", "runc"]', f'{PODMAN}, "runsc"', "runtimes",
     "runc is not installed; add runc to packages.include"),
    ('default_runtime = "kata"', PODMAN, "default_runtime",
     "'kata' is not a runtime hardhost knows"),
    ('default_runtime = 1', PODMAN, "default_runtime", "expected a string"),
    ('default_runtime = "runsc"', f'{PODMAN}, "runsc"', "default_runtime",
     "runsc is neither podman's own runtime (crun) nor in containers.runtimes"),
    ('default_runtime = "runc"', f'{PODMAN}, "runc"', "default_runtime",
     "runc is neither podman's own runtime (crun)"),
])
def test_podman_refusals_name_the_key_and_the_fix(containers: str, packages: str, key: str,
                                                  problem: str) -> None:
    error = refusal(f'engine = "podman"\n{containers}', packages)
    assert error.key == f"containers.{key}"
    assert problem in error.problem, error.problem


@pytest.mark.parametrize(("containers", "key", "problem"), [
    ('runtimes = ["runc"]', "runtimes", "runc is docker's own runtime"),
    ('default_runtime = "crun"', "default_runtime",
     "crun is neither docker's own runtime (runc) nor in containers.runtimes"),
])
def test_docker_refusals_name_the_key_and_the_fix(containers: str, key: str,
                                                  problem: str) -> None:
    error = refusal(f'engine = "docker"\n{containers}', f'{DOCKER}, "crun"')
    assert error.key == f"containers.{key}"
    assert problem in error.problem, error.problem


@pytest.mark.parametrize(("containers", "key"), [
    ('runtimes = ["runsc"]', "runtimes"),
    ('default_runtime = "runc"', "default_runtime"),
])
def test_runtimes_without_an_engine_are_refused(containers: str, key: str) -> None:
    # engine defaults to docker, but dockerd is there only with docker.io: nothing would
    # read the registration.
    error = refusal(containers, '"runsc", "runc"')
    assert error.key == f"containers.{key}"
    assert "no container engine" in error.problem and "add docker.io" in error.problem


def test_the_base_runtime_needs_not_be_listed_to_be_the_default() -> None:
    assert docker('default_runtime = "runc"').containers.allowed_runtimes == ("runc",)
    assert daemon_json(docker('default_runtime = "runc"'))["default-runtime"] == "runc"


# --- the manifest ----------------------------------------------------------------------------


def build_context(tmp_path: Path, spec: Spec) -> BuildContext:
    """A context whose tree holds just what build_manifest reads from a podman or docker
    image: no AppArmor profile to name, podman's binary and the rendered layer."""
    ctx = BuildContext(spec=spec, workdir=tmp_path, staging=tmp_path / "staging",
                       cache_dir=tmp_path / "cache", signing_key=Ed25519PrivateKey.generate(),
                       source_date_epoch=0, kernel_release="6.1.0-50-amd64", root_hash="f" * 64,
                       salt="0" * 64, cmdline="root=/dev/mapper/root ro")
    ctx.subjects = {name: "a" * 64 for name in manifest_stage.subjects()}
    (ctx.tree / "etc/apparmor.d").mkdir(parents=True)
    podman_binary = ctx.tree / manifest_stage.PODMAN_BINARY
    podman_binary.parent.mkdir(parents=True)
    podman_binary.write_bytes(b"\x7fELF...containers-default-0.50.1\x00")
    harden.write_layer(ctx.tree, harden.render_layer(spec))
    return ctx


@pytest.mark.parametrize(("image", "workloads"), [
    ("podman-host", {"engine": ("podman",), "registries": ("registry.example:5000",),
                     "runtimes": ("crun", "runsc")}),
    ("container-host", {"engine": ("docker",), "registries": (), "runtimes": ("runc",)}),
    ("minimal", {}),
])
def test_the_manifest_says_what_the_engine_may_run(tmp_path: Path, image: str,
                                                   workloads: dict[str, tuple[str, ...]]
                                                   ) -> None:
    spec = load_spec(IMAGES / f"{image}.toml")
    manifest = manifest_stage.build_manifest(build_context(tmp_path, spec), [], "e" * 64,
                                             dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert manifest.workloads == workloads
    # The manifest's strict reader takes what the builder writes, and leaves out none.
    assert from_statement(json.loads(manifest.payload()), "m").workloads == workloads
    predicate = manifest.statement()["predicate"]
    assert ("workloads" in predicate) is bool(workloads)
    if image == "podman-host":
        # containers.conf, as written, is among the engine's configuration files.
        assert harden.PODMAN_CONF in manifest.runtime_config
        assert set(manifest.container_policy) >= {container_policy.POLICY}


def test_the_manifest_lists_the_default_runtime_once() -> None:
    spec = podman('runtimes = ["runsc"]\ndefault_runtime = "runsc"')
    assert manifest_stage.workloads(spec) == {"engine": ("podman",), "registries": (),
                                              "runtimes": ("crun", "runsc")}
    assert spec.containers.engine is Engine.PODMAN


def test_runsc_needs_a_ptrace_scope_that_lets_it_trace_its_stubs(tmp_path: Path) -> None:
    shipped = (IMAGES / "podman-host.toml").read_text()
    assert '"kernel.yama.ptrace_scope" = 1' in shipped
    spec = tmp_path / "host.toml"
    spec.write_text(shipped.replace('"kernel.yama.ptrace_scope" = 1\n', ""))
    (tmp_path / "keys").mkdir()
    shutil.copy(IMAGES / "keys" / "example-ci.gpg", tmp_path / "keys")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.key == "containers.runtimes"
    assert "kernel.yama.ptrace_scope" in str(caught.value)
    spec.write_text(shipped.replace("ptrace_scope\" = 1", "ptrace_scope\" = 2"))
    with pytest.raises(SpecError):
        load_spec(spec)
    spec.write_text(shipped)
    assert "runsc" in load_spec(spec).containers.runtimes
