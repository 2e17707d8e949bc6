"""Real QEMU dumps: the readers against files written by the installed qemu-system-x86_64.

Two guests. A firmware-only guest (no kernel, two vCPUs, nothing to build) is stopped and dumped as
ELF and as ``-z`` (flattened kdump, zlib) next to a ``pmemsave`` of its RAM: every page and every
vCPU's control registers must match. The oracle guest (tests/targets/oracle.py) runs in long mode
with 4-level paging: its dumps must walk exactly like its raw RAM image, and its ``-p`` dump must be
refused. Needs QEMU (installed by .ci/run); a missing QEMU is a setup error, not a skip.
"""

import re
import time

import pytest

from gdb_xenpte.cpu import CpuState
from gdb_xenpte.errors import DumpFormatError
from gdb_xenpte.sources.kdump import KdumpSource
from gdb_xenpte.sources.open import open_dump, pick_vcpu
from gdb_xenpte.sources.qemu_elf import QemuElfSource
from gdb_xenpte.sources.raw import RawSource
from gdb_xenpte.walk import Walker
from targets.oracle import boot_oracle
from targets.qemu import Qemu

PAGE = 4096
FIRMWARE_RAM = 32 << 20


def _control_registers(text):
    """``info registers -a`` -> [(cr0, cr3, cr4)] per CPU, in CPU order."""
    return [tuple(int(v, 16) for v in m.groups()) for m in
            re.finditer(r"CR0=([0-9a-f]+) CR2=[0-9a-f]+ CR3=([0-9a-f]+) CR4=([0-9a-f]+)", text)]


@pytest.fixture(scope="module")
def firmware_dumps(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("firmware-dumps")
    with Qemu(["-smp", "2"], memory=f"{FIRMWARE_RAM >> 20}M", workdir=workdir) as vm:
        time.sleep(0.5)  # let the firmware write something into RAM
        vm.monitor("stop")
        files = {"elf": workdir / "fw.elf", "kdump": workdir / "fw.kdump"}
        vm.monitor(f'dump-guest-memory "{files["elf"]}"')
        vm.monitor(f'dump-guest-memory -z "{files["kdump"]}"')
        ram = vm.pmemsave_file(0, FIRMWARE_RAM, workdir / "ram.bin")
        registers = _control_registers(vm.monitor("info registers -a"))
        yield files, ram, registers


def test_formats_detected(firmware_dumps):
    files, _, _ = firmware_dumps
    with open_dump(str(files["elf"])) as elf, open_dump(str(files["kdump"])) as kd:
        assert isinstance(elf, QemuElfSource)
        assert isinstance(kd, KdumpSource) and kd.flattened  # QEMU 7.2 -z writes flattened


def test_every_page_matches_pmemsave(firmware_dumps):
    files, ram, _ = firmware_dumps
    with RawSource(str(ram)) as raw, open_dump(str(files["elf"])) as elf, \
            open_dump(str(files["kdump"])) as kd:
        assert list(kd.ranges()) == list(elf.ranges())
        compared = 0
        for start, end in elf.ranges():
            for addr in range(start, min(end, FIRMWARE_RAM), PAGE):
                expected = raw.read(addr, PAGE)
                assert elf.read(addr, PAGE) == expected
                assert kd.read(addr, PAGE) == expected
                compared += 1
        assert compared > FIRMWARE_RAM // PAGE * 3 // 4


def test_registers_of_every_vcpu(firmware_dumps):
    files, _, registers = firmware_dumps
    assert len(registers) == 2
    for path in files.values():
        with open_dump(str(path)) as src:
            got = [(v.cr0, v.cr3, v.cr4) for v in src.vcpus()]
            assert got == registers


@pytest.fixture(scope="module")
def oracle_dumps(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("oracle-dumps")
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


def test_long_mode_registers_from_notes(oracle_dumps):
    run, files = oracle_dumps
    for path in (files["elf"], files["kdump"]):
        with open_dump(str(path)) as src:
            vcpu = pick_vcpu(src, 0)
            assert vcpu.cr3 == run.header["cr3"]
            assert vcpu.cr0 == run.header["final_cr0"] and vcpu.cr4 == run.header["final_cr4"]
            assert vcpu.long_mode is True and vcpu.efer is None


def test_walks_agree(oracle_dumps):
    run, files = oracle_dumps
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


def test_paging_dump_refused(oracle_dumps):
    _, files = oracle_dumps
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(files["paging"]))
    assert "-p" in str(err.value) and files["paging"].name in str(err.value)
