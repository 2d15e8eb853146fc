"""The verifier service's HTTP face, on FastAPI: the JSON API (summary, hosts paginated and
filtered, one host's verdict history, actions to attest or reset a host now), its OpenAPI
document, Prometheus' /metrics, and the dashboard's pages (`hardhost.faces.dashboard`).

Every endpoint needs the bearer token, `/openapi.json` and `/metrics` included. A browser
cannot send a bearer header, so the dashboard signs in with a short-lived login link that
`hardhost serve --login-link` prints: an HMAC of its expiry under the token, never the token
itself. The session cookie it sets is HMAC-signed the same way, and opens GET requests only:
an action still needs the bearer header, so a page elsewhere cannot make a browser reset a
host (and the cookie is SameSite=Strict besides).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hardhost.verifier import ServiceRequest, ServiceStore

SESSION_COOKIE = "hardhost_session"
SESSION_SECONDS = 12 * 3600
LOGIN_LINK_SECONDS = 300
MAX_PAGE = 1000
_NONCE = re.compile(r"[0-9a-f]{32}")
# Host names are inventory names: no control characters, bounded.
_NAME = Query(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")


class Actions(Protocol):
    def attest_now(self, name: str) -> ServiceRequest: ...

    def reset_now(self, name: str) -> ServiceRequest: ...


def _mac(token: bytes, purpose: str, expires: int, nonce: str = "") -> str:
    message = f"{purpose}:{expires}" + (f":{nonce}" if nonce else "")
    return hmac.new(token, message.encode(), hashlib.sha256).hexdigest()


def login_query(token: bytes, now: float | None = None) -> str:
    """The query of a login link, valid once, for `LOGIN_LINK_SECONDS`."""
    expires = int(now if now is not None else time.time()) + LOGIN_LINK_SECONDS
    nonce = secrets.token_hex(16)
    return f"expires={expires}&nonce={nonce}&ticket={_mac(token, 'login', expires, nonce)}"


def _valid(token: bytes, purpose: str, expires: str, mac: str, nonce: str = "") -> bool:
    if not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
        return False
    return hmac.compare_digest(_mac(token, purpose, int(expires), nonce), mac)


_bearer = HTTPBearer(auto_error=False, description="the token of the config's http.token_file")


def make_app(store: ServiceStore, actions: Actions, metrics: Callable[[], bytes],
             token: bytes, *, secure_cookie: bool) -> FastAPI:
    app = FastAPI(title="hardhost serve", version="1",
                  description="The continuous verifier's fleet state and actions.",
                  openapi_url=None, docs_url=None, redoc_url=None)

    def bearer(credentials: HTTPAuthorizationCredentials | None) -> bool:
        return credentials is not None and hmac.compare_digest(
            credentials.credentials.encode(), token)

    def reader(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None,
                                      Depends(_bearer)]) -> None:
        """A GET: the bearer token, or the dashboard's session cookie."""
        if bearer(credentials):
            return
        expires, _, mac = request.cookies.get(SESSION_COOKIE, "").partition(".")
        if not _valid(token, "session", expires, mac):
            raise HTTPException(401, "a bearer token is needed",
                                headers={"WWW-Authenticate": "Bearer"})

    def actor(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                     Depends(_bearer)]) -> None:
        """An action: the bearer token only."""
        if not bearer(credentials):
            raise HTTPException(401, "a bearer token is needed",
                                headers={"WWW-Authenticate": "Bearer"})

    read = [Depends(reader)]
    act = [Depends(actor)]

    @app.get("/openapi.json", dependencies=read, include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/metrics", dependencies=read, include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/v1/summary", dependencies=read)
    def summary() -> dict[str, Any]:
        """Hosts by state and by image version, the last attestation, remediation times."""
        return store.summary()

    @app.get("/api/v1/hosts", dependencies=read)
    def hosts(state: str | None = None, group: str | None = None,
              image_version: str | None = None, after: Annotated[str, _NAME] = "",
              limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> dict[str, Any]:
        """A page of hosts by name. `next` is the `after` of the next page (null at the
        end)."""
        found, total = store.hosts(state=state, group=group, image_version=image_version,
                                   after=after, limit=limit)
        return {"hosts": [h.to_dict() for h in found], "total": total,
                "next": found[-1].name if len(found) == limit else None}

    @app.get("/api/v1/hosts/{name}", dependencies=read)
    def host(name: str) -> dict[str, Any]:
        """One host: its state, image version, last pass and current findings, and the known
        vulnerabilities of its image when it last passed (null unless the service watches
        a feed)."""
        found = store.host(name)
        if found is None:
            raise HTTPException(404, "no such host")
        return {**found.to_dict(), "advisories": store.exposure(name)}

    @app.get("/api/v1/hosts/{name}/history", dependencies=read)
    def history(name: str,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> dict[str, Any]:
        """The host's verdicts, newest first."""
        if store.host(name) is None:
            raise HTTPException(404, "no such host")
        return {"host": name, "attestations": [a.to_dict() for a in
                                               store.history(name, limit)]}

    def _act(outcome: ServiceRequest) -> JSONResponse:
        if outcome is ServiceRequest.UNKNOWN:
            raise HTTPException(404, "no such host in the inventory")
        if outcome is ServiceRequest.BUSY:
            raise HTTPException(409, outcome.value)
        return JSONResponse({"queued": True}, status_code=202)

    @app.post("/api/v1/hosts/{name}/attest", dependencies=act, status_code=202)
    def attest_now(name: str) -> JSONResponse:
        """Attest the host now, not at its next interval."""
        return _act(actions.attest_now(name))

    @app.post("/api/v1/hosts/{name}/reset", dependencies=act, status_code=202)
    def reset_now(name: str) -> JSONResponse:
        """Attest the host now and, if it drifted, reset it by reboot (within the reset
        budget, whatever the remediation policy)."""
        return _act(actions.reset_now(name))

    @app.get("/login", include_in_schema=False)
    def login(expires: str = "", nonce: str = "", ticket: str = "") -> Response:
        # A link is good for one sign-in: one copied from a browser's history, a proxy's
        # log or a shoulder opens nothing once used. The database remembers it for every
        # worker until it expires.
        if (not _NONCE.fullmatch(nonce) or not _valid(token, "login", expires, ticket, nonce)
                or not store.use_once(f"login:{nonce}", float(expires))):
            return Response("This login link is not valid, has expired or was used: print a "
                            "new one with hardhost serve --login-link CONFIG\n",
                            status_code=401, media_type="text/plain")
        until = int(time.time()) + SESSION_SECONDS
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, f"{until}.{_mac(token, 'session', until)}",
                            max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                            secure=secure_cookie)
        return response

    from hardhost.faces.dashboard import routes
    app.include_router(routes(store), dependencies=read)
    return app
