"""xen-domains and --domid/--xen-syms in real gdb, on synthetic dumps: pCPU walks of a Xen host
kexec vmcore, and one clear error line for every input that is not what the options need.
(The full path on a genuine Xen crash dump: tests/live/test_xen_crash_reader.py.)"""

import pathlib
import sys

import pytest

from builder import P, RW, US, Builder
from gdbrun import run_gdb

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sources"))
from writers import write_qemu_elf  # noqa: E402
from writers_kexec import crash_info, vmcoreinfo_xen, write_kexec_elf, xen_crash_notes  # noqa: E402

MARKER = b"pcpu1-marker".ljust(4096, b"\0")


@pytest.fixture(scope="module")
def host_vmcore(tmp_path_factory):
    """A Xen host vmcore: pCPU 0 idle (no tables mapped at 0x400000), pCPU 1 in a domU's L4."""
    idle = Builder(table_base=0x100000)
    idle.map(0xFFFF830000000000, 0x0, size=1 << 21, flags=P | RW)
    domu = Builder(table_base=0x200000)
    domu.map(0x400000, 0x300000, flags=P | RW | US)
    pages = {**idle.image(), **domu.image(), 0x300000: MARKER}
    notes = xen_crash_notes(
        [dict(cr0=0x80050033, cr3=idle.cr3, cr4=0x3526E0, cs=0xE008),
         dict(cr0=0x80050033, cr3=domu.cr3, cr4=0x150664, cs=0xE008)],
        crash_info(), vmcoreinfo_xen({"domain_list": 0xFFFF82D0405A7400,
                                      "pgd_l4": 0xFFFF82D040499000},
                                     {"domain.domain_id": 0, "domain.next_in_list": 136}))
    path = tmp_path_factory.mktemp("host") / "host.vmcore"
    write_kexec_elf(path, pages, notes)
    return str(path)


def _errors(res):
    assert "Traceback" not in res.stderr and "Python Exception" not in res.stderr, res.stderr
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


def test_pcpu_walk_uses_the_crash_notes(host_vmcore):
    res = run_gdb(f"xen-pte-walk --core {host_vmcore} --vcpu 1 --json 0x400000")
    header, _trace, mapping = res.json_lines()
    assert header["cr3"] == "0x200000" and header["effective_cr4"] == "0x150664"
    assert header["vcpu"] == 1 and "Xen host kexec crash vmcore" in header["source"]
    assert any("saved by the pCPU itself" in n for n in header["notes"])
    assert mapping["pa"] == "0x300000"


@pytest.mark.parametrize("command, expected", [
    ("xen-domains", "xen-domains: no live target: connect with 'target remote HOST:PORT', "
                    "or give --core FILE"),
    ("xen-pte-walk --domid 1 0", "xen-pte-walk: no live target: connect with 'target remote "
                                 "HOST:PORT', or give --core FILE"),
    ("xen-pte-walk --core {host} --domid 99999", "xen-pte-walk: argument --domid: 99999 is not "
                                                 "in 0..32751"),
    ("xen-pte-walk --core {host} --domid 1 --xen-syms /nonexistent 0",
     "xen-pte-walk: /nonexistent: cannot open xen-syms: No such file or directory"),
    ("xen-pte-walk --core {host} --domid 1 --xen-syms /etc/hostname 0",
     "xen-pte-walk: /etc/hostname: not a readable ELF xen-syms"),
    ("xen-pte-walk --core {qemu} --domid 1 0", "xen-pte-walk: --domid needs the running Xen's "
                                               "xen-syms (--xen-syms FILE, or gdb's symbol "
                                               "file) on QEMU ELF dump guest.elf: it has no Xen "
                                               "crash notes"),
    ("xen-pte-p2m --core {host} 0x1000", "xen-pte-p2m: give --domid N: the HVM/PVH domain "
                                         "whose address to trace"),
    ("xen-domains --core {qemu}", "xen-domains: QEMU ELF dump guest.elf has no Xen crash notes: "
                                  "give the running Xen's xen-syms (--xen-syms FILE, or load it "
                                  "as gdb's symbol file)"),
])
def test_bad_input_is_one_line(host_vmcore, tmp_path, command, expected):
    qemu = tmp_path / "guest.elf"
    write_qemu_elf(qemu, {0x1000: bytes(4096)}, [dict(cr3=0x1000)])
    res = run_gdb(command.format(host=host_vmcore, qemu=qemu))
    errors = _errors(res)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_xen_domains_without_xen_syms_reads_the_vmcoreinfo(host_vmcore):
    """No xen-syms: the note's symbols are used; this image has no domain list behind them, so
    the error names the Xen VA (domain_list) and its machine address (CRASH_INFO's default
    xen_phys_start 0x7e00000 + its offset in the image's GiB), in one line."""
    res = run_gdb(f"xen-domains --core {host_vmcore}")
    errors = _errors(res)
    maddr = 0x7E00000 + (0xFFFF82D0405A7400 & (2 ** 30 - 1))  # virt_to_maddr: the image's GiB
    assert errors == ["xen-domains: host.vmcore: Xen VA 0xffff82d0405a7400: not in dump at "
                      f"physical address {maddr:#x}"], errors
