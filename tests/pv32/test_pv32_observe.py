"""The PV32 observation helpers on text captured from a real run (no QEMU needed)."""

from tests.pv32.observe import parse_all_registers, parse_guest_report

# `info registers -a` of a stop (trimmed): CPU 0 in the guest's ring-1 spin loop (32-bit dump
# format), CPU 1 in Xen's idle loop (64-bit format).
REGS = """
CPU#0
EAX=00000000 EBX=c0004010 ECX=00000c87 EDX=0ec02025
EIP=c0000270 EFL=00000202 [-------] CPL=1 II=0 A20=1 SMM=0 HLT=0
CS =e019 00000000 ffffffff 00cfbb00 DPL=1 CS32 [-RA]
TR =e040 405a5040 00000067 00008900 DPL=0 TSS64-avl
CR0=8005003b CR2=0000000000000000 CR3=000000000fcbe000 CR4=00050660
EFER=0000000000001d01
CPU#1
RAX=0000000000000000 RBX=ffff830002200000 RCX=000000000000007f RDX=ffff830000000000
RIP=ffff82d0402051d7 RFL=00000212 [----A--] CPL=0 II=0 A20=1 SMM=0 HLT=0
CS =e008 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]
CR0=8005003b CR2=0000000000000000 CR3=000000000fc99000 CR4=007506e0
EFER=0000000000001d01
"""

SERIAL = "\r\n".join([
    "(XEN) Freed 680kB init memory", "pv32: hello from ring 1", "pv32: magic=xen-3.0-x86_32p",
    "pv32: cs=0x0000e019", "pv32: cr4=0x00000660", "pv32: l3e3=0x000000000ec10067",
    "pv32: user-data va=0xc0003000 pte=0x0ec03067",
    "pv32: no-fault read=0xfeedf00d exec=0x600dc0de", "pv32: spinning", ""])


def test_registers_of_both_cpus():
    cpus = parse_all_registers(REGS)
    ring1, idle = cpus[0], cpus[1]
    assert ring1.in_ring1 and (ring1.ip, ring1.rflags, ring1.cpl) == (0xC0000270, 0x202, 1)
    assert (ring1.cr3, ring1.cr4, ring1.efer) == (0xFCBE000, 0x50660, 0x1D01)
    assert ring1.vcpu().long_mode is True
    assert idle.in_xen and (idle.ip, idle.cr4) == (0xFFFF82D0402051D7, 0x7506E0)


def test_guest_report():
    got = parse_guest_report(SERIAL)
    assert got["magic"] == "xen-3.0-x86_32p"
    assert (got["cs"], got["cr4"], got["l3e3"]) == (0xE019, 0x660, 0xEC10067)
    assert got["user-data"] == {"va": 0xC0003000, "pte": 0xEC03067}
    assert got["no-fault"] == {"read": 0xFEEDF00D, "exec": 0x600DC0DE}
    assert got["spinning"] is True and got["hello from ring 1"] is True
