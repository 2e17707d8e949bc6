"""One derivation of a domain's CPU state (issue 13) and whose choice each fault is (issue 14).

Rules: SDM Vol. 3A §4.6 (SMEP/SMAP bind supervisor accesses: CPL < 3), Xen's PV32 ring 1
(xen/arch/x86/pv/domain.c, asm/desc.h FLAT_COMPAT_RING1_CS 0xe019), HVM CR4 valid bits
(hvm_cr4_guest_valid_bits: no LA57 before 4.18 here per the FACTS table). Every test states the
answer the rule gives, not what the code happens to print.
"""

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import A, Builder, P, RW, US
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.domain_cpu import DOMAINS, Options, derive
from gdb_xenpte.errors import OptionError
from gdb_xenpte.filters import build_filter
from gdb_xenpte.findings import group
from gdb_xenpte.session import prepare
from gdb_xenpte.sources.base import NoMemory, VcpuRegs
from gdb_xenpte.sources.memory import MemorySource

LM = EFER.LME | EFER.LMA | EFER.NXE
CR0 = 0x80050033
LINUX_5LEVEL_CR4 = 0x751EF0  # a Debian 6.1 guest under QEMU -cpu max: LA57, PKE, SMEP, SMAP


def guest():
    b = Builder("4level")
    b.map(0xFFFFFFFF81000000, 0x5000, flags=P | RW | A)      # kernel page
    b.map(0x08048000, 0x6000, flags=P | RW | US | A)         # user page
    return b


def cpu_source(cr4, cs=None, b=None, domain=None):
    b = b or guest()
    regs = VcpuRegs(0, cr0=CR0, cr3=b.cr3, cr4=cr4, efer=LM, cs=cs, origin="vCPU 0 (test)")
    return MemorySource(b.image(), "test dump", vcpus=[regs], domain=domain)


def _bit_lines(cr4):
    """``{bit: value}`` as each explanation line states it (``NAME=v: ...``)."""
    names = {v: k for k, v in CR4.NAMES.items()}
    out = {}
    for line in cr4.explanation:
        if not line.startswith("note:"):
            name, value = line.split(":", 1)[0].split("=")
            out[names[name] if name in names else int(name, 16)] = int(value)
    return out


def test_same_inputs_same_answer_from_xen_cr4_and_the_walk():
    """Finding 1: `xen-cr4 0x4000a0 --domain hvm --xen 4.17` and a walk given --cr4 0x4000a0
    must agree: the given CR4 has PKE, so the CPU has PKU, and PKE stays."""
    opts = Options(cr4=0x4000A0, domain="hvm", xen="4.17")
    alone = derive(NoMemory(), VcpuRegs(-1), opts)
    b = guest()
    walk = prepare(cpu_source(None, b=b), opts.with_(cr3=b.cr3))
    assert alone.effective_cr4 == walk.effective_cr4 == 0x4000A0
    assert alone.protections == walk.state.protections


def test_leftover_xen_version_does_not_rewrite_the_cpus_cr4():
    """Finding 2: a 5-level Linux CPU (LA57=1) stays 5-level under a leftover xen-version; the
    header names the setting and the contradiction."""
    opts = Options(xen="4.17", origins=(("xen", "set xen-pte xen-version"),))
    s = derive(cpu_source(LINUX_5LEVEL_CR4, cs=0x10), VcpuRegs(0, cr3=0x1000,
                                                            cr4=LINUX_5LEVEL_CR4, cs=0x10), opts)
    assert s.effective_cr4 == LINUX_5LEVEL_CR4 and s.domain == "hvm"
    assert any(n == "xen-version 4.17 from `set xen-pte xen-version`" for n in s.notes), s.notes
    assert any("LA57" in n and "contradicts" in n for n in s.notes), s.notes


@settings(max_examples=200, deadline=None)
@given(cr4=st.integers(0, (1 << 25) - 1), cs=st.sampled_from([None, 0x10, 0xE008, 0xE019,
                                                             0xE033]),
       domain=st.sampled_from((None,) + DOMAINS), xen=st.sampled_from([None, "4.6", "4.17"]))
def test_every_bit_line_describes_the_value_shown(cr4, cs, domain, xen):
    """Finding 3: each `NAME=v` line states the bit as it is in the effective value (and in
    the guest's view for PV) — never another value's bits."""
    s = derive(cpu_source(cr4, cs=cs), VcpuRegs(0, cr3=0x1000, cr4=cr4, cs=cs),
               Options(domain=domain, xen=xen))
    for value in [s.cr4] + ([s.guest_view] if s.guest_view is not None else []):
        for bit, v in _bit_lines(value).items():
            assert v == bool(value.value & bit), (hex(value.value), CR4.NAMES[bit])


