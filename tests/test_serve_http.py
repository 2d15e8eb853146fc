"""hardhost serve's HTTP face against a running service: the token on every endpoint, the
JSON API's filters and pages, actions, an OpenAPI document that validates, /metrics that
prometheus_client's own parser reads, and the dashboard rendered by a real headless
Chromium (its screenshot kept in test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_image_host import RebootableHost, rebootable_host
from tests.support.keys import KeyPair, SigningKeys
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.serve import Setup, receiver, serving, states, stop, wait_for, write_config

pytestmark = pytest.mark.e2e

TOKEN = "an API token that is long enough"
ARTIFACTS = Path(os.environ.get("HARDHOST_TEST_ARTIFACTS", REPO / "test-artifacts"))


@dataclass(frozen=True)
class Api:
    base: str
    setup: Setup
    hosts: dict[str, RebootableHost]

    def call(self, path: str, *, token: str | None = TOKEN, method: str = "GET",
             cookie: str = "") -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if cookie:
            headers["Cookie"] = cookie
        request = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> Any:
        status, body = self.call(path)
        assert status == 200, (path, status, body)
        return json.loads(body)


@pytest.fixture
def api(tmp_path: Path, client_key: KeyPair, signing_keys: SigningKeys) -> Iterator[Api]:
    with ExitStack() as stack:
        hosts = {name: stack.enter_context(rebootable_host(tmp_path / name, client_key))
                 for name in ("web1", "web2", "web3")}
        hook = stack.enter_context(receiver())
        token = tmp_path / "api-token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        port = free_port()
        setup = write_config(tmp_path, hosts, signing_keys, client_key, hook.port,
                             remediation="enabled = false\nmax_concurrent = 1",
                             extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'
                                   'token_file = "api-token"\n')
        process = stack.enter_context(serving(setup))
        wait_for("every host to pass", lambda: states(setup.database) == {
            "web1": "pass", "web2": "pass", "web3": "pass"})
        hosts["web2"].drift()
        wait_for("web2 to drift", lambda: states(setup.database)["web2"] == "drift")
        yield Api(f"http://127.0.0.1:{port}", setup, hosts)
        stop(process)


def test_every_endpoint_needs_the_token(api: Api) -> None:
    for path in ("/api/v1/summary", "/api/v1/hosts", "/api/v1/hosts/web1",
                 "/api/v1/hosts/web1/history", "/openapi.json", "/metrics", "/",
                 "/hosts/web1"):
        for token in (None, "wrong", TOKEN + "x"):
            status, _ = api.call(path, token=token)
            assert status == 401, (path, token)
        # A forged or expired session cookie opens nothing either.
        for cookie in ("hardhost_session=99999999999.00", "hardhost_session=1.abc"):
            assert api.call(path, token=None, cookie=cookie)[0] == 401, (path, cookie)
    for action in ("attest", "reset"):
        status, _ = api.call(f"/api/v1/hosts/web1/{action}", token=None, method="POST")
        assert status == 401
    assert api.hosts["web1"].reboots() == 0


def test_the_api_reports_filters_and_pages_the_fleet(api: Api) -> None:
    summary = api.json("/api/v1/summary")
    assert summary["hosts"] == 3 and summary["by_state"] == {"pass": 2, "drift": 1}
    drifted = api.json("/api/v1/hosts?state=drift")
    assert [h["name"] for h in drifted["hosts"]] == ["web2"] and drifted["total"] == 1
    assert api.json("/api/v1/hosts?group=web")["total"] == 3
    assert api.json("/api/v1/hosts?group=db")["total"] == 0
    assert api.json("/api/v1/hosts?image_version=none")["total"] == 0
    first = api.json("/api/v1/hosts?limit=2")
    assert [h["name"] for h in first["hosts"]] == ["web1", "web2"] and first["next"] == "web2"
    rest = api.json(f"/api/v1/hosts?limit=2&after={first['next']}")
    assert [h["name"] for h in rest["hosts"]] == ["web3"] and rest["next"] is None
    assert api.call("/api/v1/hosts?limit=0")[0] == 422
    assert api.call("/api/v1/hosts?limit=100000")[0] == 422
    host = api.json("/api/v1/hosts/web2")
    assert host["state"] == "drift" and host["groups"] == ["web"]
    assert [f["id"] for f in host["findings"]] == ["sysctl.kernel.kptr_restrict"]
    assert host["last_pass"] and host["failing_since"] is not None
    assert host["advisories"] is None  # no [advisories] feed in this config
    history = api.json("/api/v1/hosts/web2/history?limit=500")["attestations"]
    assert history[0]["status"] == "drift" and history[-1]["status"] == "pass"
    assert api.call("/api/v1/hosts/nosuch")[0] == 404
    assert api.call("/api/v1/hosts/nosuch/reset", method="POST")[0] == 404


def test_openapi_validates_and_metrics_parse(api: Api) -> None:
    document = api.json("/openapi.json")
    validate(document)
    assert {"/api/v1/summary", "/api/v1/hosts", "/api/v1/hosts/{name}",
            "/api/v1/hosts/{name}/history", "/api/v1/hosts/{name}/attest",
            "/api/v1/hosts/{name}/reset"} <= set(document["paths"])
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    status, body = api.call("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    hosts = {s.labels["state"]: s.value for s in families["hardhost_hosts"].samples}
    assert hosts["pass"] == 2 and hosts["drift"] == 1 and hosts["trust"] == 0
    counts = [s for s in families["hardhost_attestation_seconds"].samples
              if s.name.endswith("_count")]
    # Each host passed once, and web2 drifted after: at least four attestations so far.
    assert sum(s.value for s in counts) >= 4


def test_a_reset_asked_for_is_done_and_its_time_shown(api: Api) -> None:
    # The cookie of a browser session is not enough for an action.
    status, _ = api.call("/api/v1/hosts/web2/reset", method="POST")
    assert status == 202
    wait_for("web2 to be remediated", lambda: states(api.setup.database)["web2"] == "pass")
    assert api.hosts["web2"].reboots() == 1
    host = api.json("/api/v1/hosts/web2")
    assert host["state"] == "pass" and 0 < host["last_remediation_seconds"] < 60
    status, body = api.call("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    remediated = [s for s in families["hardhost_remediation_seconds"].samples
                  if s.name.endswith("_count") and s.labels["reset"] == "true"]
    assert [s.value for s in remediated] == [1.0]
    assert api.json("/api/v1/summary")["remediations"]["count"] == 1


def _login_link(api: Api) -> str:
    result = subprocess.run([sys.executable, "-m", "hardhost", "serve", "--login-link",
                             str(api.setup.config)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert TOKEN not in link and link.startswith(api.base + "/login?")
    return link


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    chromium = shutil.which("chromium")
    assert chromium, "make test installs chromium"
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", *args], capture_output=True,
                          text=True, timeout=120)


def test_the_dashboard_shows_the_drifted_host_in_a_real_browser(api: Api,
                                                                  tmp_path: Path) -> None:
    link = _login_link(api)
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", link)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert 'data-host="web2" data-state="drift"' in page  # in the attention table
    assert 'data-host="web1" data-state="pass"' in page
    assert 'data-state="drift"><b>1</b>' in page  # the tile of drifted hosts
    # A forged link, or the same link a second time, signs nobody in.
    for other in (api.base + f"/login?expires=99999999999&nonce={'0' * 32}&ticket=00", link):
        refused = _chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", other)
        assert "not valid, has expired or was used" in refused.stdout, refused.stdout
        assert "data-host" not in refused.stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    shot = _chromium(f"--user-data-dir={tmp_path / 'profile3'}", "--window-size=1280,900",
                     f"--screenshot={screenshot}", _login_link(api))
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written as a TLS server reads them."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hardhost-serve-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .sign(key, hashes.SHA256()))
    cert, private = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    return cert, private


def test_https_serves_with_the_configured_certificate_and_refuses_a_shared_key(
        tmp_path: Path, client_key: KeyPair, signing_keys: SigningKeys) -> None:
    import ssl

    with ExitStack() as stack:
        hosts = {"web1": stack.enter_context(rebootable_host(tmp_path / "web1", client_key))}
        token = tmp_path / "api-token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        cert, key = _self_signed(tmp_path)
        port = free_port()
        setup = write_config(tmp_path, hosts, signing_keys, client_key, free_port(),
                             remediation="enabled = false",
                             extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'
                                   'token_file = "api-token"\ntls_cert = "tls.crt"\n'
                                   'tls_key = "tls.key"\n')
        key.chmod(0o644)
        refused = subprocess.run([sys.executable, "-m", "hardhost", "serve", "--check",
                                  str(setup.config)], cwd=REPO, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 2
        assert refused.stderr.strip().endswith(f"chmod 600 {key}")
        key.chmod(0o600)
        process = stack.enter_context(serving(setup))
        wait_for("web1 to pass", lambda: states(setup.database) == {"web1": "pass"})
        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(f"https://127.0.0.1:{port}/api/v1/summary",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            assert json.loads(response.read())["by_state"] == {"pass": 1}
        # Plain HTTP on the TLS port gets no answer it could read as the API's.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/summary", timeout=10)
        # The login link names https, and the cookie it sets is Secure.
        link = subprocess.run([sys.executable, "-m", "hardhost", "serve", "--login-link",
                               str(setup.config)], cwd=REPO, capture_output=True, text=True,
                              timeout=60).stdout.strip()
        assert link.startswith(f"https://127.0.0.1:{port}/login?")

        class Keep(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(Keep(), urllib.request.HTTPSHandler(
            context=context))
        with pytest.raises(urllib.error.HTTPError) as redirected:
            opener.open(link, timeout=30)
        assert redirected.value.code == 303
        cookie = redirected.value.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        stop(process)
