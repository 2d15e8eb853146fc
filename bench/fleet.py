"""Fleet attestation speed: hardhost fleet against Ansible and a bare paramiko loop, on the
same N real sshd hosts on loopback (one sshd per host, each with its own host key), with the
same concurrency, in one run. Then hardhost alone at other fleet sizes, for its scaling.

    sudo .venv/bin/python bench/fleet.py [--hosts 200] [--forks 50] [--scale 50,500]

Every client logs in as a dedicated user whose shell is /bin/sh, so no login start-up file
(such as root's ~/.bashrc) is timed instead of the client. The user is created if missing.
Prints hosts per second for each and the ratios, and hardhost's peak RSS at each size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hardhost.image.signing import keygen, load_private_key  # noqa: E402
from hardhost.verifier.evidence import script  # noqa: E402
from tests.support.keys import KeyPair, make_keypair  # noqa: E402
from tests.support.manifests import sample_manifest, write_signed  # noqa: E402
from tests.support.sshd import RunningSshd, start_sshd  # noqa: E402

BIN = Path(sys.executable).parent
BENCH_USER = "hardhost-bench"


def ensure_user(name: str) -> None:
    """A system user with a plain shell; its home is never used (keys live with each sshd)."""
    if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/bin/sh", name], check=True)
    # useradd locks the password ('!'), and sshd refuses a locked account even for keys;
    # '*' means no password that can ever match, without the lock.
    subprocess.run(["usermod", "--password", "*", name], check=True)


def timed(argv: list[str], env: dict[str, str] | None = None, *,
          ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall seconds and the process's peak RSS in MiB. A run that ends with another exit
    status did not do the work (a refused login fails fast), so it is not a figure."""
    start = time.monotonic()
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        tail = errors.decode(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"{Path(argv[0]).name} exited {code}: {' | '.join(tail)}")
    return seconds, usage.ru_maxrss / 1024


def paramiko_loop(ports: list[int], identity: Path, known_hosts: Path, command: str,
                  forks: int) -> float:
    """The floor for any paramiko client: connect, one exec, read, close."""
    key = paramiko.Ed25519Key.from_private_key_file(str(identity))
    # Parsed once: SSHClient.load_host_keys per connection would parse the whole fleet's
    # file each time, and time that instead of the client.
    known = paramiko.HostKeys(str(known_hosts))

    def one(port: int) -> None:
        client = paramiko.SSHClient()
        name = f"[127.0.0.1]:{port}"
        for key_type, host_key in (known.lookup(name) or {}).items():
            client.get_host_keys().add(name, key_type, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=port, username=BENCH_USER, pkey=key, allow_agent=False,
                       look_for_keys=False, timeout=30)
        _, stdout, _ = client.exec_command(command)
        stdout.read()
        client.close()

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=forks) as pool:
        list(pool.map(one, ports))
    return time.monotonic() - start


@dataclass
class Fleet:
    """N loopback sshd hosts with a signed manifest, an inventory and known_hosts."""

    work: Path
    client: KeyPair
    servers: list[RunningSshd]
    known: Path
    public: Path
    manifest: Path
    inventory: Path

    @classmethod
    def start(cls, work: Path, count: int) -> Fleet:
        # sshd reads each authorized_keys file as the bench user, and the user reads the
        # evidence script from here.
        work.chmod(0o755)
        client = make_keypair(work / "client", "id_ed25519")
        servers: list[RunningSshd] = []

        def one(index: int) -> None:
            servers.append(start_sshd(work / f"h{index}", client, user=BENCH_USER))

        try:
            # Each start waits for a key exchange; a few at a time, or 500 take minutes.
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(one, range(count)))
        except BaseException:
            for server in servers:
                server.stop()
            raise
        servers.sort(key=lambda s: s.host.port)
        known = work / "known_hosts"
        known.write_text("".join(s.host.known_hosts.read_text() for s in servers))
        private, public = keygen(work / "keys")
        manifest = write_signed(work, sample_manifest(), load_private_key(private))
        inventory = work / "inventory.ini"
        inventory.write_text("[all]\n" + "".join(
            f"h{i} ansible_host=127.0.0.1 ansible_port={s.host.port} ansible_user={BENCH_USER} "
            f"ansible_python_interpreter=/usr/bin/python3\n" for i, s in enumerate(servers)))
        return cls(work, client, servers, known, public, manifest, inventory)

    @property
    def ports(self) -> list[int]:
        return [s.host.port for s in self.servers]

    def hardhost(self, forks: int) -> tuple[float, float]:
        return timed([str(BIN / "hardhost"), "fleet", str(self.inventory), "--manifest",
                      str(self.manifest), "--trust-key", str(self.public), "--known-hosts",
                      str(self.known), "--identity", str(self.client.private), "--forks",
                      str(forks), "--history", str(self.work / "history.db")],
                     ok=(0, 1))  # 1: drift, as the sample manifest is not these hosts'


    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def control_dir(path: Path) -> dict[str, str]:
    """Environment giving one Ansible run its own, empty ssh ControlPath folder."""
    path.mkdir(mode=0o700)
    return {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(path)}