def test_nothing_says_xen_so_no_policy_applies():
    """Finding 4: a bare guest (ring-0 CS that is not Xen's, no Xen option) is native."""
    s = derive(cpu_source(LINUX_5LEVEL_CR4, cs=0x10),
               VcpuRegs(0, cr3=0x1000, cr4=LINUX_5LEVEL_CR4, cs=0x10), Options())
    assert s.domain == "native" and s.policy is None
    assert s.effective_cr4 == LINUX_5LEVEL_CR4
    assert any(ln.startswith("LA57=1: read from the CPU") for ln in s.cr4.explanation)
    assert {k: p.chooser for k, p in s.protections.items()} == {
        "smep": "guest", "smap": "guest", "pke": "guest", "pks": "-"}
    assert s.imposed_cr4 == 0


@pytest.mark.parametrize("domain, xen, cr4, smep", itertools.product(
    DOMAINS, ("4.6", "4.17"), (0x6A0, 0x3006A0, 0x7526E0), (None, "off", "hvm")))
def test_matrix_xen_cr4_and_walk_agree(domain, xen, cr4, smep):
    """Issue 13's matrix: domain x Xen version x given CR4 x smep option — the question asked
    alone (xen-cr4 VALUE) and by a walk (--cr4) gets one answer."""
    opts = Options(cr4=cr4, domain=domain, xen=xen, smep=smep)
    b = guest()
    try:
        alone = derive(NoMemory(), VcpuRegs(-1), opts)
    except OptionError as err:  # e.g. smep=hvm before 4.8: refused the same way by both
        with pytest.raises(OptionError, match=re.escape(str(err))):
            prepare(cpu_source(None, b=b), opts.with_(cr3=b.cr3))
        return
    walk = prepare(cpu_source(None, b=b), opts.with_(cr3=b.cr3)).state
    assert (alone.effective_cr4, alone.kernel_cpl, alone.protections, alone.imposed_cr4) == \
        (walk.effective_cr4, walk.kernel_cpl, walk.protections, walk.imposed_cr4)


def test_ring1_kernel_running_under_smep_smap_is_a_pf_loop_candidate():
    """A CPU stopped in a 32-bit PV kernel (CS 0xe019, ring 1) whose CR4 has SMEP|SMAP: Xen
    imposed them (a PV guest cannot set either), so the user page its kernel touches is a
    #PF-loop candidate, listed by xen-pte-check and by --faults."""
    cr4 = 0x3526E0
    s = prepare(cpu_source(cr4, cs=0xE019), Options(ac=0))
    assert s.domain == "pv32" and s.effective_cr4 == cr4  # observed, kept
    assert s.state.protections["smap"].chooser == "xen" and s.state.imposed_cr4 & CR4.SMAP
    maps = list(s.walker().iter_mappings())
    user = next(m for m in maps if m.va == 0x08048000)
    assert user.verdicts["kernel_read"].imposed == ("SMAP",)
    assert user.verdicts["kernel_exec"].imposed == ("SMEP",)
    (loop,) = [g for g in group(maps, s.domain, s.xen_view) if g.key == "pf-loop"]
    assert [f.mapping.va for f in loop.examples] == [0x08048000]
    assert [m.va for m in maps if build_filter(faults="beyond")(m)] == [0x08048000]


def test_a_guests_own_smap_is_no_pf_loop():
    """The same page under a native kernel that set SMAP itself: a fault it chose, shown by
    --faults=all only and never as a #PF-loop candidate."""
    s = prepare(cpu_source(0x3526E0, cs=0x10), Options(ac=0))
    maps = list(s.walker().iter_mappings())
    assert not [g for g in group(maps, s.domain) if g.key == "pf-loop"]
    assert not [m for m in maps if build_filter(faults="beyond")(m)]
    assert [m.va for m in maps if build_filter(faults="all")(m)] == [0x08048000]


def test_what_if_smap_is_imposed_on_a_native_guest_only_where_it_lacked_smap():
    """A what-if that switches SMAP on imposes it; one that finds SMAP already set changes
    nothing about whose choice it is."""
    from gdb_xenpte.whatif import what_if
    base = Options(ac=0)
    without = prepare(cpu_source(0x6A0 | CR4.SMEP, cs=0x10), base)
    r = what_if(without, "smap", base)
    assert [c.va for c in r.broken] == [0x08048000]
    already = prepare(cpu_source(0x6A0 | CR4.SMAP, cs=0x10), base)
    assert what_if(already, "smap", base).changes == []
