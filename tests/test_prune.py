"""What a rebuild leaves out when it unpacks the cached tree: exactly files the prune stage
deletes, so the image is the same as if everything had been unpacked."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from hardhost.builder.spec import Spec, load_spec
from hardhost.builder.stages.bootstrap import extract
from hardhost.builder.stages.prune import remove_unwanted, unextracted
from tests.support.paths import IMAGES

FILES = (
    "usr/share/man/man1/ls.1.gz",
    "usr/share/man/de/man8/mount.8.gz",
    "usr/share/man/man1/spaced out.1",
    # Names tar would read back differently from an exclusion list: left for prune.
    "usr/share/locale/back\\slash",
    "usr/share/locale/trailing ",
    "usr/share/locale/de/LC_MESSAGES/coreutils.mo",
    "usr/share/locale/locale.alias",
    "usr/share/i18n/charmaps/UTF-8.gz",
    "usr/share/info/dir",
    "usr/share/doc/bash/copyright",
    "usr/share/doc/bash/README.gz",
    "usr/share/doc/bash/examples/startup.sh",
    "usr/share/doc/bash/examples/copyright",  # deleted with its folder: only */copyright stays
    "usr/share/mandoc/kept",  # "man/*" is a folder name, not a prefix
    "usr/share/locale-langpack/kept",
    "usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice",
    "usr/bin/man",
    "etc/locale.gen",
)


def _tarball(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    for name in FILES:
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    # /usr/share/doc/PKG is a symlink for some packages; it is kept, as prune keeps it.
    (source / "usr/share/doc/bash-builtins").symlink_to("bash")
    tarball = tmp_path / "tree.tar"
    # The same layout mmdebstrap writes: members named ./usr/...
    subprocess.run(["tar", "--create", "--file", tarball, "--directory", source, "."],
                   check=True)
    return tarball


def _present(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*")}


def _spec(**prune: Any) -> Spec:
    spec = load_spec(IMAGES / "container-host.toml")
    return dataclasses.replace(spec, prune=dataclasses.replace(spec.prune, **prune))


def test_unextracted_members_are_exactly_what_prune_deletes(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    spec = _spec()
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    skipped = {name.removeprefix("./") for name in unextracted(spec, names)}

    everything = tmp_path / "everything"
    everything.mkdir()
    subprocess.run(["tar", "--extract", "--file", tarball, "--directory", everything],
                   check=True)
    before = _present(everything)
    remove_unwanted(everything, spec)
    deleted = before - _present(everything)

    # Never one file that prune keeps; every deletion but the names tar cannot be told.
    assert skipped <= deleted
    assert deleted - skipped == {"usr/share/locale/back\\slash", "usr/share/locale/trailing "}
    assert "usr/share/doc/bash/copyright" not in skipped
    assert "usr/share/doc/bash/examples" in skipped
    assert "usr/share/man" not in skipped  # the folder stays, as after prune


def test_extraction_leaves_out_what_prune_deletes_and_nothing_else(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    spec = _spec()
    everything = tmp_path / "everything"
    everything.mkdir()
    subprocess.run(["tar", "--extract", "--file", tarball, "--directory", everything],
                   check=True)
    remove_unwanted(everything, spec)

    work = tmp_path / "work"
    work.mkdir()
    tree = work / "tree"
    with tarfile.open(tarball) as archive:
        left_out = [n.removeprefix("./") for n in unextracted(spec, archive.getnames())]
    assert extract(tarball, tree, spec) == len(left_out) > 0
    # Each name on the list is left out, with what lies below it; nothing else is.
    assert _present(tree) == {n for n in _present(tmp_path / "source") if not any(
        n == out or n.startswith(f"{out}/") for out in left_out)}
    assert "usr/share/man/man1/ls.1.gz" not in _present(tree)
    assert "usr/share/man/man1/spaced out.1" not in _present(tree)
    assert "usr/share/locale/back\\slash" in _present(tree)
    # After prune, the two trees are the same, byte for byte.
    remove_unwanted(tree, spec)
    assert _present(tree) == _present(everything)
    for name in _present(tree):
        path = tree / name
        if path.is_file() and not path.is_symlink():
            assert path.read_bytes() == (everything / name).read_bytes(), name
    assert list(work.iterdir()) == [tree], "the exclusion list is not left behind"


@pytest.mark.parametrize("kept", ["docs", "man", "locales"])
def test_what_the_spec_keeps_is_extracted(tmp_path: Path, kept: str) -> None:
    tarball = _tarball(tmp_path)
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    skipped = set(unextracted(_spec(**{kept: False}), names))
    wanted = {"docs": "./usr/share/doc/bash/README.gz", "man": "./usr/share/man/man1/ls.1.gz",
              "locales": "./usr/share/locale/locale.alias"}
    assert wanted[kept] not in skipped
    assert set(wanted.values()) - {wanted[kept]} <= skipped


def test_nothing_is_left_out_when_nothing_is_pruned(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    tree = tmp_path / "tree"
    assert extract(tarball, tree, _spec(docs=False, man=False, locales=False)) == 0
    source = tmp_path / "source"
    assert _present(tree) == _present(source)
    shutil.rmtree(tree)
