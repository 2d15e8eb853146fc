"""AK enrollment and quotes against a real swtpm whose EK certificate comes from a local CA
(hardhost.vm.vtpm: swtpm_setup with swtpm_localca), started by the VM harness's own swtpm
launcher and reached through a real loopback sshd for the end-to-end tests; the parsers, the
EK chain check and the registry also run without SSH."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from hardhost.core.errors import TrustError, UsageError
from hardhost.verifier.tpm_ak_quote import attest_tpm, quote, verify
from hardhost.verifier.tpm_ek import load_ca_bundle, trim_nv_padding, verify_ek_certificate
from hardhost.verifier.tpm_enroll import AK_HANDLE, enroll, script
from hardhost.verifier.tpm_public import AkAlgorithm, ak_problems, parse_public
from hardhost.verifier.tpm_quote import (
    QUOTE_PCRS,
    QuoteFormatError,
    new_nonce,
    parse_script_output,
    verify_quote,
)
from hardhost.verifier.tpm_registry import REENROLL_FLAG, AkRegistry, EnrolledAK, HostId
from hardhost.verifier.transport import Session, Target, connect
from hardhost.vm.vtpm import manufacture
from tests.support.keys import KeyPair
from tests.support.sshd import LoopbackHost, start_sshd
from tests.support.tpm import Tpm, serve

DATA = Path(__file__).resolve().parent / "data" / "tpm"
ZEROS = {index: "00" * 32 for index in QUOTE_PCRS}


def target(host: LoopbackHost) -> Target:
    return Target("root", "127.0.0.1", host.port)


def host_id(host: LoopbackHost) -> HostId:
    return HostId.from_known_hosts(target(host), host.known_hosts)


def ek_certificate(tpm: Tpm, work: Path) -> bytes:
    path = work / "ek.crt"
    tpm.swtpm.tool("tpm2_nvread", "-Q", "-o", path, "0x01c00002")
    return path.read_bytes()


def other_ca_bundle(directory: Path, subject: str = "swtpm-localca") -> Path:
    """A self-signed CA with the same name as the local CA's issuer, but its own key."""
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# --- without SSH -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_ak_public_area_name_and_key(kind: str) -> None:
    ak = parse_public((DATA / kind / "ak.pub").read_bytes())
    assert ak.name == (DATA / kind / "ak.name").read_bytes()
    recorded = serialization.load_pem_public_key((DATA / kind / "ak.pem").read_bytes())
    assert ak.public_pem().encode() == recorded.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ak_problems(ak, AkAlgorithm(kind)) == []
    assert ak_problems(ak, AkAlgorithm.ECC if kind == "rsa" else AkAlgorithm.RSA) != []


def _with_attributes(data: bytes, clear: int = 0, add: int = 0) -> bytes:
    # TPM2B_PUBLIC: size (2), type (2), nameAlg (2), then objectAttributes (4).
    attributes = int.from_bytes(data[6:10], "big") & ~clear | add
    return data[:6] + attributes.to_bytes(4, "big") + data[10:]


def test_ak_attributes_are_checked() -> None:
    data = (DATA / "rsa" / "ak.pub").read_bytes()
    good = parse_public(data)
    unrestricted = parse_public(_with_attributes(data, clear=1 << 16, add=1 << 17))
    # The name covers the attributes, so a host cannot report one and use another.
    assert unrestricted.name != good.name
    assert ak_problems(unrestricted, AkAlgorithm.RSA) == ["restricted is clear", "decrypt is set"]
    exportable = parse_public(_with_attributes(data, clear=(1 << 1) | (1 << 4) | (1 << 5)))
    assert ak_problems(exportable, AkAlgorithm.RSA) == [
        "fixedTPM is clear", "fixedParent is clear", "sensitiveDataOrigin is clear"]


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda d: d[:-1], "truncated at size"),
    (lambda d: d + b"\0", "1 trailing bytes"),
    (lambda d: d[:2] + b"\x00\x08" + d[4:], "type 0x0008 is neither RSA nor ECC"),
    (lambda d: d[:4] + b"\x00\x04" + d[6:], "nameAlg 0x0004 is not sha256"),
])
def test_ak_public_area_is_parsed_strictly(edit: Callable[[bytes], bytes],
                                           reason: str) -> None:
    data = (DATA / "rsa" / "ak.pub").read_bytes()
    with pytest.raises(QuoteFormatError, match=reason):
        parse_public(edit(data))


