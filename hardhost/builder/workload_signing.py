"""Sign a container image for a podman host: a thin wrapper around `skopeo copy --sign-by`.

skopeo makes the GPG simple signing signature and writes it into a lookaside folder; this
module only chooses that folder so that it agrees with what the host reads
(`hardhost.builder.containers.lookaside_url`: each registry's signatures under
`BASE/REGISTRY`), and pins what is signed when a digest is given. No signature format is
written here.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hardhost.builder.containers import REGISTRY_RE, lookaside_url
from hardhost.core.errors import UsageError
from hardhost.core.run import run

log = logging.getLogger(__name__)

# REGISTRY/REPOSITORY:TAG, as docker references are written (distribution's reference
# grammar, lower-case path components); the registry part is what the host's policy names.
_PATH_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                      r"[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A GPG key's fingerprint (v4: 40 hex digits); never a user id or short id, which
# gpg would match loosely against any key in the keyring.
_FINGERPRINT_RE = re.compile(r"[0-9A-Fa-f]{40}")
# skopeo evaluates a policy on the image it reads; the signer has already chosen to trust
# the image it signs (pin it with a digest), so the source is accepted as it is.
_SIGNER_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def parse_reference(text: str) -> Reference:
    """`REGISTRY/REPOSITORY:TAG`, always with its registry: a signature names the image's
    full reference, and the host's policy is per registry."""
    registry, slash, rest = text.partition("/")
    repository, colon, tag = rest.rpartition(":")
    if (not slash or not colon or not REGISTRY_RE.fullmatch(registry)
            or not _PATH_RE.fullmatch(repository) or not _TAG_RE.fullmatch(tag)):
        raise UsageError(f"{text[:120]!r}: expected REGISTRY/REPOSITORY:TAG, such as "
                         "registry.example:5000/team/app:1.4 (lower case, with a tag)")
    return Reference(registry, repository, tag)


def sign(reference: Reference, *, fingerprint: str, lookaside: Path,
         digest: str | None = None, gnupg_home: Path | None = None,
         tls_verify: bool = True, authfile: Path | None = None,
         passphrase_file: Path | None = None, identity: Reference | None = None) -> str:
    """Sign the image at `reference` (or, with `digest`, the image of that digest, then
    tagged `reference`) with the GPG key `fingerprint`, writing the signature under
    `lookaside/REGISTRY/`. With `identity`, the signature names that reference instead,
    and lives under its registry's folder: hosts that reach the registry by another name
    (a mirror, a NAT address) pull by that name, and the policy checks it. Returns the
    digest that was signed."""
    if not _FINGERPRINT_RE.fullmatch(fingerprint):
        raise UsageError(f"--key {fingerprint[:60]!r}: give the key's fingerprint (40 hex "
                         "digits, from gpg --list-keys --with-colons)")
    if digest is not None and not _DIGEST_RE.fullmatch(digest):
        raise UsageError(f"--digest {digest[:80]!r}: expected sha256: and 64 lower-case hex "
                         "digits")
    if not lookaside.is_dir():
        raise UsageError(f"{lookaside}: the lookaside folder does not exist; create it, or "
                         "name the local copy of the host's containers.lookaside")
    named = identity or reference
    folder = lookaside.resolve() / named.registry
    source = (f"docker://{reference.registry}/{reference.repository}@{digest}" if digest
              else f"docker://{reference}")
    env = {"GNUPGHOME": str(gnupg_home)} if gnupg_home is not None else None
    with tempfile.TemporaryDirectory(prefix="hardhost-sign-") as scratch:
        work = Path(scratch)
        (work / "policy.json").write_text(json.dumps(_SIGNER_POLICY))
        registries_d = work / "registries.d"
        registries_d.mkdir()
        url = lookaside_url(lookaside.resolve().as_uri(), named.registry)
        (registries_d / "signer.yaml").write_text(
            f"docker:\n  {json.dumps(reference.registry)}:\n    lookaside: {json.dumps(url)}\n")
        verify = "true" if tls_verify else "false"
        argv: list[str | Path] = [
            "skopeo", "--policy", work / "policy.json", "--registries.d", registries_d,
            "copy", "--preserve-digests", "--sign-by", fingerprint,
            f"--src-tls-verify={verify}", f"--dest-tls-verify={verify}",
            "--digestfile", work / "digest"]
        if authfile is not None:
            argv += ["--authfile", authfile]
        if passphrase_file is not None:  # stdin is closed: gpg cannot ask for it
            argv += ["--sign-passphrase-file", passphrase_file]
        if identity is not None:
            argv += ["--sign-identity", str(identity)]
        # Copying the image onto its own reference uploads nothing new (the registry has
        # every blob) and makes skopeo sign the manifest it writes, byte for byte the same.
        run([*argv, source, f"docker://{reference}"], env=env, timeout=600)
        signed = (work / "digest").read_text().strip()
    log.info("signed %s (%s) as %s with %s; signatures under %s", reference, signed, named,
             fingerprint, folder)
    return signed
