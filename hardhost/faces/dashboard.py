"""The dashboard: server-rendered pages of the fleet (states at a glance, the hosts that need
attention, every host a page at a time) and of one host (its findings and history). Every
page is a few indexed queries and one page of rows, so it stays fast at 10,000 hosts."""

from __future__ import annotations

import urllib.parse
from typing import Annotated

import jinja2
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse

from hardhost.verifier import ServiceStore

PAGE = 100
STATES = ("pass", "drift", "unreachable", "trust", "error", "unknown")
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("hardhost.faces", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)
# Jinja's urlencode keeps "/", so a host named "../../metrics" would link elsewhere; a host's
# name is one path segment.
_ENV.filters["segment"] = lambda value: urllib.parse.quote(str(value), safe="")


def routes(store: ServiceStore) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    def fleet(state: Annotated[str | None, Query(max_length=20)] = None,
              after: Annotated[str, Query(max_length=255)] = "") -> str:
        summary = store.summary()
        attention: list[object] = []
        for failing in ("trust", "drift", "unreachable", "error"):
            found, _ = store.hosts(state=failing, limit=PAGE)
            attention += found
        page, total = store.hosts(state=state or None, after=after, limit=PAGE)
        return _ENV.get_template("fleet.html.j2").render(
            summary=summary, states=STATES, attention=attention[:PAGE], hosts=page,
            total=total, state=state or "", after=after,
            next=page[-1].name if len(page) == PAGE else None)

    # `:path`: the server decodes %2F before routing, and a name may hold a slash.
    @router.get("/hosts/{name:path}", response_class=HTMLResponse)
    def host(name: str) -> str:
        found = store.host(name)
        if found is None:
            raise HTTPException(404, "no such host")
        return _ENV.get_template("host.html.j2").render(
            host=found, history=store.history(name, PAGE), advisories=store.exposure(name))

    return router
