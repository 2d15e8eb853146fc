"""Fleet inventories, read with ansible-core's own InventoryManager (INI, YAML, groups)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.errors import UsageError
from verifier.transport import Target


@dataclass(frozen=True)
class FleetHost:
    name: str  # the inventory name
    target: Target
    identity: Path | None  # ansible_ssh_private_key_file, if set
    manifest: Path | None  # hardhost_manifest, if set


def load(path: Path, *, limit: str | None = None, default_user: str = "root") -> list[FleetHost]:
    """Hosts of the inventory at `path` (after `limit`, Ansible's host pattern syntax)."""
    # Imported here: ansible-core takes a moment to import, and only fleet commands need it.
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    if not path.exists():
        raise UsageError(f"{path}: inventory not found")
    loader = DataLoader()
    try:
        inventory = InventoryManager(loader=loader, sources=[str(path)])
        if limit:
            inventory.subset(limit)
        variables = VariableManager(loader=loader, inventory=inventory)
        hosts = inventory.get_hosts()
    except AnsibleError as exc:
        raise UsageError(f"{path}: {exc.message}") from None
    if not hosts:
        raise UsageError(f"{path}: no hosts{' match ' + limit if limit else ''}")
    fleet = []
    for host in hosts:
        hostvars = variables.get_vars(host=host)
        address = str(hostvars.get("ansible_host", host.name))
        port = _port(hostvars.get("ansible_port", 22), path, host.name)
        user = str(hostvars.get("ansible_user", default_user))
        key = hostvars.get("ansible_ssh_private_key_file")
        manifest = hostvars.get("hardhost_manifest")
        fleet.append(FleetHost(host.name, Target(user, address, port),
                               Path(str(key)).expanduser() if key else None,
                               Path(str(manifest)).expanduser() if manifest else None))
    return fleet


def _port(value: object, path: Path, host: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise UsageError(f"{path}: {host}: ansible_port {value!r} is not a TCP port")
    return port