def test_ek_certificate_chains_to_the_local_ca(tpm: Tpm, tmp_path: Path) -> None:
    data = ek_certificate(tpm, tmp_path)
    cert = verify_ek_certificate(data, load_ca_bundle(tpm.ca.bundle))
    # swtpm's EK certificate: empty subject fields aside, a critical SAN with TPM attributes.
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    # Padding some TPMs leave after the certificate in NV is not an error; other bytes are.
    verify_ek_certificate(data + b"\xff" * 24, load_ca_bundle(tpm.ca.bundle))
    with pytest.raises(TrustError, match="5 bytes of data after the certificate"):
        trim_nv_padding(data + b"hello")
    with pytest.raises(TrustError, match="truncated"):
        trim_nv_padding(data[:-1])


def test_ek_certificate_from_another_ca_is_refused(tpm: Tpm, tmp_path: Path) -> None:
    data = ek_certificate(tpm, tmp_path)
    # Same issuer name, different key: a check of names alone would pass this.
    with pytest.raises(TrustError, match="its issuer CN=swtpm-localca is not among the 1 "
                                         "trusted CA certificates"):
        verify_ek_certificate(data, load_ca_bundle(other_ca_bundle(tmp_path)))


def test_ek_chain_must_reach_a_self_signed_ca(tpm: Tpm, tmp_path: Path) -> None:
    data = ek_certificate(tpm, tmp_path)
    issuer_only = load_ca_bundle(tpm.ca.directory / "issuercert.pem")
    with pytest.raises(TrustError, match="CA certificate CN=swtpm-localca: its issuer "
                                         "CN=swtpm-localca-rootca is not among"):
        verify_ek_certificate(data, issuer_only)
    root_only = load_ca_bundle(tpm.ca.directory / "swtpm-localca-rootca-cert.pem")
    with pytest.raises(TrustError, match="add the issuing CA's certificate"):
        verify_ek_certificate(data, root_only)


def test_ek_certificate_validity_is_checked(tpm: Tpm, tmp_path: Path) -> None:
    data = ek_certificate(tpm, tmp_path)
    with pytest.raises(TrustError, match=r"EK certificate .*: valid only from"):
        verify_ek_certificate(data, load_ca_bundle(tpm.ca.bundle),
                              when=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))


def test_the_quote_script_runs_with_a_tcti_from_the_environment(tpm: Tpm,
                                                                tmp_path: Path) -> None:
    """The fixed script, run here with sh as sshd would run it, against an AK persisted at
    a spare handle."""
    swtpm = tpm.swtpm
    swtpm.tool("tpm2_createek", "-Q", "-c", tmp_path / "ek.ctx", "-G", "rsa")
    swtpm.tool("tpm2_flushcontext", "-t")
    swtpm.tool("tpm2_createak", "-Q", "-C", tmp_path / "ek.ctx", "-c", tmp_path / "ak.ctx",
               "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", tmp_path / "ak.pub")
    swtpm.tool("tpm2_flushcontext", "-t")
    handle = "0x81010020"
    if b"0x81010020" in swtpm.tool("tpm2_getcap", "handles-persistent").lower():
        swtpm.tool("tpm2_evictcontrol", "-Q", "-C", "o", "-c", handle)
    swtpm.tool("tpm2_evictcontrol", "-Q", "-C", "o", "-c", tmp_path / "ak.ctx", handle)
    swtpm.tool("tpm2_flushcontext", "-t")
    script = (Path(__file__).resolve().parent.parent / "hardhost" / "verifier"
              / "tpm_script.sh").read_bytes()
    nonce = new_nonce()
    started = time.monotonic()
    done = subprocess.run(["sh", "-s", "--", nonce, handle], input=script, capture_output=True,
                          env={"PATH": os.environ["PATH"], "TPM2TOOLS_TCTI": swtpm.tcti},
                          check=True)
    assert time.monotonic() - started < 5
    parsed = parse_script_output(done.stdout, "local")
    ak = parse_public((tmp_path / "ak.pub").read_bytes())
    assert verify_quote(parsed, ak.public_pem(), nonce, {}).findings == ()
    assert done.stderr == b""
    # Bad arguments stop the script before any TPM command.
    for args in ([nonce.upper(), handle], [nonce, "0x01c00002"], [nonce], [nonce + "0", handle]):
        bad = subprocess.run(["sh", "-s", "--", *args], input=script, capture_output=True,
                             env={"PATH": os.environ["PATH"], "TPM2TOOLS_TCTI": swtpm.tcti})
        assert bad.returncode == 2 and bad.stdout == b""


