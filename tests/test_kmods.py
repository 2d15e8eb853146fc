"""Kernel module selection over depmod's indexes (the booted image checks the real kernel)."""

from __future__ import annotations

import pytest

from hardhost.builder.kmods import ModuleIndex, module_name
from hardhost.core.errors import BuildError

DEP = """\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nfnetlink.ko:
kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko
kernel/net/netfilter/nf_conntrack.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko
kernel/drivers/net/net_failover.ko:
kernel/sound/core/snd.ko:
"""
SOFTDEP = """\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
"""
ALIAS = """\
alias crypto-crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias pci:v00001AF4d* virtio_pci
"""


@pytest.fixture
def index() -> ModuleIndex:
    return ModuleIndex.parse(DEP, SOFTDEP, ALIAS)


def test_module_names_follow_modprobe_spelling() -> None:
    assert module_name("kernel/drivers/md/dm-verity.ko") == "dm_verity"
    assert module_name("kernel/fs/erofs/erofs.ko.xz") == "erofs"


def test_closure_follows_hard_dependencies_transitively(index: ModuleIndex) -> None:
    assert index.closure({"dm_verity"}) == {"dm_verity", "dm_bufio", "dm_mod"}
    assert index.closure({"ip_vs"}) == {"ip_vs", "nf_conntrack", "libcrc32c"}


def test_soft_dependencies_resolve_through_aliases(index: ModuleIndex) -> None:
    assert index.closure({"ext4"}) == {"ext4", "jbd2", "mbcache", "crc32c_generic",
                                       "crc32c_intel"}


def test_dash_and_underscore_are_the_same_name(index: ModuleIndex) -> None:
    assert index.select(["dm-verity"]) == {"dm_verity"}


def test_globs_and_folders_select(index: ModuleIndex) -> None:
    assert index.select(["virtio*"]) == {"virtio_pci", "virtio_ring", "virtio_net"}
    # A folder keeps everything below it, subfolders included.
    assert index.select(["net/netfilter/"]) == {"nf_tables", "nfnetlink", "ip_vs",
                                                "nf_conntrack"}


def test_a_pattern_that_matches_nothing_is_an_error(index: ModuleIndex) -> None:
    with pytest.raises(BuildError, match="'dm_verityy' matches no module"):
        index.select(["dm_verity", "dm_verityy"])
    with pytest.raises(BuildError, match="'net/netfilte/' matches no module"):
        index.select(["net/netfilte/"])


def test_unselected_modules_stay_out(index: ModuleIndex) -> None:
    keep = index.closure(index.select(["dm_verity", "virtio_net"]))
    assert "snd" not in keep and "ext4" not in keep


def test_a_malformed_modules_dep_names_its_line() -> None:
    with pytest.raises(BuildError, match=r"modules\.dep:2: cannot parse"):
        ModuleIndex.parse("kernel/a.ko:\nnot a module line\n")
