"""Docker's own security profiles, as Debian ships moby's sources in
golang-github-docker-docker-dev (`make deps` installs it), for tests that compare hardhost's
defaults with Docker's."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest

MOBY_PACKAGE = "golang-github-docker-docker-dev"
MOBY = Path("/usr/share/gocode/src/github.com/docker/docker/profiles")
SECCOMP_DEFAULT = MOBY / "seccomp" / "default.json"
APPARMOR_TEMPLATE = MOBY / "apparmor" / "template.go"

# What docker-default is rendered with: dockerd's own profile name, no includes (moby then
# defines @{PROC} itself, so the text stands alone), and an apparmor_parser version (3.0.8,
# Debian 12's) past both of the template's version gates.
_RENDER: dict[str, str | int | list[str]] = {
    "Name": "docker-default", "DaemonProfile": "unconfined",
    "Imports": ["@{PROC}=/proc/"], "InnerImports": [], "Version": 300008,
}
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def _read(path: Path) -> str:
    if not path.is_file():
        pytest.fail(f"{path} not found: apt-get install {MOBY_PACKAGE} (make deps installs it)")
    return path.read_text()


def moby_seccomp_default() -> dict[str, Any]:
    """Docker's default seccomp profile."""
    data: dict[str, Any] = json.loads(_read(SECCOMP_DEFAULT))
    return data


def _render(template: str) -> str:
    """Render the few text/template actions moby's AppArmor template uses: {{.Field}},
    {{range $value := .List}}…{{$value}}…{{end}} and {{if ge .Version N}}…{{end}}, not
    nested. Any other action fails, so a changed template is not read wrongly."""
    out: list[str] = []
    block: tuple[str, Any] | None = None  # ("range", its items) or ("if", whether shown)
    body: list[str | None] = []  # the block's text; None where {{$value}} stands
    for index, piece in enumerate(_ACTION.split(template)):
        if index % 2 == 0:  # text between actions
            (out if block is None else body).append(piece)
            continue
        action = piece.strip()
        field = re.fullmatch(r"\.(\w+)", action)
        if block is None and (found := re.fullmatch(r"range \$value := \.(\w+)", action)):
            block, body = ("range", _RENDER[found.group(1)]), []
        elif block is None and (found := re.fullmatch(r"if ge \.Version (\d+)", action)):
            block, body = ("if", int(str(_RENDER["Version"])) >= int(found.group(1))), []
        elif block is not None and block[0] == "range" and action == "$value":
            body.append(None)
        elif block is not None and action == "end":
            kind, value = block
            if kind == "range":
                out += ["".join(str(item) if p is None else p for p in body) for item in value]
            elif value:
                out.append("".join(p or "" for p in body))
            block = None
        elif field is not None and isinstance(_RENDER.get(field.group(1)), str | int):
            (out if block is None else body).append(str(_RENDER[field.group(1)]))
        else:
            raise AssertionError(f"{APPARMOR_TEMPLATE}: template action {{{{{action}}}}} is "
                                 "not one this renderer knows")
    if block is not None:
        raise AssertionError(f"{APPARMOR_TEMPLATE}: a template block is not closed")
    return "".join(out)


@functools.cache
def docker_default_apparmor() -> str:
    """Docker's docker-default AppArmor profile, rendered from moby's template as dockerd
    renders it."""
    source = _read(APPARMOR_TEMPLATE)
    found = re.search(r"const baseTemplate = `(.*?)`", source, re.S)
    if found is None:
        raise AssertionError(f"{APPARMOR_TEMPLATE}: no baseTemplate; has moby changed it?")
    return _render(found.group(1))
