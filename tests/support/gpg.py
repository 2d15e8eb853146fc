"""Throwaway GPG signing keys in their own GnuPG home, made by gpg itself."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GPG = shutil.which("gpg", path="/usr/bin:/bin")


@dataclass(frozen=True)
class GpgKey:
    home: Path  # GNUPGHOME holding the secret key
    fingerprint: str
    public: Path  # the ASCII-armored public key, as a spec's containers.signing_keys names


def _gpg(home: Path, *args: str) -> str:
    assert GPG is not None, "gpg is not installed (apt-get install gnupg)"
    return subprocess.run([GPG, "--homedir", str(home), "--batch", *args], check=True,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL).stdout


def make_key(home: Path, name: str, public_dir: Path) -> GpgKey:
    """An Ed25519 signing key without a passphrase in `home`, its public half exported to
    `public_dir/NAME.gpg`."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@test.invalid>",
         "ed25519", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-secret-keys", f"{name}@test.invalid")
    fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                       if line.startswith("fpr:"))
    public_dir.mkdir(parents=True, exist_ok=True)
    public = public_dir / f"{name}.gpg"
    public.write_text(_gpg(home, "--armor", "--export", fingerprint))
    return GpgKey(home, fingerprint, public)


def stop_agent(home: Path) -> None:
    """gpg starts a gpg-agent per home; it must not outlive the test."""
    gpgconf = shutil.which("gpgconf", path="/usr/bin:/bin")
    if gpgconf is not None:
        subprocess.run([gpgconf, "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
