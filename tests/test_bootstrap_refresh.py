"""`hardhost build --refresh` runs mmdebstrap even when the bootstrap is cached, and a refresh
that fails leaves the cached tree as it was. Built in a network namespace of the test's own,
where mmdebstrap cannot reach the archive: the failure is real and quick. The cached tree is a
placeholder that no build could extract, so a build that took it would fail otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hardhost.builder.spec import load_spec
from hardhost.builder.stages.bootstrap import bootstrap_key
from tests.support.keys import KeyPair, SigningKeys
from tests.support.paths import IMAGES, REPO
from tests.support.tools import skip_module_unless_root_with

skip_module_unless_root_with(("mmdebstrap", "unshare"), "mmdebstrap util-linux")

PLACEHOLDER = b"not a tar archive: a build that reads it fails\n"


def offline_build(cache: Path, out: Path, client_key: KeyPair, keys: SigningKeys,
                  *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "hardhost", "build",
         str(IMAGES / "minimal.toml"), "-o", str(out), "--authorized-key",
         f"{client_key.private}.pub", "--key", str(keys.private), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HARDHOST_CACHE_DIR": str(cache)})


def test_a_refresh_bootstraps_again_and_a_failed_one_keeps_the_cached_tree(
        tmp_path: Path, client_key: KeyPair, signing_keys: SigningKeys) -> None:
    cache = tmp_path / "cache"
    cached = cache / "bootstrap" / f"{bootstrap_key(load_spec(IMAGES / 'minimal.toml'))}.tar"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PLACEHOLDER)
    os.utime(cached, (0, 0))
    out = tmp_path / "out"

    # Without --refresh the build takes the cached tree (and finds it unreadable).
    taken = offline_build(cache, out, client_key, signing_keys)
    assert taken.returncode == 1, taken.stderr
    last = taken.stderr.strip().splitlines()[-1]
    assert last == (f"hardhost: {cached}: cannot read the cached root filesystem (truncated "
                    "header); pass --refresh to make it again")
    assert "packages resolved 20" in taken.stderr  # its age, in days since 1970
    assert "--refresh resolves them again" in taken.stderr
    # Marked used (what eviction goes by); its mtime still says when it was made.
    assert cached.stat().st_mtime == 0 and cached.stat().st_atime > time.time() - 600

    refreshed = offline_build(cache, out, client_key, signing_keys, "--refresh")
    assert refreshed.returncode == 1, refreshed.stderr
    last = refreshed.stderr.strip().splitlines()[-1]
    # Each of the three archives was asked for: the release, its updates, its security.
    assert last.startswith("hardhost: mmdebstrap could not fetch http://deb.debian.org/debian/"
                           "dists/bookworm/InRelease: "), last
    for suite in ("debian/dists/bookworm-updates", "debian-security/dists/bookworm-security"):
        assert f"E: Failed to fetch http://deb.debian.org/{suite}/InRelease" in refreshed.stderr
    assert "cached root filesystem" not in refreshed.stderr
    # The cached tree is untouched, no partial tree is left beside it, and nothing is output.
    assert cached.read_bytes() == PLACEHOLDER and cached.stat().st_mtime == 0
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]
    assert list(out.iterdir()) == []
