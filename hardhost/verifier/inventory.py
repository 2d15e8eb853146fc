"""Fleet inventories, read with ansible-core's own InventoryManager (INI, YAML, groups)."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from hardhost.core.errors import UsageError
from hardhost.verifier.transport import Target

_SHARD = re.compile(r"^([1-9][0-9]{0,5})/([1-9][0-9]{0,5})$")

# What may stand as an address or a user in `user@address:port`: no whitespace, no control
# characters, none of the separators.
_WORD = re.compile(r"^[^\s@\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class Shard:
    """Slice `index` (from 1) of `count`: each job of an AWX slice or a Kubernetes indexed
    job checks one, and together they check every host exactly once."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    match = _SHARD.fullmatch(text)
    if not match or int(match.group(1)) > int(match.group(2)):
        raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, such as 2/4 "
                         "(a Kubernetes indexed job passes $((JOB_COMPLETION_INDEX + 1))/N)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_hosts(hosts: list[FleetHost], shard: Shard) -> list[FleetHost]:
    """The hosts of `shard`: sorted by inventory name, every count-th from the index-th, so
    shards differ in size by at most one whatever order the inventory sources gave."""
    ordered = sorted(hosts, key=lambda host: host.name)
    return ordered[shard.index - 1::shard.count]


@dataclass(frozen=True)
class FleetHost:
    name: str  # the inventory name
    target: Target | None  # None when `error` says why the variables make no target
    identity: Path | None  # ansible_ssh_private_key_file, if set
    manifest: Path | None  # hardhost_manifest, if set
    error: str = ""  # a host variable that is wrong: this host is not checked, the rest are
    groups: tuple[str, ...] = ()  # the inventory groups it is in, `all` left out

    @property
    def address(self) -> str:
        return str(self.target) if self.target else ""


def load(path: Path, *, limit: str | None = None, default_user: str = "root",
         allow_executable: bool = False) -> list[FleetHost]:
    """Hosts of the inventory at `path` (after `limit`, Ansible's host pattern syntax).

    An executable file (or a folder holding one) is refused unless `allow_executable`:
    Ansible's script plugin would run it, as the user running hardhost. A host whose own
    variables are wrong comes back with `error` set, so one typo does not stop the fleet.
    """
    if not path.exists():
        raise UsageError(f"{path}: inventory not found")
    if not allow_executable:
        _refuse_executables(path)
    # Imported here: ansible-core takes a moment to import, and only fleet commands need it.
    import ansible.constants as constants
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    # By default Ansible warns about a source it cannot parse and goes on with whatever hosts
    # it read before the error, or with none: a fleet run would then check part of the fleet
    # and report success. A source that does not parse fails the run instead.
    saved = constants.INVENTORY_ANY_UNPARSED_IS_FAILED, constants.INVENTORY_UNPARSED_IS_FAILED
    constants.INVENTORY_ANY_UNPARSED_IS_FAILED = constants.INVENTORY_UNPARSED_IS_FAILED = True
    try:
        inventory = InventoryManager(loader=loader, sources=[str(path)])
        if limit:
            inventory.subset(limit)
        variables = VariableManager(loader=loader, inventory=inventory)
        hosts = inventory.get_hosts()
    except AnsibleError as exc:
        raise UsageError(f"{path}: {exc.message} (Ansible's warnings above say why)") from None
    finally:
        (constants.INVENTORY_ANY_UNPARSED_IS_FAILED,
         constants.INVENTORY_UNPARSED_IS_FAILED) = saved
    if not hosts:
        raise UsageError(f"{path}: no hosts{' match ' + limit if limit else ''}")
    return [_host(host.name, variables.get_vars(host=host), default_user) for host in hosts]


def _host(name: str, hostvars: dict[str, object], default_user: str) -> FleetHost:
    try:
        address = _word(hostvars.get("ansible_host", name), "ansible_host")
        user = _word(hostvars.get("ansible_user", default_user), "ansible_user")
        port = _port(hostvars.get("ansible_port", 22))
        key = _optional_path(hostvars.get("ansible_ssh_private_key_file"),
                             "ansible_ssh_private_key_file")
        manifest = _optional_path(hostvars.get("hardhost_manifest"), "hardhost_manifest")
    except ValueError as exc:
        return FleetHost(name, None, None, None, f"{name}: {exc}", _groups(hostvars))
    return FleetHost(name, Target(user, address.strip("[]"), port), key, manifest,
                     groups=_groups(hostvars))


def _groups(hostvars: dict[str, object]) -> tuple[str, ...]:
    names = hostvars.get("group_names", [])
    return tuple(sorted(str(n) for n in names)) if isinstance(names, list) else ()


def _word(value: object, variable: str) -> str:
    if not isinstance(value, str) or not _WORD.match(value):
        raise ValueError(f"{variable} {_shown(value)} is not a host address or user name; "
                         "fix the inventory")
    return value


def _port(value: object) -> int:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"ansible_port {_shown(value)} is not a TCP port; fix the inventory")
    return int(text)


def _optional_path(value: object, variable: str) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError(f"{variable} {_shown(value)} is not a path; fix the inventory")
    return Path(value).expanduser()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _refuse_executables(path: Path) -> None:
    """Raise `UsageError` naming the first executable file Ansible would run as a script."""
    found = _first_executable(path, set())
    if found is not None:
        raise UsageError(f"{found}: executable, so Ansible would run it as a program; refused. "
                         f"Fix with: chmod a-x {found}, or pass --allow-executable-inventory "
                         "if running it is intended")


def _first_executable(path: Path, seen: set[tuple[int, int]]) -> Path | None:
    try:
        info = path.stat()
    except OSError:
        return None  # a dangling link: Ansible skips it too
    if stat.S_ISREG(info.st_mode):
        return path if info.st_mode & 0o111 else None
    if not stat.S_ISDIR(info.st_mode) or (info.st_dev, info.st_ino) in seen:
        return None
    seen.add((info.st_dev, info.st_ino))  # a link back up the tree is walked once
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise UsageError(f"{path}: cannot list the inventory folder: {exc.strerror}") from None
    for entry in entries:
        found = _first_executable(path / entry, seen)
        if found is not None:
            return found
    return None