@pytest.mark.parametrize("step", ["create", "activate"])
def test_the_enrollment_scripts_stop_on_bad_arguments(step: Literal["create", "activate"]
                                                      ) -> None:
    """Each step's script, as the verifier sends it (the shared start, then the step), run
    with sh as sshd would: a bad argument stops it with exit 2 before any TPM command, which
    would fail otherwise (the TCTI names a closed port)."""
    text = script(step).encode()
    rest = ["Y3JlZA==", "Y3R4"] if step == "activate" else []
    env = {"PATH": os.environ["PATH"], "TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=1"}
    for args, reason in ((["0x01c00002", "rsa", *rest], b"AK handle: not a persistent handle"),
                         (["0x81010002", "dsa", *rest], b"algorithm: not rsa or ecc"),
                         (["0x81010002", "rsa", *rest, "extra"], b"usage: sh -s -- HANDLE")):
        bad = subprocess.run(["sh", "-s", "--", *args], input=text, capture_output=True,
                             env=env, timeout=30)
        assert (bad.returncode, bad.stdout) == (2, b""), args
        assert bad.stderr.strip().startswith(reason), bad.stderr


def enrolled(address: str = "127.0.0.1:2222") -> EnrolledAK:
    pem = (DATA / "rsa" / "ak.pem").read_text()
    return EnrolledAK(HostId(address, "SHA256:" + "A" * 43), AK_HANDLE,
                      (DATA / "rsa" / "ak.name").read_bytes().hex(), pem, "ab" * 32,
                      "2026-01-02T03:04:05Z")


def test_registry_round_trip_and_format(tmp_path: Path) -> None:
    registry = AkRegistry(tmp_path / "state" / "aks.json")
    ak = enrolled()
    assert registry.get(ak.host) is None
    registry.put(ak)
    assert registry.get(ak.host) == ak
    assert registry.get(replace(ak.host, ssh_host_key="SHA256:" + "B" * 43)) is None
    data = json.loads(registry.path.read_text())
    assert data["format"] == "hardhost-ak-registry/1"
    entry = data["hosts"][ak.host.key]
    assert entry["ak_handle"] == "0x81010002" and entry["ak_name"].startswith("000b")
    assert sorted(p.name for p in registry.path.parent.iterdir()) == ["aks.json",
                                                                      "aks.json.lock"]


def test_registry_keeps_concurrent_enrollments(tmp_path: Path) -> None:
    registry = AkRegistry(tmp_path / "aks.json")
    threads = [threading.Thread(target=registry.put, args=(enrolled(f"10.0.0.{i}:22"),))
               for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads(registry.path.read_text())["hosts"]) == 20


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda d: d | {"format": "other"}, "format: expected 'hardhost-ak-registry/1'"),
    (lambda d: {**d, "extra": 1}, "hosts: expected an object of hosts and nothing else"),
    (lambda d: {**d, "hosts": {k: {**v, "ak_name": "00"} for k, v in d["hosts"].items()}},
     r"hosts\.127\.0\.0\.1:2222 SHA256:A+\.ak_name: malformed value '00'"),
    (lambda d: {**d, "hosts": {"elsewhere": next(iter(d["hosts"].values()))}},
     "hosts.elsewhere: recorded for"),
])
def test_registry_refuses_a_bad_file(tmp_path: Path,
                                     edit: Callable[[dict[str, Any]], dict[str, Any]],
                                     reason: str) -> None:
    registry = AkRegistry(tmp_path / "aks.json")
    registry.put(enrolled())
    data = json.loads(registry.path.read_text())
    registry.path.write_text(json.dumps(edit(data)))
    with pytest.raises(UsageError, match=reason):
        registry.get(enrolled().host)


