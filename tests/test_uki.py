"""UKI assembly and its ESP image, checked with binutils and mtools rather than our parser."""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardhost.builder import pe, uki
from hardhost.core.errors import HardhostError, ToolMissing
from hardhost.core.run import output, run
from tests.support.tools import need
from tests.support.uki import CMDLINE, Inputs, build_uki, make_inputs, need_stub, sign

EPOCH = 1_700_000_000


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    need("objcopy", "binutils")
    return make_inputs(tmp_path / "in")


@dataclass(frozen=True)
class Header:
    name: str
    size: int
    vma: int


def objdump_sections(path: Path) -> dict[str, Header]:
    """Section names, sizes and VMAs as binutils' objdump reports them."""
    text = output([need("objdump", "binutils"), "-h", path])
    rows = re.findall(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s", text, re.M)
    return {name: Header(name, int(size, 16), int(vma, 16)) for name, size, vma in rows}


def test_sections_follow_the_stub_without_overlap(tmp_path: Path, inputs: Inputs) -> None:
    image = build_uki(tmp_path, inputs)
    stub = objdump_sections(need_stub())
    built = objdump_sections(image)
    for name, header in stub.items():
        assert built[name] == header, f"stub section {name} changed"
    sizes = {".osrel": inputs.osrel.stat().st_size, ".cmdline": len(inputs.cmdline),
             ".initrd": inputs.initrd.stat().st_size, ".linux": inputs.linux.stat().st_size}
    for name, size in sizes.items():
        assert built[name].size == size
        assert built[name].vma % 4096 == 0
    ordered = sorted(built.values(), key=lambda h: h.vma)
    for before, after in itertools.pairwise(ordered):
        assert before.vma + before.size <= after.vma, f"{before.name} overlaps {after.name}"
    assert ordered[-1].name == ".linux"
    assert min(built[n].vma for n in sizes) > max(h.vma + h.size for h in stub.values())


def test_sections_hold_the_inputs(tmp_path: Path, inputs: Inputs) -> None:
    image = build_uki(tmp_path, inputs)
    expected = {".osrel": inputs.osrel.read_bytes(), ".cmdline": inputs.cmdline.encode(),
                ".initrd": inputs.initrd.read_bytes(), ".linux": inputs.linux.read_bytes()}
    for name, content in expected.items():
        dumped = tmp_path / f"dump{name}"
        run([need("objcopy", "binutils"), "--dump-section", f"{name}={dumped}", image,
             tmp_path / "scratch.efi"])
        assert dumped.read_bytes() == content, name


def test_same_inputs_same_bytes(tmp_path: Path, inputs: Inputs) -> None:
    first = build_uki(tmp_path, inputs, "first.efi")
    time.sleep(1.1)  # objcopy stamps the current second; the builder must undo it
    second = build_uki(tmp_path, inputs, "second.efi")
    assert first.read_bytes() == second.read_bytes()
    data = first.read_bytes()
    image = pe.parse(data)
    assert len(data) % 8 == 0
    assert pe.timestamp(data) == pe.timestamp(need_stub().read_bytes())
    reported = output([need("objdump", "binutils"), "-p", first])
    match = re.search(r"^CheckSum\s+([0-9a-f]+)", reported, re.M)
    assert match is not None
    assert int(match.group(1), 16) == pe.checksum(data, image.checksum_offset)


def test_esp_holds_the_uki_as_the_removable_media_path(tmp_path: Path, inputs: Inputs) -> None:
    mdir, mcopy = need("mdir", "mtools"), need("mcopy", "mtools")
    need("mkfs.vfat", "dosfstools")
    image = build_uki(tmp_path, inputs)
    esp = tmp_path / "esp.img"
    uki.make_esp(image, esp, source_date_epoch=EPOCH)
    listing = output([mdir, "-i", esp, "-b", "::/EFI/BOOT"])
    assert listing.split() == ["::/EFI/BOOT/BOOTX64.EFI"]
    copied = tmp_path / "copied.efi"
    run([mcopy, "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", copied])
    assert copied.read_bytes() == image.read_bytes()
    run([need("fsck.vfat", "dosfstools"), "-n", esp])
    again = tmp_path / "again.img"
    time.sleep(1.1)
    uki.make_esp(image, again, source_date_epoch=EPOCH)
    assert again.read_bytes() == esp.read_bytes()


def test_signing_keeps_the_authenticode_digest(tmp_path: Path, inputs: Inputs) -> None:
    sbverify = need("sbverify", "sbsigntool")
    image = build_uki(tmp_path, inputs)
    signed, cert = sign(image, tmp_path)
    run([sbverify, "--cert", cert, signed])
    assert pe.read(signed).certificate_table[1] > 0
    assert pe.authenticode_digest(pe.read(signed)) == pe.authenticode_digest(pe.read(image))


def one_line(error: HardhostError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_missing_stub_names_its_package(tmp_path: Path, inputs: Inputs) -> None:
    with pytest.raises(ToolMissing) as caught:
        uki.assemble_uki(tmp_path / "linuxx64.efi.stub", linux=inputs.linux,
                         initrd=inputs.initrd, cmdline=CMDLINE, osrel=inputs.osrel,
                         out=tmp_path / "uki.efi")
    assert "apt-get install systemd-boot-efi" in one_line(caught.value)


@pytest.mark.parametrize("cmdline", ["", "ro\n", "ro\0quiet", "ro hostname=café"])
def test_bad_command_line_is_refused(tmp_path: Path, inputs: Inputs, cmdline: str) -> None:
    with pytest.raises(uki.UKIError) as caught:
        build_uki(tmp_path, Inputs(inputs.linux, inputs.initrd, inputs.osrel, cmdline))
    assert "command line" in one_line(caught.value)


def test_missing_input_is_named(tmp_path: Path, inputs: Inputs) -> None:
    gone = tmp_path / "no-initrd.img"
    with pytest.raises(uki.UKIError) as caught:
        build_uki(tmp_path, Inputs(inputs.linux, gone, inputs.osrel, CMDLINE))
    assert one_line(caught.value) == f"{gone}: initrd not found"


def test_kernel_without_loadfile2_initrd_is_refused(tmp_path: Path, inputs: Inputs) -> None:
    with pytest.raises(uki.UKIError) as caught:
        build_uki(tmp_path, Inputs(need_stub(), inputs.initrd, inputs.osrel, CMDLINE))
    assert "too old" in one_line(caught.value)


def test_a_uki_is_not_a_stub(tmp_path: Path, inputs: Inputs) -> None:
    image = build_uki(tmp_path, inputs)
    with pytest.raises(uki.UKIError) as caught:
        uki.assemble_uki(image, linux=inputs.linux, initrd=inputs.initrd, cmdline=CMDLINE,
                         osrel=inputs.osrel, out=tmp_path / "twice.efi")
    assert "already has section" in one_line(caught.value)


def test_not_a_pe_image(tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(pe.PEError) as caught:
        pe.read(bogus)
    assert one_line(caught.value) == f"{bogus}: not a PE image (no MZ header)"
