"""`[containers]`: the engine as a spec choice, and podman's image trust policy rendered from
it. Every refusal is one `FILE: containers.KEY: problem` line; specs without the section
render, digest and sign exactly as before."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from hardhost.builder import container_policy
from hardhost.builder.containers import Engine, lookaside_url
from hardhost.builder.spec import Spec, load_spec, parse_spec
from hardhost.builder.stages import harden
from hardhost.builder.stages import manifest as manifest_stage
from hardhost.builder.workload_signing import parse_reference
from hardhost.cli.main import main
from hardhost.core.errors import USAGE, BuildError, SpecError, TrustError, UsageError
from hardhost.image.manifest import from_statement
from tests.support.manifests import sample_manifest
from tests.support.paths import IMAGES

PUBLIC = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


def podman_spec(tmp_path: Path, containers: str, *, packages: str = '"podman", "crun"',
                keys: dict[str, str | bytes] | None = None) -> Spec:
    """A spec in `tmp_path` with `containers` as its [containers] section and key files."""
    for name, content in ({"keys/ci.gpg": PUBLIC} if keys is None else keys).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    text = (f'name = "t"\n[packages]\ninclude = ["systemd", {packages}]\n'
            f"[ssh]\npermit_root_login = true\n[containers]\n{containers}\n")
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return load_spec(path)


SIGNED = ('engine = "podman"\nallowed_registries = ["registry.example:5000"]\n'
          'signing_keys = ["keys/ci.gpg"]\nlookaside = "https://sigs.example/store"')


def refusal(tmp_path: Path, containers: str, **kwargs: object) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec = podman_spec(tmp_path, containers, **kwargs)  # type: ignore[arg-type]
        container_policy.policy_files(spec.containers, spec.source)
    assert "\n" not in str(info.value)
    return info.value


# --- specs without [containers] are what they were -------------------------------------------


def test_a_spec_without_containers_keeps_its_digest() -> None:
    # The digest of container-host.toml from before [containers] existed: it seeds the
    # manifest's spec_digest, so a change here would re-sign every existing image.
    spec = load_spec(IMAGES / "container-host.toml")
    assert spec.digest() == "831b9ecfeb83e86ff23d1fe78d0206cd4c443ba9ad8d0e89aad223f9e4faf600"
    assert spec.containers.engine is Engine.DOCKER
    assert harden.container_policy_files(spec) == []
    assert "containers" not in manifest_stage.inputs(spec, 0)["spec"]  # type: ignore[operator]


def test_the_default_engine_written_out_is_the_same_spec(tmp_path: Path) -> None:
    base = 'name = "t"\n[packages]\ninclude = ["systemd"]\n[ssh]\npermit_root_login = true\n'
    plain = parse_spec(base, "spec.toml")
    explicit = parse_spec(base + '[containers]\nengine = "docker"\n', "spec.toml")
    assert plain == explicit and plain.digest() == explicit.digest()


# --- the podman host -------------------------------------------------------------------------


def test_podman_host_renders_its_policy_on_the_root() -> None:
    spec = load_spec(IMAGES / "podman-host.toml")
    assert spec.containers.engine is Engine.PODMAN
    assert "docker.io" not in spec.packages.include
    files = {f.path: f.content for f in harden.render_layer(spec)}
    assert "/etc/docker/daemon.json" not in files
    policy = json.loads(files[container_policy.POLICY])
    assert policy["default"] == [{"type": "reject"}]
    assert list(policy["transports"]) == ["docker"]  # every other transport: the default
    assert policy["transports"]["docker"] == {"registry.example:5000": [{
        "type": "signedBy", "keyType": "GPGKeys",
        "keyPath": "/etc/containers/keys/example-ci.gpg"}]}
    assert files["/etc/containers/keys/example-ci.gpg"].startswith(
        "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert 'short-name-mode = "enforcing"' in files[container_policy.REGISTRIES_CONF]
    assert "unqualified-search-registries = []" in files[container_policy.REGISTRIES_CONF]
    assert "tmpfs /var/lib/containers tmpfs" in files["/etc/fstab"]
    # Every container's seccomp profile is the image's default, as dockerd's is.
    assert 'seccomp_profile = "/usr/lib/hardhost/seccomp/default.json"' in files[
        harden.PODMAN_CONF]
    without = dataclasses.replace(spec, seccomp=dataclasses.replace(spec.seccomp,
                                                                    default_profile=False))
    # Still written, for runsc's registration, but without the profile.
    conf = {f.path: f.content for f in harden.render_layer(without)}[harden.PODMAN_CONF]
    assert "seccomp_profile" not in conf and "[containers]" not in conf
    no_runtimes = dataclasses.replace(without, containers=dataclasses.replace(
        without.containers, runtimes=()))
    assert harden.PODMAN_CONF not in {f.path for f in harden.render_layer(no_runtimes)}
    assert "/var/lib/containers" in manifest_stage.expected_mounts(spec)


def test_several_keys_accept_a_signature_by_any_one(tmp_path: Path) -> None:
    spec = podman_spec(tmp_path, SIGNED.replace('["keys/ci.gpg"]',
                                                '["keys/ci.gpg", "other/release.asc"]'),
                       keys={"keys/ci.gpg": PUBLIC, "other/release.asc": PUBLIC})
    (requirement,) = container_policy.policy(spec.containers)["transports"]["docker"][
        "registry.example:5000"]
    # One requirement with keyPaths: a list of requirements must ALL hold.
    assert requirement["keyPaths"] == ["/etc/containers/keys/ci.gpg",
                                       "/etc/containers/keys/release.asc"]
    assert "keyPath" not in requirement


def test_each_registry_reads_signatures_from_its_own_folder(tmp_path: Path) -> None:
    # Lookaside paths are REPO@sha256=DIGEST/signature-N, without the registry's host: two
    # registries sharing one URL would overwrite each other's signatures.
    spec = podman_spec(tmp_path, SIGNED.replace(
        '["registry.example:5000"]', '["registry.example:5000", "mirror.example"]'))
    files = {f.path: f.content for f in container_policy.policy_files(spec.containers,
                                                                       spec.source)}
    first = files["/etc/containers/registries.d/registry.example:5000.yaml"]
    second = files["/etc/containers/registries.d/mirror.example.yaml"]
    assert 'lookaside: "https://sigs.example/store/registry.example:5000"' in first
    assert 'lookaside: "https://sigs.example/store/mirror.example"' in second
    assert '"mirror.example"' not in first
    assert lookaside_url("file:///srv/sigs/", "r:1") == "file:///srv/sigs/r:1"


# --- refusals --------------------------------------------------------------------------------


def test_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    error = refusal(tmp_path, 'engine = "containerd"')
    assert error.key == "containers.engine" and "docker, podman" in error.problem


@pytest.mark.parametrize("key", ["allowed_registries", "signing_keys", "lookaside"])
def test_signature_enforcement_with_docker_says_why_not(tmp_path: Path, key: str) -> None:
    containers = SIGNED.replace('engine = "podman"', 'engine = "docker"')
    keep = {"allowed_registries": 'allowed_registries = ["registry.example:5000"]',
            "signing_keys": 'signing_keys = ["keys/ci.gpg"]',
            "lookaside": 'lookaside = "https://sigs.example/store"'}
    error = refusal(tmp_path, f'engine = "docker"\n{keep[key]}', packages='"docker.io"')
    assert error.key == f"containers.{key}"
    assert "content trust is checked only in the docker client" in error.problem
    assert refusal(tmp_path, containers, packages='"docker.io"').key.startswith("containers.")


def test_podman_needs_its_package_and_no_docker(tmp_path: Path) -> None:
    error = refusal(tmp_path, SIGNED, packages='"crun"')
    assert error.key == "containers.engine" and "add podman" in error.problem
    error = refusal(tmp_path, SIGNED, packages='"podman", "docker.io"')
    assert error.key == "packages.include" and "past podman's policy" in error.problem


@pytest.mark.parametrize("registry", [
    "registry.example:5000/team",  # a path
    "https://registry.example",  # a scheme
    "registry.example:5000\n",  # a newline
    "registry.example\x1b[2J",  # an escape
    "reg istry.example",
    "Registry.Example",  # policy scopes are matched as written: lower case only
    "registry.example:0", "registry.example:65536", "registry.example:",
    "-registry.example", "registry..example", "",
    "*.example",  # a wildcard would accept every subdomain's images
])
def test_a_registry_is_only_a_host_and_port(tmp_path: Path, registry: str) -> None:
    containers = SIGNED.replace('"registry.example:5000"', json.dumps(registry))
    error = refusal(tmp_path, containers)
    assert error.key == "containers.allowed_registries"


def test_a_registry_listed_twice_is_refused(tmp_path: Path) -> None:
    containers = SIGNED.replace('["registry.example:5000"]', '["r.example", "r.example"]')
    error = refusal(tmp_path, containers)
    assert error.key == "containers.allowed_registries" and "twice" in error.problem


@pytest.mark.parametrize("missing", ["allowed_registries", "signing_keys", "lookaside"])
def test_registries_keys_and_lookaside_come_together(tmp_path: Path, missing: str) -> None:
    containers = "\n".join(line for line in SIGNED.splitlines()
                           if not line.startswith(missing))
    error = refusal(tmp_path, containers)
    assert error.key == f"containers.{missing}" and "is required" in error.problem


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    error = refusal(tmp_path, SIGNED, keys={})
    assert error.key == "containers.signing_keys"
    assert "ci.gpg" in error.problem and "gpg --armor --export" in error.problem


def test_a_sigstore_key_is_refused_in_one_line(tmp_path: Path) -> None:
    error = refusal(tmp_path, SIGNED.replace("keys/ci.gpg", "keys/cosign.pub"),
                    keys={"keys/cosign.pub": "-----BEGIN PUBLIC KEY-----\nMFkw\n"})
    assert error.key == "containers.signing_keys" and "sigstore" in error.problem
    assert "built without sigstore" in error.problem
    # The same PEM key under another name is found by its content.
    error = refusal(tmp_path, SIGNED, keys={"keys/ci.gpg": "-----BEGIN PUBLIC KEY-----\nMFkw\n"})
    assert error.key == "containers.signing_keys" and "sigstore" in error.problem


@pytest.mark.parametrize(("content", "problem"), [
    ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlFgE\n", "private key"),
    (PUBLIC + "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlFgE\n", "private key"),
    (b"\x98\x33\x04\xff\xfe binary", "gpg --armor --export"),
    ("ssh-ed25519 AAAA key", "not an ASCII-armored GPG public key"),
    ("", "not an ASCII-armored GPG public key"),
])
def test_a_key_file_must_be_an_armored_public_key(tmp_path: Path, content: str | bytes,
                                                  problem: str) -> None:
    error = refusal(tmp_path, SIGNED, keys={"keys/ci.gpg": content})
    assert error.key == "containers.signing_keys" and problem in error.problem


def test_two_keys_with_one_file_name_are_refused(tmp_path: Path) -> None:
    error = refusal(tmp_path, SIGNED.replace('["keys/ci.gpg"]', '["a/ci.gpg", "b/ci.gpg"]'))
    assert error.key == "containers.signing_keys" and "file name" in error.problem


@pytest.mark.parametrize("url", ["ftp://sigs.example", "https://", "https://sigs.example/?x=1",
                                 "https://sigs.example/a b", "sigs.example"])
def test_the_lookaside_is_a_plain_url(tmp_path: Path, url: str) -> None:
    error = refusal(tmp_path, SIGNED.replace("https://sigs.example/store", url))
    assert error.key == "containers.lookaside"


# --- the manifest ----------------------------------------------------------------------------


def test_the_manifest_carries_the_policy_digests_only_when_there_is_one() -> None:
    plain = sample_manifest()
    assert "container_policy" not in plain.statement()["predicate"]
    assert from_statement(json.loads(plain.payload()), "m") == plain  # older manifests parse
    digests = {"/etc/containers/policy.json": "a" * 64,
               "/etc/containers/registries.d/r.example:5000.yaml": "b" * 64}
    signed = dataclasses.replace(plain, container_policy=digests)
    assert signed.statement()["predicate"]["container_policy"] == digests
    assert from_statement(json.loads(signed.payload()), "m").container_policy == digests


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/containers/../shadow",
                                  "/etc/containers/", "/etc/containers/a\nb",
                                  "/etc/containers//policy.json"])
def test_a_hostile_policy_entry_is_refused(path: str) -> None:
    statement = json.loads(sample_manifest().payload())
    statement["predicate"]["container_policy"] = {path: "a" * 64}
    with pytest.raises(TrustError, match="container_policy"):
        from_statement(statement, "m")
    statement["predicate"]["container_policy"] = {"/etc/containers/policy.json": "A" * 64}
    with pytest.raises(TrustError, match="container_policy"):
        from_statement(statement, "m")


def test_the_manifest_carries_what_workloads_may_run_only_when_there_is_an_engine() -> None:
    plain = sample_manifest()
    assert "workloads" not in plain.statement()["predicate"]
    workloads = {"engine": ("podman",), "registries": ("r.example:5000",),
                 "runtimes": ("crun", "runsc")}
    signed = dataclasses.replace(plain, workloads=workloads)
    assert signed.statement()["predicate"]["workloads"]["runtimes"] == ["crun", "runsc"]
    assert from_statement(json.loads(signed.payload()), "m").workloads == workloads


@pytest.mark.parametrize("workloads", [
    {"engine": ["podman", "docker"]}, {"registries": ["r.example"]},
    {"engine": ["podman"], "shells": ["sh"]}, {"engine": ["podman"], "runtimes": ["Run sc"]},
    {"engine": ["podman"], "runtimes": "runsc"}])
def test_a_hostile_workloads_entry_is_refused(workloads: dict[str, object]) -> None:
    statement = json.loads(sample_manifest().payload())
    statement["predicate"]["workloads"] = workloads
    with pytest.raises(TrustError, match="workloads"):
        from_statement(statement, "m")


# --- hardhost image sign: what it refuses before skopeo runs ---------------------------------


@pytest.mark.parametrize("reference", [
    "app:1",  # no registry: a signature names the full reference
    "registry.example:5000/app",  # no tag
    "registry.example:5000/App:1",  # repositories are lower case
    "Registry.example/app:1",
    "registry.example/app:1 --sign-by=x",
    "registry.example/app:1\n",
    "registry.example/../app:1",
    "registry.example/app@sha256:" + "a" * 64,  # pin with --digest, name with a tag
])
def test_sign_refuses_a_reference_without_registry_and_tag(reference: str) -> None:
    with pytest.raises(UsageError, match="REGISTRY/REPOSITORY:TAG"):
        parse_reference(reference)


def test_sign_parses_a_full_reference() -> None:
    ref = parse_reference("registry.example:5000/team/app:1.4")
    assert (ref.registry, ref.repository, ref.tag) == ("registry.example:5000", "team/app",
                                                         "1.4")


@pytest.mark.parametrize(("args", "problem"), [
    (["--key", "ci@example"], "fingerprint"),
    (["--key", "ABCDEF0123456789"], "fingerprint"),  # a long key id is not a fingerprint
    (["--key", "A" * 40, "--digest", "sha256:xyz"], "--digest"),
    (["--key", "A" * 40, "--lookaside", "/nonexistent/sigs"], "lookaside folder"),
    (["--key", "A" * 40, "--identity", "10.0.2.2:5000/app"], "REGISTRY/REPOSITORY:TAG"),
])
def test_sign_refuses_bad_options_in_one_line(args: list[str], problem: str,
                                              capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    argv = ["image", "sign", "registry.example:5000/app:1", "--lookaside", str(tmp_path), *args]
    assert main(argv) == USAGE.code
    err = capsys.readouterr().err
    assert err.startswith("hardhost: ") and err.count("\n") == 1 and problem in err, err


# --- the build's side: drop-ins removed, digests recorded ----------------------------------


def test_the_build_removes_registries_conf_drop_ins(tmp_path: Path) -> None:
    drop_ins = tmp_path / "etc/containers/registries.conf.d"
    drop_ins.mkdir(parents=True)
    # Debian's containers-common ships aliases; a drop-in could also bring search registries.
    (drop_ins / "shortnames.conf").write_text('[aliases]\n"app" = "evil.example/app"\n')
    (drop_ins / "search.conf").write_text('unqualified-search-registries = ["evil.example"]\n')
    harden.empty_registries_conf_d(tmp_path)
    assert list(drop_ins.iterdir()) == []
    harden.empty_registries_conf_d(tmp_path / "nothing")  # no folder: nothing to do


def test_the_manifest_records_the_files_as_written(tmp_path: Path) -> None:
    spec = podman_spec(tmp_path / "spec", SIGNED)
    tree = tmp_path / "tree"
    files = harden.container_policy_files(spec)
    harden.write_layer(tree, files)
    digests = manifest_stage.container_policy_digests(tree, spec)
    assert set(digests) == {"/etc/containers/policy.json", "/etc/containers/registries.conf",
                            "/etc/containers/registries.d/registry.example:5000.yaml",
                            "/etc/containers/keys/ci.gpg"}
    assert digests["/etc/containers/keys/ci.gpg"] == hashlib.sha256(PUBLIC.encode()).hexdigest()
    (tree / "etc/containers/policy.json").write_text('{"default": [{"type": '
                                                      '"insecureAcceptAnything"}]}')
    assert manifest_stage.container_policy_digests(tree, spec) != digests


def test_the_manifest_expects_the_apparmor_profile_podman_loads(tmp_path: Path) -> None:
    spec = load_spec(IMAGES / "podman-host.toml")
    fake = tmp_path / "usr/bin/podman"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"\x7fELF...containers-default-0.50.1\x00...")
    assert manifest_stage.apparmor_runtime_profiles(spec, tmp_path) == {
        "containers-default-0.50.1": "enforce"}
    container_host = load_spec(IMAGES / "container-host.toml")
    assert manifest_stage.apparmor_runtime_profiles(container_host, tmp_path) == {
        "docker-default": "enforce"}
    fake.write_bytes(b"\x7fELF without it")
    with pytest.raises(BuildError, match="containers-default"):
        manifest_stage.apparmor_runtime_profiles(spec, tmp_path)


@pytest.mark.skipif(not Path("/usr/bin/podman").exists(), reason="podman is not installed")
def test_debian_podman_names_its_apparmor_profile() -> None:
    # Debian 12's podman 4.3.1 was built with containers/common 0.50.1.
    assert manifest_stage.podman_apparmor_profile(Path("/")).startswith("containers-default-")
