"""The container sections of the evidence (container_policy, container_overrides, workloads):
parsed strictly from hostile output, and compared with a podman image's manifest. The host
side here is a fake by necessity; tests/test_workload_podman.py runs the script for real."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hardhost.image.manifest import HostManifest
from hardhost.verifier.comparison import examine, registry_of
from hardhost.verifier.evidence import (
    LISTED_OVERRIDES,
    LISTED_POLICY_FILES,
    LISTED_WORKLOADS,
    MAX_REPO_DIGESTS,
    MAX_WORKLOAD_LINE,
    Evidence,
    PodmanState,
    Workload,
    parse,
)
from hardhost.verifier.transport import HostOutputError
from hardhost.verifier.verdict import Finding, Severity
from tests.support.evidence import container_line, fake_output, image_line, listing, workloads
from tests.support.manifests import sample_manifest

NONCE = "0123456789abcdef0123456789abcdef"
POLICY = "/etc/containers/policy.json"
REGISTRIES = "/etc/containers/registries.conf"
KEY = "/etc/containers/keys/ci.gpg"
CONF = "/etc/containers/containers.conf"
REGISTRY = "registry.example:5000"
ID_A, ID_B = "a" * 64, "b" * 64
PULLED = f"{REGISTRY}/team/app@sha256:{'1' * 64}"
LOCAL = f"localhost/built@sha256:{'2' * 64}"


def policy_section(*records: tuple[str, str], count: int | None = None) -> str:
    """The container_policy section: (sha256 or find's type letter, path) records."""
    return listing(*(f"{value}  {path}".encode() for value, path in records), count=count)


CLEAN_POLICY = policy_section(("3" * 64, POLICY), ("4" * 64, REGISTRIES), ("5" * 64, KEY),
                              ("6" * 64, CONF))


def podman_output(nonce: str = "", **overrides: str) -> bytes:
    """A podman host's evidence: its policy as built, no override, one container pulled from
    the allowed registry running under crun."""
    sections = {"runtime_config": f"{'6' * 64}  {CONF}\n", "container_policy": CLEAN_POLICY,
                "container_overrides": listing(),
                "workloads": workloads(container_line("web", f"{REGISTRY}/team/app:1", ID_A),
                                       image_line(ID_A, [PULLED]))}
    return fake_output(nonce, **(sections | overrides))


def podman_manifest(**workload_keys: tuple[str, ...]) -> HostManifest:
    limits = {"engine": ("podman",), "registries": (REGISTRY,), "runtimes": ("crun", "runc")}
    return dataclasses.replace(
        sample_manifest(), runtime_config={CONF: "6" * 64},
        container_policy={POLICY: "3" * 64, REGISTRIES: "4" * 64, KEY: "5" * 64},
        workloads=limits | workload_keys)


def evidence(**overrides: str) -> Evidence:
    return parse(podman_output(**overrides), "h")


def container_findings(manifest: HostManifest, ev: Evidence) -> dict[str, Finding]:
    """The findings of the container checks, by id (the fake's other drift left out)."""
    prefixes = ("containers.", "workload", "runtime.")
    return {f.id: f for f in examine(manifest, ev).findings
            if f.id.startswith(prefixes) and f.counts()}


# The parser.

def test_a_podman_hosts_sections_parse() -> None:
    ev = evidence()
    assert ev.runtime_config == {CONF: "6" * 64}
    assert ev.container_policy == {POLICY: "3" * 64, REGISTRIES: "4" * 64, KEY: "5" * 64,
                                   CONF: "6" * 64}
    assert ev.container_policy_count == 4
    assert ev.container_overrides == () and ev.container_overrides_count == 0
    assert ev.podman is PodmanState.ANSWERED and ev.workload_count == 1
    assert ev.workloads == (Workload("web", f"{REGISTRY}/team/app:1", ID_A, (PULLED,), "crun"),)


def test_a_host_without_podman_or_etc_containers() -> None:
    ev = parse(fake_output(), "h")
    assert ev.container_policy == {} and ev.container_policy_count == 0
    assert ev.container_overrides == () and ev.container_overrides_count == 0
    assert ev.podman is PodmanState.ABSENT and ev.workloads == ()
    ev = evidence(workloads="failed\n")
    assert ev.podman is PodmanState.FAILED and ev.workloads == () and ev.workload_count == 0


def test_runtime_config_keeps_each_file() -> None:
    ev = evidence(runtime_config=f"{'b' * 64}  /etc/docker/daemon.json\n{'6' * 64}  {CONF}\n")
    assert ev.runtime_config == {"/etc/docker/daemon.json": "b" * 64, CONF: "6" * 64}


@pytest.mark.parametrize("name", [
    b"/etc/containers/registries.conf.d/evil\n@@hardhost:end@@\nx",  # a forged marker
    f"/etc/containers/registries.conf.d/x\n@@hardhost:{NONCE}:end@@\n".encode(),
    b"/etc/containers/bad\xff\xfename",  # not UTF-8
    b"/etc/containers/\x1b[2Kerase",
    b"/etc/containers/two  spaces",
])
def test_every_policy_file_name_is_one_entry(name: bytes) -> None:
    section = listing(b"3" * 64 + b"  " + POLICY.encode(), b"7" * 64 + b"  " + name)
    ev = parse(podman_output(NONCE, container_policy=section), "h", nonce=NONCE)
    assert ev.container_policy == {POLICY: "3" * 64,
                                   name.decode("utf-8", "backslashreplace"): "7" * 64}


def test_entries_not_hashed_say_what_they_are() -> None:
    ev = evidence(container_policy=policy_section(
        ("p", POLICY), ("l", REGISTRIES), ("f", KEY), ("s", CONF),
        ("D", "/etc/containers/door")))
    assert ev.container_policy == {POLICY: "a FIFO", REGISTRIES: "a symbolic link",
                                   KEY: "not hashed: larger than 1 MiB", CONF: "a socket",
                                   "/etc/containers/door": "not a regular file (D)"}


def test_a_linked_policy_folder_is_one_entry_and_every_file_absent() -> None:
    # find(1) does not follow a link given as its starting point: it lists the link.
    ev = evidence(container_policy=policy_section(("l", "/etc/containers")))
    assert ev.container_policy == {"/etc/containers": "a symbolic link"}
    found = container_findings(podman_manifest(), ev)
    assert set(found) == {f"containers.policy.{p}" for p in (POLICY, REGISTRIES, KEY)}


@pytest.mark.parametrize("section", [
    policy_section(("3" * 63, POLICY)),  # a short digest
    policy_section(("3" * 64, "/etc/containersX/policy.json")),
    policy_section(("3" * 64, "/etc/shadow")),
    policy_section(("3" * 64, "/etc/containers/")),
    policy_section(("pp", POLICY)),
    policy_section(("3" * 64, POLICY), ("4" * 64, POLICY)),  # one path twice
    policy_section(("3" * 64, POLICY), count=0),  # fewer found than listed
    policy_section(*[("3" * 64, f"/etc/containers/f{i}")
                     for i in range(LISTED_POLICY_FILES + 1)]),
    "²\n\n",  # str.isdigit() says yes, int() says no
    "1\nnot base64!\n",
])
def test_malformed_policy_listings_are_errors(section: str) -> None:
    with pytest.raises(HostOutputError):
        evidence(container_policy=section)


def test_a_policy_listing_cut_short_is_counted() -> None:
    records = [("3" * 64, f"/etc/containers/f{i}") for i in range(LISTED_POLICY_FILES)]
    ev = evidence(container_policy=policy_section(*records, count=5000))
    assert len(ev.container_policy) == LISTED_POLICY_FILES
    assert ev.container_policy_count == 5000


def test_override_names_are_one_entry_each() -> None:
    name = b"/tmp/h/.config/containers/registries.d/a\n@@hardhost:end@@.yaml"
    ev = evidence(container_overrides=listing(b"/tmp/h/.config/containers/policy.json", name))
    assert ev.container_overrides == ("/tmp/h/.config/containers/policy.json", name.decode())
    assert ev.container_overrides_count == 2


@pytest.mark.parametrize("section", [
    "absent\nabsent\n",
    "none\n",
    listing(b"relative/.config/containers/policy.json"),
    listing(b"/a/.config/containers/policy.json", b"/a/.config/containers/policy.json"),
    listing(*[f"/tmp/{i}/.config/containers/policy.json".encode()
              for i in range(LISTED_OVERRIDES + 1)]),
])
def test_malformed_override_listings_are_errors(section: str) -> None:
    with pytest.raises(HostOutputError):
        evidence(container_overrides=section)


def test_an_upper_layer_count_in_other_digits_is_an_error() -> None:
    with pytest.raises(HostOutputError, match="upper layer"):
        evidence(overlay_etc="²\n\n")


def test_workloads_are_sorted_and_joined_with_their_images() -> None:
    section = workloads(
        container_line("web", f"{REGISTRY}/team/app:1", ID_A),
        container_line("db", "localhost/built:1", ID_B, "runc"),
        container_line("rootfs", "", "", "runc"),  # podman run --rootfs: no image at all
        container_line("gone", "x/y:1", "c" * 64),  # its image line is missing
        image_line(ID_B, [LOCAL]), image_line(ID_A, None))
    ev = evidence(workloads=section)
    assert [w.name for w in ev.workloads] == ["db", "gone", "rootfs", "web"]
    by_name = {w.name: w for w in ev.workloads}
    assert by_name["db"].repo_digests == (LOCAL,)
    assert by_name["web"].repo_digests == ()  # Go's nil slice
    assert by_name["gone"].repo_digests == () and by_name["rootfs"].image_id == ""


def test_a_reference_holding_structure_stays_one_value() -> None:
    # podman's `json` escapes quotes, newlines and control characters: a reference that
    # holds JSON or a marker is one string. Control characters are then refused.
    sneaky = 'x:1","runtime":"crun'
    ev = evidence(workloads=workloads(container_line("web", sneaky, ID_A, "runc")))
    assert ev.workloads[0].image_ref == sneaky and ev.workloads[0].runtime == "runc"
    forged = f"x:1\n@@hardhost:{NONCE}:end@@\n"
    with pytest.raises(HostOutputError, match="image"):
        parse(podman_output(NONCE, workloads=workloads(container_line("web", forged, ID_A))),
              "h", nonce=NONCE)


def test_a_raw_newline_cannot_add_a_line_or_a_section() -> None:
    # Output that podman's json function would never print: a raw marker line without
    # this run's nonce stays inside the section, where it is no workloads line.
    raw = workloads(container_line("web", "x:1", ID_A)) + "@@hardhost:end@@\n"
    with pytest.raises(HostOutputError, match="malformed workloads line"):
        parse(podman_output(NONCE, workloads=raw), "h", nonce=NONCE)


def test_lines_end_at_newlines_only() -> None:
    # Go's JSON encoding leaves U+0085 (NEL) raw in a string; str.splitlines() would end a
    # line there. The runtime below stays one value, refused for its control character.
    line = 'container {"name":"web","image_ref":"","image_id":"","runtime":"crun\u0085x"}'
    with pytest.raises(HostOutputError, match="runtime"):
        evidence(workloads=workloads(line))


@pytest.mark.parametrize("body", [
    '{"name":"web","name":"evil","image_ref":"","image_id":"","runtime":"crun"}',
    '{"name":"web","image_ref":"","image_id":"","runtime":"crun","runtime":"runc"}',
])
def test_a_json_key_twice_is_an_error(body: str) -> None:
    with pytest.raises(HostOutputError, match="appears twice"):
        evidence(workloads=f"count 1\ncontainer {body}\n")


def test_an_image_key_twice_is_an_error() -> None:
    body = f'{{"id":"{ID_A}","repo_digests":[],"repo_digests":["{PULLED}"]}}'
    with pytest.raises(HostOutputError, match="appears twice"):
        evidence(workloads=f"count 0\nimage {body}\n")


@pytest.mark.parametrize("section", [
    "",  # no count
    "failed\ncount 0\n",
    "count -1\n",
    "count ²\n",
    "3\n",
    workloads(container_line("web"), count=0),  # more listed than running
    workloads(*[container_line(f"c{i}") for i in range(LISTED_WORKLOADS + 1)]),
    workloads(container_line("web"), container_line("web")),
    workloads(image_line(ID_A, []), image_line(ID_A, [])),
    workloads(image_line(ID_A, []), container_line("web")),  # containers come first
    workloads(container_line("web"), ""),  # an empty line
    workloads("volume {}"),
    workloads("container " + json.dumps({"name": "web"})),  # keys missing
    workloads("container " + json.dumps({"name": "web", "image_ref": "", "image_id": "",
                                         "runtime": "crun", "extra": ""})),
    workloads("container " + json.dumps({"name": 1, "image_ref": "", "image_id": "",
                                         "runtime": "crun"})),
    workloads("container [1, 2]"),
    workloads("container {not json"),
    workloads("container " + '{"name":"web","image_ref":"","image_id":"","runtime":NaN}'),
    workloads(container_line("we b")),  # podman's names: [a-zA-Z0-9][a-zA-Z0-9_.-]*
    workloads(container_line("/web")),
    workloads(container_line("web\nx")),
    workloads(container_line("web", image_id="A" * 64)),
    workloads(container_line("web", runtime="")),
    workloads(container_line("web", runtime="crun\x1b[2K")),
    workloads(container_line("web", image_ref="r" * 5000)),
    workloads(image_line("short", [])),
    workloads(image_line(ID_A, ["not a digest"])),
    workloads(image_line(ID_A, [f"{PULLED}\n"])),
    workloads(image_line(ID_A, [PULLED, PULLED])),
    workloads(image_line(ID_A, [f"r{i}/x@sha256:{'1' * 64}"
                                for i in range(MAX_REPO_DIGESTS + 1)])),
    workloads("image " + json.dumps({"id": ID_A, "repo_digests": "x"})),
    workloads(container_line("web", image_ref="x" * 4000) + " " * MAX_WORKLOAD_LINE),
])
def test_malformed_workloads_are_errors(section: str) -> None:
    with pytest.raises(HostOutputError):
        evidence(workloads=section)


def test_a_workload_list_cut_short_is_counted() -> None:
    lines = [container_line(f"c{i:03d}", "x/y:1", ID_A) for i in range(LISTED_WORKLOADS)]
    ev = evidence(workloads=workloads(*lines, image_line(ID_A, [PULLED]), count=250))
    assert len(ev.workloads) == LISTED_WORKLOADS and ev.workload_count == 250


# The comparison.

def test_a_clean_podman_host_has_no_container_finding() -> None:
    result = examine(podman_manifest(), evidence())
    assert container_findings(podman_manifest(), evidence()) == {}
    held = {check.id for check in result.checks if check.holds}
    assert {f"containers.policy.{POLICY}", "containers.override.found",
            "workloads.truncated", "workload.unverified.web", "workload.registry.web",
            "workload.runtime.web", f"runtime.{CONF}"} <= held
    (record,) = [f for f in result.records if f.id == "container.web"]
    assert record.severity is Severity.INFO
    assert record.observed == (f"image {REGISTRY}/team/app:1\nid {ID_A}\n"
                               f"repo digests {PULLED}\nruntime crun")


def test_policy_files_are_compared_per_path() -> None:
    shortnames = "/etc/containers/registries.conf.d/shortnames.conf"
    ev = evidence(container_policy=policy_section(
        ("9" * 64, POLICY), ("p", KEY), ("6" * 64, CONF), ("8" * 64, shortnames),
        ("8" * 64, "/etc/containers/storage.conf")))
    found = container_findings(podman_manifest(), ev)
    assert set(found) == {f"containers.policy.{p}" for p in (POLICY, REGISTRIES, KEY,
                                                              shortnames)}
    assert found[f"containers.policy.{POLICY}"].observed == "9" * 64
    assert found[f"containers.policy.{REGISTRIES}"].observed == "absent"
    assert found[f"containers.policy.{KEY}"].observed == "a FIFO"
    assert found[f"containers.policy.{shortnames}"].expected == "absent"
    assert all(f.severity is Severity.HIGH for f in found.values())


def test_overrides_and_cut_listings_are_findings() -> None:
    override = "/var/tmp/h/.config/containers/policy.json"
    records = [("3" * 64, POLICY), ("4" * 64, REGISTRIES), ("5" * 64, KEY)]
    ev = evidence(container_overrides=listing(override.encode(), count=150),
                  container_policy=policy_section(*records, count=400))
    found = container_findings(podman_manifest(), ev)
    assert set(found) == {f"containers.override.{override}", "containers.override.truncated",
                          "containers.policy.truncated"}
    assert found["containers.override.truncated"].observed == "1 of 150 listed"


def test_each_kind_of_workload_drift_has_its_id() -> None:
    outside = f"docker.io/library/busybox@sha256:{'3' * 64}"
    section = workloads(
        container_line("built", "localhost/built:1", ID_B),
        container_line("rootfs", "", "", "crun"),
        container_line("hub", "docker.io/library/busybox:1", "c" * 64),
        container_line("odd", f"{REGISTRY}/team/app:1", ID_A, "/tmp/evil-runc"),
        container_line("fine", f"{REGISTRY}/team/app:1", ID_A, "runc"),
        image_line(ID_A, [PULLED]), image_line(ID_B, [LOCAL]), image_line("c" * 64, [outside]),
        count=7)
    found = container_findings(podman_manifest(), evidence(workloads=section))
    assert set(found) == {"workload.unverified.built", "workload.unverified.rootfs",
                          "workload.registry.hub", "workload.runtime.odd",
                          "workloads.truncated"}
    assert found["workload.unverified.built"].observed == LOCAL
    assert found["workload.unverified.rootfs"].observed == "no repository digest"
    assert found["workload.registry.hub"].observed == "docker.io"
    assert found["workload.runtime.odd"].observed == "/tmp/evil-runc"
    assert found["workloads.truncated"].observed == "5 of 7 listed"


def test_no_container_name_makes_its_record_share_a_findings_id() -> None:
    """Container names may hold dots: "runtime.odd" must not be the finding about "odd"."""
    section = workloads(
        container_line("odd", f"{REGISTRY}/team/app:1", ID_A, "/tmp/evil-runc"),
        container_line("runtime.odd", f"{REGISTRY}/team/app:1", ID_A, "runc"),
        image_line(ID_A, [PULLED]))
    result = examine(podman_manifest(), evidence(workloads=section))
    findings = {f.id for f in result.findings if f.counts()}
    records = {f.id for f in result.records}
    assert "workload.runtime.odd" in findings
    assert {"container.odd", "container.runtime.odd"} <= records
    assert not findings & records


def test_an_image_from_any_registry_passes_without_a_list() -> None:
    section = workloads(container_line("hub", "docker.io/library/busybox:1", ID_A),
                        image_line(ID_A, [f"docker.io/library/busybox@sha256:{'3' * 64}"]))
    assert container_findings(podman_manifest(registries=()),
                              evidence(workloads=section)) == {}


def test_an_image_from_one_allowed_registry_among_others_passes() -> None:
    section = workloads(container_line("web", f"{REGISTRY}/team/app:1", ID_A),
                        image_line(ID_A, [LOCAL, f"quay.io/x/y@sha256:{'3' * 64}", PULLED]))
    assert container_findings(podman_manifest(), evidence(workloads=section)) == {}


@pytest.mark.parametrize(("section", "observed"), [
    ("absent\n", "absent"), ("failed\n", "`podman ps` failed: see the script's stderr")])
def test_a_podman_host_whose_podman_says_nothing_is_a_finding(section: str,
                                                              observed: str) -> None:
    found = container_findings(podman_manifest(), evidence(workloads=section))
    assert set(found) == {"workloads.engine"}
    assert found["workloads.engine"].observed == observed


def test_hosts_without_workload_limits_are_not_checked() -> None:
    ev = evidence(container_overrides=listing(b"/tmp/h/.config/containers/policy.json"),
                  workloads=workloads(container_line("built", "localhost/b:1", ID_B),
                                      image_line(ID_B, [LOCAL])))
    manifest = dataclasses.replace(podman_manifest(), workloads={})
    assert container_findings(manifest, ev) == {}
    assert not [f for f in examine(manifest, ev).records if f.id.startswith("workload")]


def test_a_docker_host_is_recorded_not_checked() -> None:
    manifest = dataclasses.replace(podman_manifest(engine=("docker",), runtimes=("runc",)),
                                   runtime_config={}, container_policy={})
    ev = parse(fake_output(), "h")
    assert container_findings(manifest, ev) == {}
    (record,) = [f for f in examine(manifest, ev).records if f.id == "workloads.engine"]
    assert record.severity is Severity.INFO and "not attested" in record.observed


def test_runtime_config_is_compared_per_path() -> None:
    """The bug this fixes: containers.conf was compared with daemon.json's digest."""
    manifest = dataclasses.replace(podman_manifest(), runtime_config={
        CONF: "6" * 64, "/etc/docker/daemon.json": "b" * 64})
    ev = evidence(runtime_config=f"{'6' * 64}  /etc/docker/daemon.json\n")
    found = container_findings(manifest, ev)
    assert set(found) == {f"runtime.{CONF}", "runtime./etc/docker/daemon.json"}
    assert found[f"runtime.{CONF}"].observed == "absent"
    ev = evidence(runtime_config=f"{'6' * 64}  {CONF}\n{'b' * 64}  /etc/docker/daemon.json\n")
    assert container_findings(manifest, ev) == {}


@pytest.mark.parametrize(("reference", "registry"), [
    (PULLED, REGISTRY),
    (LOCAL, "localhost"),
    (f"localhost:5000/x@sha256:{'1' * 64}", "localhost:5000"),
    (f"Registry.Example/x@sha256:{'1' * 64}", "registry.example"),
    (f"[::1]:5000/x@sha256:{'1' * 64}", "[::1]:5000"),
    (f"library/busybox@sha256:{'1' * 64}", "docker.io"),
    (f"busybox@sha256:{'1' * 64}", "docker.io"),
])
def test_the_registry_of_a_reference(reference: str, registry: str) -> None:
    assert registry_of(reference) == registry
