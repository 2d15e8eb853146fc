"""The spec's `[containers]` section: the container engine, which images it may pull, and the
OCI runtimes it may run them under.

Declared like every other section (`hardhost.core.settings`), and checked against the rest of
the spec and the files it names when the spec is read, so that a bad setting is one
`FILE: containers.KEY: what is wrong` line before anything is built.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardhost.core.errors import SpecError, UsageError
from hardhost.core.inputs import read_text
from hardhost.core.settings import Invalid, show, str_list, text, without_later_defaults
from hardhost.core.settings import declare as _help


class Engine(enum.StrEnum):
    DOCKER = "docker"
    PODMAN = "podman"


# A registry is a host and an optional port, as the first part of an image reference and a
# scope of policy.json's `docker` transport: lower-case DNS labels or an IPv4 address. No
# path: the policy and the signature store are per registry, and a namespace inside one
# would need its own lookaside too. Used with fullmatch.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
REGISTRY_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?")
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_URL_RE = re.compile(r"(https?|file)://[!-~]+")
# The packages each engine needs on the host (Debian 12's names).
ENGINE_PACKAGES = {Engine.DOCKER: "docker.io", Engine.PODMAN: "podman"}
# The OCI runtime each engine runs containers under unless told otherwise: podman 4.3's
# containers.conf default (containers/common 0.50) and dockerd's built-in one.
ENGINE_RUNTIME = {Engine.DOCKER: "runc", Engine.PODMAN: "crun"}
# The OCI runtimes an engine may be given, by name, with the binary each is registered
# under; each is installed by the Debian 12 package of the same name. runsc is gVisor
# (release 20221219), whose Sentry serves containers' system calls in user space.
RUNTIMES: Mapping[str, str] = {
    "crun": "/usr/bin/crun",
    "runc": "/usr/bin/runc",
    "runsc": "/usr/bin/runsc",
}
# ASCII-armored OpenPGP blocks (RFC 4880, 6.2), as `gpg --armor --export` writes them.
PGP_PUBLIC = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
PGP_PRIVATE = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
PEM_PUBLIC = "-----BEGIN PUBLIC KEY-----"
MAX_KEY_BYTES = 64 << 10
# Debian 12 built containers/image (podman 4.3, skopeo 1.9) without sigstore: skopeo's
# --sign-by-sigstore-private-key fails with "sigstore disabled" and podman refuses every image
# under a sigstoreSigned requirement, so such a key would lock the host out, not protect it.
SIGSTORE_REFUSED = ("a sigstore (cosign) public key; Debian 12's podman and skopeo are built "
                    "without sigstore and would refuse every image: use a GPG key "
                    "(gpg --armor --export FINGERPRINT)")
# runsc 20221219 (Debian 12) runs on its ptrace platform without KVM: its sentry attaches to
# stub processes it has just made, which Yama's scope 1 allows (a parent traces its
# descendants) and the hardened baseline's 2 (CAP_SYS_PTRACE only) refuses: every sandbox
# then panics with "unable to attach: operation not permitted" (seen in a booted image).
BASELINE_PTRACE_SCOPE = "2"
RUNSC_PTRACE = ("runsc's ptrace platform traces its own stub processes, which the baseline's "
                "kernel.yama.ptrace_scope = 2 refuses, so no sandbox would start: set "
                "[sysctl] \"kernel.yama.ptrace_scope\" = 1 (tracing only of descendants)")
DOCKER_REFUSED = ("dockerd pulls whatever a client asks for (Docker's content trust is "
                  "checked only in the docker client), so the image could not enforce it: "
                  "set containers.engine = \"podman\"")


def _registries(value: Any) -> tuple[str, ...]:
    names = str_list(value)
    for name in names:
        if not REGISTRY_RE.fullmatch(name):
            raise Invalid(f"{show(name)}: a registry is HOST or HOST:PORT in lower case "
                          "(registry.example:5000), without a scheme, path or spaces")
        port = name.partition(":")[2]
        if port and not 1 <= int(port) <= 65535:
            raise Invalid(f"{show(name)}: the port is outside 1..65535")
    if len(set(names)) != len(names):
        raise Invalid("lists a registry twice")
    return tuple(names)


def _key_paths(value: Any) -> tuple[str, ...]:
    paths = [text(path) for path in str_list(value)]
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".pub"):
            raise Invalid(f"{show(path)}: {SIGSTORE_REFUSED}")
        if not _KEY_NAME_RE.fullmatch(name):
            raise Invalid(f"{show(path)}: expected the path of a file named with letters, "
                          "digits and ._- (its name inside the image)")
    names = [path.rsplit("/", 1)[-1] for path in paths]
    if len(set(names)) != len(names):
        raise Invalid("two keys share a file name; each is installed as "
                      "/etc/containers/keys/NAME")
    return tuple(paths)


def _runtime_names(value: Any) -> tuple[str, ...]:
    names = [text(name) for name in str_list(value)]
    for name in names:
        if name not in RUNTIMES:
            raise Invalid(f"{show(name)} is not a runtime hardhost knows (known: "
                          f"{', '.join(RUNTIMES)})")
    if len(set(names)) != len(names):
        raise Invalid("lists a runtime twice")
    return tuple(names)


def _default_runtime(value: Any) -> str:
    name = text(value)
    if name and name not in RUNTIMES:
        raise Invalid(f"{show(name)} is not a runtime hardhost knows (known: "
                      f"{', '.join(RUNTIMES)}); leave it empty for the engine's own")
    return name


def _lookaside(value: Any) -> str:
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise Invalid(f"{show(value)}: expected an http://, https:// or file:// URL without "
                      "spaces")
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "file" and not parsed.hostname:
        raise Invalid(f"{show(value)}: the URL names no host")
    if parsed.query or parsed.fragment:
        raise Invalid(f"{show(value)}: a signature store's base URL has no '?' or '#' part")
    return value


@dataclass(frozen=True)
class Containers:
    """The container engine, the only images it may pull, and the runtimes it may run them
    under."""

    engine: Engine = field(default=Engine.DOCKER, metadata=_help(
        "`docker` (dockerd, containerd, runc: installed when `packages.include` lists "
        "`docker.io`) or `podman` (list `podman`, and no `docker.io`); only podman can be made "
        "to pull signed images only"))
    allowed_registries: tuple[str, ...] = field(default=(), metadata=_help(
        "podman only: the registries (`HOST` or `HOST:PORT`) images may be pulled from, each "
        "image signed by one of `signing_keys`; any other image, transport, `podman load` or "
        "`import` is refused (`/etc/containers/policy.json`). Empty: the package's policy, "
        "which accepts anything", _registries,
        schema={"uniqueItems": True, "items": {
            "type": "string", "pattern": f"^(?:{REGISTRY_RE.pattern})(?![\\s\\S])"}}))
    signing_keys: tuple[str, ...] = field(default=(), metadata=_help(
        "ASCII-armored GPG public keys (`gpg --armor --export`), relative to the spec, "
        "installed as `/etc/containers/keys/NAME`; an image signed by any one of them is "
        "accepted. Sigstore keys (`.pub`) are refused: Debian 12's podman cannot verify them",
        _key_paths))
    lookaside: str = field(default="", metadata=_help(
        "base URL of the signature store (`http(s)://` or `file://`); registry `R`'s "
        "signatures are read from `BASE/R/`, since a store's paths do not name the registry",
        _lookaside))
    runtimes: tuple[str, ...] = field(default=(), metadata=_help(
        "OCI runtimes registered with the engine besides its own (podman: `crun`, docker: "
        "`runc`), each from the Debian package of its name, which `packages.include` must "
        "list: `runsc` (gVisor: a user-space kernel between containers and the host's), "
        "`crun`, `runc`. A container picks one with `--runtime NAME`", _runtime_names,
        schema={"uniqueItems": True, "items": {"type": "string", "enum": list(RUNTIMES)}}))
    default_runtime: str = field(default="", metadata=_help(
        "the runtime containers run under without `--runtime`: the engine's own, or one of "
        "`runtimes`. Empty: the engine's own", _default_runtime,
        schema={"pattern": f"^(?:{'|'.join(RUNTIMES)})?$"}))

    @property
    def enforces_signatures(self) -> bool:
        return bool(self.allowed_registries)

    @property
    def base_runtime(self) -> str:
        return ENGINE_RUNTIME[self.engine]

    @property
    def allowed_runtimes(self) -> tuple[str, ...]:
        """Every runtime the engine has registered: its own and `runtimes`, sorted."""
        return tuple(sorted({self.base_runtime, *self.runtimes}))

    @property
    def sets_runtimes(self) -> bool:
        return bool(self.runtimes or self.default_runtime)


# Keys added once specs with a [containers] section were signed: left out of the canonical
# form while unset, so that those specs keep their digest.
_LATER_KEYS = ("runtimes", "default_runtime")


def canonical(containers: Containers) -> dict[str, Any] | None:
    """`[containers]` as the spec's digest holds it: None for the default section (specs from
    before it), and without the keys added later while they are unset."""
    if containers == Containers():
        return None
    return without_later_defaults(containers, _LATER_KEYS)


def lookaside_url(base: str, registry: str) -> str:
    """Where `registry`'s signatures live: lookaside paths hold the repository and digest
    but not the registry's host, so two registries sharing one base would overwrite each
    other's signatures; each gets a folder of its own."""
    return f"{base.rstrip('/')}/{registry}"