def compare(hosts: int, forks: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hardhost-fleet-bench-") as name:
        fleet = Fleet.start(Path(name), hosts)
        try:
            evidence = fleet.work / "evidence.sh"
            evidence.write_text(script())
            evidence.chmod(0o644)
            hardhost, peak_mib = fleet.hardhost(forks)
            # The bench user has no home: Ansible's remote temporary files go elsewhere.
            remote_tmp = fleet.work / "ansible-remote"
            remote_tmp.mkdir(mode=0o1777)
            remote_tmp.chmod(0o1777)
            ansible_env = {"ANSIBLE_FORKS": str(forks), "ANSIBLE_REMOTE_TMP": str(remote_tmp)}
            ssh_args = f"-o UserKnownHostsFile={fleet.known} -o StrictHostKeyChecking=yes"
            common = [str(BIN / "ansible"), "all", "-i", str(fleet.inventory), "-f",
                      str(forks), "--private-key", str(fleet.client.private),
                      f"--ssh-common-args={ssh_args}"]
            # Ansible's ssh keeps each connection open for 60 s (ControlPersist) in a
            # shared folder: a second run would reuse the first's logins and skip its key
            # exchanges. Each run starts cold, as hardhost's does.
            # The evidence script exits 1 on hosts that are not hardhost images (this
            # machine has no dm-verity root), which Ansible reports as failed tasks (2);
            # an unreachable host would be 4. Both peers ran the whole script either way.
            command, _ = timed([*common, "-m", "command", "-a", f"/bin/sh {evidence}"],
                               {**ansible_env, **control_dir(fleet.work / "cp-command")},
                               ok=(0, 2))
            raw, _ = timed([*common, "-m", "raw", "-a", f"/bin/sh {evidence}"],
                           {**ansible_env, **control_dir(fleet.work / "cp-raw")}, ok=(0, 2))
            floor = paramiko_loop(fleet.ports, fleet.client.private, fleet.known,
                                  f"/bin/sh {evidence}", forks)
        finally:
            fleet.stop()
    rate = {name: hosts / seconds for name, seconds in (
        ("hardhost fleet", hardhost), ("ansible -m command", command),
        ("ansible -m raw", raw), ("bare paramiko loop", floor))}
    print(f"{hosts} loopback hosts, {forks} at a time, login shell /bin/sh")
    for name, value in rate.items():
        print(f"{name:<20} {value:7.1f} hosts/s")
    ours = rate["hardhost fleet"]
    for peer in ("ansible -m command", "ansible -m raw", "bare paramiko loop"):
        print(f"hardhost / {peer:<20} {ours / rate[peer]:5.2f} x")
    print(f"hardhost peak RSS: {peak_mib:.0f} MiB")


def scaling(sizes: list[int], forks: int) -> None:
    print(f"\nhardhost fleet alone, {forks} at a time:")
    print(f"{'hosts':>6} {'seconds':>8} {'hosts/s':>8} {'peak RSS':>9} {'KiB/host':>9}")
    for hosts in sizes:
        with tempfile.TemporaryDirectory(prefix="hardhost-fleet-scale-") as name:
            fleet = Fleet.start(Path(name), hosts)
            try:
                seconds, peak_mib = fleet.hardhost(forks)
            finally:
                fleet.stop()
        print(f"{hosts:>6} {seconds:>8.1f} {hosts / seconds:>8.1f} {peak_mib:>6.0f} MiB "
              f"{peak_mib * 1024 / hosts:>9.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--scale", default="50,500",
                        help="further fleet sizes for hardhost alone, comma-separated "
                             "('' to skip)")
    parser.add_argument("--no-peers", action="store_true",
                        help="measure hardhost's scaling only")
    args = parser.parse_args()
    ensure_user(BENCH_USER)
    if not args.no_peers:
        compare(args.hosts, args.forks)
    sizes = sorted({int(n) for n in args.scale.split(",") if n.strip()} | {args.hosts})
    if args.scale:
        scaling(sizes, args.forks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
