"""Fleet attestation speed: hardhost fleet against Ansible and a bare paramiko loop, on the
same N real sshd hosts on loopback (one sshd per host, each with its own host key), with the
same concurrency, in one run.

    sudo .venv/bin/python bench/fleet.py [--hosts 200] [--forks 50]

Prints hosts per second for each and the ratios, and hardhost's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.signing import keygen, load_private_key  # noqa: E402
from tests.conftest import make_keypair, start_sshd  # noqa: E402
from tests.test_signing import sample_manifest, write_signed  # noqa: E402
from verifier.evidence import script  # noqa: E402

BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.monotonic() - start


def paramiko_loop(ports: list[int], identity: Path, known_hosts: Path, command: str,
                  forks: int) -> float:
    """The floor for any paramiko client: connect, one exec, read, close."""
    key = paramiko.Ed25519Key.from_private_key_file(str(identity))

    def one(port: int) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=port, username="root", pkey=key, allow_agent=False,
                       look_for_keys=False, timeout=30)
        _, stdout, _ = client.exec_command(command)
        stdout.read()
        client.close()

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=forks) as pool:
        list(pool.map(one, ports))
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--forks", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hardhost-fleet-bench-") as name:
        work = Path(name)
        client = make_keypair(work / "client", "id_ed25519")
        servers = [start_sshd(work / f"h{i}", client) for i in range(args.hosts)]
        try:
            ports = [s.host.port for s in servers]
            known = work / "known_hosts"
            known.write_text("".join(s.host.known_hosts.read_text() for s in servers))
            private, public = keygen(work / "keys")
            manifest = write_signed(work, sample_manifest(), load_private_key(private))
            evidence = work / "evidence.sh"
            evidence.write_text(script())
            inventory = work / "inventory.ini"
            inventory.write_text("[all]\n" + "".join(
                f"h{i} ansible_host=127.0.0.1 ansible_port={p} ansible_user=root "
                f"ansible_python_interpreter=/usr/bin/python3\n" for i, p in enumerate(ports)))
            hardhost = timed([str(BIN / "hardhost"), "fleet", str(inventory), "--manifest",
                              str(manifest), "--trust-key", str(public), "--known-hosts",
                              str(known), "--identity", str(client.private), "--forks",
                              str(args.forks), "--history", str(work / "h.db")])
            peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            ansible_env = {"ANSIBLE_FORKS": str(args.forks)}
            ssh_args = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
            common = [str(BIN / "ansible"), "all", "-i", str(inventory), "-f",
                      str(args.forks), "--private-key", str(client.private),
                      f"--ssh-common-args={ssh_args}"]
            command = timed([*common, "-m", "command", "-a", f"/bin/sh {evidence}"],
                            ansible_env)
            raw = timed([*common, "-m", "raw", "-a", f"/bin/sh {evidence}"], ansible_env)
            floor = paramiko_loop(ports, client.private, known, f"/bin/sh {evidence}",
                                  args.forks)
        finally:
            for server in servers:
                server.stop()
    rate = {name: args.hosts / seconds for name, seconds in (
        ("hardhost fleet", hardhost), ("ansible -m command", command),
        ("ansible -m raw", raw), ("bare paramiko loop", floor))}
    print(f"{args.hosts} loopback hosts, {args.forks} at a time")
    for name, value in rate.items():
        print(f"{name:<20} {value:7.1f} hosts/s")
    ours = rate["hardhost fleet"]
    for peer in ("ansible -m command", "ansible -m raw", "bare paramiko loop"):
        print(f"hardhost / {peer:<20} {ours / rate[peer]:5.2f} x")
    print(f"hardhost peak RSS: {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