def key_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def read_key(spec_dir: Path, path: str, origin: str) -> str:
    """The armored GPG public key at `path` (relative to `spec_dir`), or a `SpecError`."""
    key = "containers.signing_keys"
    try:
        text = read_text(spec_dir / Path(path).expanduser(), what="signing key",
                         limit=MAX_KEY_BYTES)
    except UsageError as exc:  # missing, a FIFO or device, too large, not UTF-8 (binary)
        raise SpecError(origin, key, f"{exc}; export keys armored: "
                        "gpg --armor --export FINGERPRINT > FILE") from None
    if PGP_PRIVATE in text:
        raise SpecError(origin, key, f"{show(path)} holds a private key, which must never "
                        "enter the image; export the public one: gpg --armor --export "
                        "FINGERPRINT > FILE")
    if PEM_PUBLIC in text:
        raise SpecError(origin, key, f"{show(path)}: {SIGSTORE_REFUSED}")
    if not text.lstrip().startswith(PGP_PUBLIC):
        raise SpecError(origin, key, f"{show(path)} is not an ASCII-armored GPG public key; "
                        "export it with: gpg --armor --export FINGERPRINT > FILE")
    return text


def validate(containers: Containers, packages: tuple[str, ...], sysctls: Mapping[str, str],
             origin: str) -> None:
    """Check `[containers]` against the packages and the sysctls. The key files are read
    when the policy is rendered (`hardhost.builder.container_policy`), which a build does
    before it starts."""
    engine = containers.engine
    wanted = ENGINE_PACKAGES[engine]
    if engine is Engine.PODMAN and wanted not in packages:
        raise SpecError(origin, "containers.engine",
                        "podman is not in packages.include; add podman and a runtime (crun)")
    if engine is Engine.PODMAN and ENGINE_PACKAGES[Engine.DOCKER] in packages:
        raise SpecError(origin, "packages.include",
                        "docker.io with containers.engine = \"podman\": dockerd would pull "
                        "images past podman's policy; remove it")
    _validate_runtimes(containers, packages, sysctls, origin)
    if engine is Engine.DOCKER:
        for name in ("allowed_registries", "signing_keys", "lookaside"):
            if getattr(containers, name):
                raise SpecError(origin, f"containers.{name}", DOCKER_REFUSED)
        return
    given = {name: bool(getattr(containers, name))
             for name in ("allowed_registries", "signing_keys", "lookaside")}
    if any(given.values()) and not all(given.values()):
        missing = next(name for name, present in given.items() if not present)
        raise SpecError(origin, f"containers.{missing}",
                        "is required with the others: allowed_registries, the signing_keys "
                        "their images are signed with, and the lookaside signatures are "
                        "read from")