# --- over SSH ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """A TPM host over SSH, the trusted CAs for its EK, and an empty AK registry."""

    host: LoopbackHost
    client_key: KeyPair
    cas: tuple[x509.Certificate, ...]
    registry: AkRegistry

    @property
    def id(self) -> HostId:
        return host_id(self.host)

    def session(self) -> AbstractContextManager[Session]:
        return connect(target(self.host), known_hosts=self.host.known_hosts,
                       identity=self.client_key.private, timeout=30)


@pytest.fixture
def remote(tpm: Tpm, tpm_host: LoopbackHost, client_key: KeyPair, tmp_path: Path) -> Remote:
    return Remote(tpm_host, client_key, load_ca_bundle(tpm.ca.bundle),
                  AkRegistry(tmp_path / "aks.json"))


@pytest.mark.e2e
def test_enroll_then_quote_over_ssh(tpm: Tpm, remote: Remote, tmp_path: Path) -> None:
    with remote.session() as session:
        started = time.monotonic()
        ak = enroll(session, remote.cas, remote.registry, remote.id)
        enroll_seconds = time.monotonic() - started
        assert remote.registry.get(remote.id) == ak
        started = time.monotonic()
        result = attest_tpm(session, remote.registry, remote.id, ZEROS)
        quote_seconds = time.monotonic() - started
    assert result.findings == ()
    assert enroll_seconds < 10 and quote_seconds < 3
    # What was recorded is what the TPM holds at the handle.
    tpm.swtpm.tool("tpm2_readpublic", "-Q", "-c", "0x81010002", "-f", "pem", "-o",
                   tmp_path / "held.pem")
    assert (tmp_path / "held.pem").read_text() == ak.public_pem
    assert ak.ek_certificate_sha256 == hashlib.sha256(
        trim_nv_padding(ek_certificate(tpm, tmp_path))).hexdigest()


@pytest.mark.e2e
def test_a_replayed_quote_fails_on_the_nonce(remote: Remote) -> None:
    with remote.session() as session:
        ak = enroll(session, remote.cas, remote.registry, remote.id)
        old_nonce = new_nonce()
        old = quote(session, ak, old_nonce)
    assert verify(old, ak, old_nonce, ZEROS).findings == ()
    fresh = new_nonce()
    result = verify(old, ak, fresh, ZEROS)
    assert [f.id for f in result.findings] == ["tpm.nonce"]
    assert result.findings[0].expected == fresh


@pytest.mark.e2e
def test_another_ak_is_a_trust_error_until_reenrolled(remote: Remote, tmp_path: Path) -> None:
    registry, host = remote.registry, remote.id
    with remote.session() as session:
        first = enroll(session, remote.cas, registry, host)
        # Someone with root on the host makes a new AK at the same handle (here, through an
        # enrollment the verifier's registry never sees), an ECC one this time.
        enroll(session, remote.cas, AkRegistry(tmp_path / "elsewhere.json"), host,
               algorithm=AkAlgorithm.ECC)
        with pytest.raises(TrustError) as refused:
            attest_tpm(session, registry, host, ZEROS)
        message = str(refused.value)
        assert message.startswith(f"{host.address}: the TPM quote is not signed by the AK "
                                  f"enrolled on {first.enrolled_at}")
        assert REENROLL_FLAG in message and "\n" not in message
        assert refused.value.exit_code == 4
        # Enrolling again is refused unless asked for explicitly.
        with pytest.raises(UsageError, match=f"re-enroll explicitly with {REENROLL_FLAG}"):
            enroll(session, remote.cas, registry, host)
        second = enroll(session, remote.cas, registry, host, reenroll=True,
                        algorithm=AkAlgorithm.ECC)
        assert second.name != first.name and registry.get(host) == second
        assert attest_tpm(session, registry, host, ZEROS).findings == ()


@pytest.mark.e2e
def test_enrollment_refuses_an_ek_from_another_ca(tpm: Tpm, remote: Remote,
                                                  tmp_path: Path) -> None:
    before = tpm.swtpm.tool("tpm2_getcap", "handles-persistent")
    with remote.session() as session, \
            pytest.raises(TrustError, match="EK certificate: its issuer CN=swtpm-localca is not"):
        enroll(session, load_ca_bundle(other_ca_bundle(tmp_path)), remote.registry, remote.id)
    assert not remote.registry.path.exists()
    # Nothing persistent changed on the host: the AK is persisted only after activation.
    assert tpm.swtpm.tool("tpm2_getcap", "handles-persistent") == before


