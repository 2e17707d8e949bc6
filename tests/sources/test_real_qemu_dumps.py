"""Real QEMU dumps: the readers against files written by the installed qemu-system-x86_64.

The oracle guest (tests/targets/oracle.py) runs in long mode with 4-level paging and halts; we stop
it and take ``dump-guest-memory`` as ELF, as ``-z`` (flattened kdump, zlib) and as ``-p``, plus a
``pmemsave`` of all RAM. Every page must read the same from each dump as from the raw image, the
vCPU registers must be the ones the guest reported, the walks must agree, and the ``-p`` dump must
be refused. Needs QEMU (installed by .ci/run); a missing QEMU is a setup error, not a skip.
"""

import pytest

from gdb_xenpte.cpu import CpuState
from gdb_xenpte.errors import DumpFormatError
from gdb_xenpte.sources.kdump import KdumpSource
from gdb_xenpte.sources.open import open_dump, pick_vcpu
from gdb_xenpte.sources.qemu_elf import QemuElfSource
from gdb_xenpte.sources.raw import RawSource
from gdb_xenpte.walk import Walker
from targets.oracle import RAM_BYTES, boot_oracle

PAGE = 4096


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qemu-dumps")
    with boot_oracle(levels=4, workdir=workdir) as run:
        vm = run.vm
        vm.monitor("stop")
        files = {"elf": workdir / "guest.elf", "kdump": workdir / "guest.kdump",
                 "paging": workdir / "guest-p.elf"}
        vm.monitor(f'dump-guest-memory "{files["elf"]}"')
        vm.monitor(f'dump-guest-memory -z "{files["kdump"]}"')
        vm.monitor(f'dump-guest-memory -p "{files["paging"]}"')
        for name, path in files.items():
            assert path.exists(), f"QEMU wrote no {name} dump"
        yield run, files


def test_formats_detected(dumps):
    _, files = dumps
    with open_dump(str(files["elf"])) as elf, open_dump(str(files["kdump"])) as kd:
        assert isinstance(elf, QemuElfSource) and elf.machine == "EM_X86_64"
        assert isinstance(kd, KdumpSource) and kd.flattened  # QEMU 7.2 -z writes flattened


def test_every_page_matches_pmemsave(dumps):
    run, files = dumps
    with RawSource(str(run.ram_path)) as raw, open_dump(str(files["elf"])) as elf, \
            open_dump(str(files["kdump"])) as kd:
        assert [r for r in elf.ranges() if r[0] < RAM_BYTES] == [(0, RAM_BYTES)]
        assert list(kd.ranges()) == list(elf.ranges())
        for addr in range(0, RAM_BYTES, PAGE):
            expected = raw.read(addr, PAGE)
            assert elf.read(addr, PAGE) == expected
            assert kd.read(addr, PAGE) == expected


def test_registers_from_notes(dumps):
    run, files = dumps
    for path in (files["elf"], files["kdump"]):
        with open_dump(str(path)) as src:
            vcpu = pick_vcpu(src, 0)
            assert vcpu.cr3 == run.header["cr3"]
            assert vcpu.cr0 == run.header["final_cr0"] and vcpu.cr4 == run.header["final_cr4"]
            assert vcpu.long_mode is True and vcpu.efer is None


def test_walks_agree(dumps):
    run, files = dumps
    header = run.header
    cpu = CpuState(cr0=header["final_cr0"], cr3=header["cr3"], cr4=header["final_cr4"],
                   efer=header["final_efer"], maxphyaddr=header["maxphyaddr"],
                   vendor="amd" if header["vendor"] == "AuthenticAMD" else "intel")

    def walk(src):
        return [(m.va, m.pa, m.size, m.page_size, m.flags, m.effective, m.rsvd)
                for m in Walker(src, cpu).iter_mappings()]

    with RawSource(str(run.ram_path)) as raw, open_dump(str(files["elf"])) as elf, \
            open_dump(str(files["kdump"])) as kd:
        expected = walk(raw)
        assert len(expected) > 10
        assert walk(elf) == expected and walk(kd) == expected


def test_paging_dump_refused(dumps):
    _, files = dumps
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(files["paging"]))
    assert "-p" in str(err.value) and files["paging"].name in str(err.value)