def _validate_runtimes(containers: Containers, packages: tuple[str, ...],
                       sysctls: Mapping[str, str], origin: str) -> None:
    if not containers.sets_runtimes:
        return
    engine = containers.engine
    if engine is Engine.DOCKER and ENGINE_PACKAGES[engine] not in packages:
        key = "containers.runtimes" if containers.runtimes else "containers.default_runtime"
        raise SpecError(origin, key, "the image has no container engine to register a runtime "
                        "with: add docker.io to packages.include, or set containers.engine = "
                        "\"podman\" and add podman")
    base = containers.base_runtime
    if base in containers.runtimes:
        raise SpecError(origin, "containers.runtimes",
                        f"{base} is {engine}'s own runtime, registered already; list only the "
                        "others")
    for name in containers.runtimes:
        if name not in packages:
            raise SpecError(origin, "containers.runtimes",
                            f"{name} is not installed; add {name} to packages.include")
    scope = sysctls.get("kernel.yama.ptrace_scope", BASELINE_PTRACE_SCOPE)
    if "runsc" in containers.runtimes and scope not in ("0", "1"):
        raise SpecError(origin, "containers.runtimes", RUNSC_PTRACE)
    default = containers.default_runtime
    if default and default not in containers.allowed_runtimes:
        raise SpecError(origin, "containers.default_runtime",
                        f"{default} is neither {engine}'s own runtime ({base}) nor in "
                        f"containers.runtimes; add it there, or leave default_runtime empty")