@pytest.mark.e2e
def test_enrollment_never_evicts_a_key_that_is_not_an_ak(tpm: Tpm, remote: Remote,
                                                         tmp_path: Path) -> None:
    """An EK persisted where the AK would go (makers may put an ECC EK at 0x81010002) stays."""
    handle = "0x81010030"
    swtpm = tpm.swtpm
    swtpm.tool("tpm2_createek", "-Q", "-c", tmp_path / "ek.ctx", "-G", "rsa")
    swtpm.tool("tpm2_evictcontrol", "-Q", "-C", "o", "-c", tmp_path / "ek.ctx", handle)
    swtpm.tool("tpm2_flushcontext", "-t")
    try:
        with remote.session() as session, pytest.raises(
                UsageError, match=f"handle {handle} holds an object that is not an attestation "
                                  f"key \\(not a restricted signing key\\)"):
            enroll(session, remote.cas, remote.registry, remote.id, handle=int(handle, 16))
        assert handle.encode() in swtpm.tool("tpm2_getcap", "handles-persistent").lower()
        assert not remote.registry.path.exists()
    finally:
        swtpm.tool("tpm2_evictcontrol", "-Q", "-C", "o", "-c", handle)


@pytest.mark.e2e
def test_the_ak_survives_a_reboot_and_the_quote_proves_it(tpm: Tpm, remote: Remote) -> None:
    with remote.session() as session:
        enroll(session, remote.cas, remote.registry, remote.id)
        before = attest_tpm(session, remote.registry, remote.id, ZEROS).clock_info
    tpm.swtpm.restart()
    with remote.session() as session:
        after = attest_tpm(session, remote.registry, remote.id, ZEROS).clock_info
    assert before is not None and after is not None
    assert after.rebooted_since(before) and not before.rebooted_since(after)


@pytest.mark.e2e
def test_an_ek_certificate_of_another_tpm_fails_activation(tpm: Tpm, client_key: KeyPair,
                                                           tmp_path: Path) -> None:
    """A host whose NV holds a genuine EK certificate from the trusted CA, but of another
    TPM: the chain holds, and only credential activation can tell."""
    manufacture(tmp_path / "other", tpm.ca)
    other = serve(tmp_path / "other")
    try:
        foreign = ek_certificate(Tpm(other, tpm.ca), tmp_path)
    finally:
        other.stop()
    manufacture(tmp_path / "state", tpm.ca)
    swtpm = serve(tmp_path / "state")
    try:
        # swtpm leaves the platform hierarchy's auth empty, so the test can play the maker.
        (tmp_path / "foreign.crt").write_bytes(foreign)
        swtpm.tool("tpm2_nvundefine", "-C", "p", "0x01c00002")
        swtpm.tool("tpm2_nvdefine", "-C", "p", "-s", str(len(foreign)), "-a",
                   "ppwrite|ppread|ownerread|authread|no_da|platformcreate", "0x01c00002")
        swtpm.tool("tpm2_nvwrite", "-C", "p", "-i", tmp_path / "foreign.crt", "0x01c00002")
        running = start_sshd(tmp_path / "sshd", client_key, extra_config=(
            f"Match all\n    SetEnv SHLVL=1 TPM2TOOLS_TCTI={swtpm.tcti}\n"))
        try:
            remote = Remote(running.host, client_key, load_ca_bundle(tpm.ca.bundle),
                            AkRegistry(tmp_path / "aks.json"))
            with remote.session() as session, \
                    pytest.raises(TrustError, match=r"credential activation failed .*; the AK "
                                                    "is not proven to be in the TPM of the "
                                                    "certified EK"):
                enroll(session, remote.cas, remote.registry, remote.id)
            assert not remote.registry.path.exists()
            assert b"0x81010002" not in swtpm.tool("tpm2_getcap", "handles-persistent").lower()
        finally:
            running.stop()
    finally:
        swtpm.stop()
