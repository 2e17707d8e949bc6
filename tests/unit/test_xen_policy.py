"""Xen policy facts (gdb_xenpte.xen), checked against Xen's source and real-CPU observations.

Expected values come from xen-project/xen at the tags and commits named in each test (read with
``git show TAG:path``), from ../shared/reference/xen-pte-abi.md and from
../shared/reference/real-targets.md — not from the module under test.
"""

import ast
import pathlib

import pytest

from gdb_xenpte import xen
from gdb_xenpte.arch import CR4
from gdb_xenpte.domain_cpu import Options, derive
from gdb_xenpte.errors import OptionError
from gdb_xenpte.sources.base import NoMemory, VcpuRegs
from gdb_xenpte.xen import (
    Hardware, XenPolicy, default_xen_cr4, disallow_mask, disallow_violations, effective_cr4,
    get_pte_flags, guest_visible_cr4, kernel_cpl, pkey_collision,
    put_pte_flags, xen_bits,
)

P, RW, US, PWT, PCD, PS, G = 1, 2, 4, 8, 0x10, 0x80, 0x100
BIT52, BIT62, NX = 1 << 52, 1 << 62, 1 << 63
FRAME = 0x1234000

# Xen's CR4 in its idle loop on QEMU TCG -cpu max (real-targets.md, "A 32-bit PV guest").
TCG_XEN_CR4 = 0x7506E0


def pv32(version, **kw):
    return XenPolicy(version, domain="pv32", **kw)


def pv64(version, **kw):
    return XenPolicy(version, domain="pv64", **kw)


def hvm(version, **kw):
    return XenPolicy(version, domain="hvm", **kw)


# --------------------------------------------------------------------------------------------
# Policy parsing
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("4.17", (4, 17, 0)), ("4.6", (4, 6, 0)), ("3.4", (3, 4, 0)), ("3.0.3", (3, 0, 3)),
    ("4.22+", (4, 22, 0)), ((4, 7), (4, 7, 0)), ("4.23", (4, 23, 0)),
])
def test_version_parsing(text, want):
    """Xen releases run 3.0-3.4 then 4.0-4.22 (git tags RELEASE-3.0.0 .. RELEASE-4.22.0)."""
    assert XenPolicy(text).version == want


@pytest.mark.parametrize("text", ["foo", "", "5.0", "2.0", "3.7", "4", "4.x", "4.17.0.1", 4.10])
def test_bad_version_is_one_line_option_error(text):
    """An unknown version string is a user error: OptionError with one line."""
    with pytest.raises(OptionError) as err:
        XenPolicy(text)
    assert "\n" not in str(err.value) and "version" in str(err.value)


@pytest.mark.parametrize("value, want", [
    (True, True), (False, False), ("hvm", "hvm"), ("on", True), ("0", False), ("HVM", "hvm"),
])
def test_smep_values(value, want):
    """smep=/smap= take a boolean or 'hvm' (xen/arch/x86/setup.c parse_smep_param, 493ab190e5)."""
    assert XenPolicy("4.17", smep=value, smap=value).smep == want


@pytest.mark.parametrize("kw", [{"smep": "maybe"}, {"smap": 2}, {"smep": "hvm_only"}])
def test_bad_smep_value(kw):
    """Anything else is rejected, in one line."""
    with pytest.raises(OptionError) as err:
        XenPolicy("4.17", **kw)
    assert "\n" not in str(err.value)


def test_smep_hvm_needs_4_8():
    """'hvm' was added in 493ab190e5 (He Chen, 2016-10), first in RELEASE-4.8.0; 4.7's setup.c
    has only invbool_param("smep")."""
    with pytest.raises(OptionError, match="4.8"):
        XenPolicy("4.7", smap="hvm")
    assert XenPolicy("4.8", smap="hvm").smap == "hvm"


def test_bad_domain_and_pv32_before_compat():
    """Domain types are hvm/pv64/pv32; 32-on-64 PV arrived with cb44adaed6 (2007-01, 3.1)."""
    with pytest.raises(OptionError):
        XenPolicy("4.17", domain="pvh64")
    with pytest.raises(OptionError, match="3.1"):
        XenPolicy("3.0.4", domain="pv32")
    with pytest.raises(OptionError, match="allowsuperpage"):
        XenPolicy("4.10", superpages=True)


# --------------------------------------------------------------------------------------------
# Flags word
# --------------------------------------------------------------------------------------------

def test_flags_word_packing():
    """get_pte_flags: flags[11:0] = pte[11:0], flags[23:12] = pte[63:52]
    (xen/arch/x86/include/asm/x86_64/page.h; inline since e9cb0d1d0e, 4.10)."""
    assert get_pte_flags(NX | BIT62 | BIT52 | FRAME | 0x67) == 0x800000 | 0x400000 | 0x1000 | 0x67
    assert put_pte_flags(0xFFFFF198) == 0xFFF0000000000198
    assert put_pte_flags(0x00400000) == BIT62


# --------------------------------------------------------------------------------------------
# Disallow masks
# --------------------------------------------------------------------------------------------

def test_l1_masks_release_debug():
    """L1_DISALLOW_MASK = (base_disallow_mask | _PAGE_GNTTAB) & ~_PAGE_GLOBAL, base 0xFF000198 on
    NX hardware (xen/arch/x86/mm.c:157-177, 278-284 at RELEASE-4.17.0; 6eec5bd4db, 4.8)."""
    assert disallow_mask("pt", pv64("4.17")) == 0xFF000098
    assert disallow_mask("pt", pv64("4.17", debug=True)) == 0xFF400098
    assert disallow_mask("l1", pv32("4.17", debug=True)) == 0xFF400098


def test_l1_masks_io_capable():
    """l1_disallow_mask(d) drops PAGE_CACHE_ATTRS (0x98) for I/O-capable domains
    (xen/arch/x86/mm.c; 3052b875c7, first in 3.2)."""
    assert disallow_mask("pt", pv64("4.17", io_capable=True)) == 0xFF000000
    assert disallow_mask("pt", pv64("4.17", io_capable=True, debug=True)) == 0xFF400000
    # Before 3.2 there was no such relaxation.
    assert disallow_mask("pt", pv64("3.1", io_capable=True)) == 0xFF000080


def test_upper_level_masks():
    """L2/L4 = base, 64-bit PV L3 = base, 32-bit PV L3 = 0xFFFFF198 (mm.c at RELEASE-4.17.0;
    compat L3 relaxed by 2f819e06d1, 3.4)."""
    for level in ("pd", "pdpt", "pml4"):
        assert disallow_mask(level, pv64("4.17")) == 0xFF000198
    assert disallow_mask("pd", pv64("4.17", debug=True)) == 0xFF000198
    assert disallow_mask("pdpt", pv32("4.17")) == 0xFFFFF198
    assert put_pte_flags(disallow_mask("pdpt", pv32("4.17"))) == 0xFFF0000000000198


def test_masks_without_nx_hardware():
    """base_disallow_mask keeps _PAGE_NX_BIT unless cpu_has_nx (mm.c arch_init_memory)."""
    assert disallow_mask("pd", pv64("4.17", hw=Hardware(nx=False))) == 0xFF800198


def test_mask_history():
    """x86_64 masks by era, from the headers at each tag:
    RELEASE-3.0.0 asm-x86/page.h (0xFFFFF180|GNTTAB)&~NX at every level;
    1a4d425438 (3.0.3) 0xFF000180, L1 without G; 3bddff4a58 (3.1) 0xFF800180&~NX, compat L3
    0xFFFFF1E6; 3052b875c7 (3.2) 0xFF800198&~NX, compat L3 0xFFFFF1FE; cd5e866be5 (3.4) GNTTAB
    to bit 22."""
    assert disallow_mask("pt", pv64("3.0")) == 0xFF7FF180
    assert disallow_mask("pt", pv64("3.0", debug=True)) == 0xFF7FF980
    assert disallow_mask("pd", pv64("3.0", debug=True)) == 0xFF7FF980
    assert disallow_mask("pt", pv64("3.0.3")) == 0xFF000080
    assert disallow_mask("pt", pv64("3.0.3", debug=True)) == 0xFF000880
    assert disallow_mask("pd", pv64("3.0.3", hw=Hardware(nx=False))) == 0xFF000180
    assert disallow_mask("pd", pv64("3.1", hw=Hardware(nx=False))) == 0xFF800180
    assert disallow_mask("pdpt", pv32("3.1")) == 0xFFFFF1E6
    assert disallow_mask("pdpt", pv32("3.3")) == 0xFFFFF1FE
    assert disallow_mask("pt", pv64("3.3", debug=True)) == 0xFF000898
    assert disallow_mask("pt", pv64("3.4", debug=True)) == 0xFF400098


def test_l2_pse_and_superpages():
    """PSE on a PV L2 is refused unless 'allowsuperpage' (3.4-4.9; get_page_from_l2e at
    3.4.0-rc1, L2_DISALLOW_MASK at RELEASE-4.9.0); 56fff3e5e9 (4.10) removed PV superpages."""
    assert disallow_violations(FRAME | PS | P, "pd", pv64("4.17")) == [(7, "PSE")]
    assert disallow_violations(FRAME | PS | P, "pd", pv64("4.9", superpages=True)) == []


def test_violations_named():
    """'Bad L1 flags' cases: the violating PTE bits, named (mm.c get_page_from_l1e)."""
    assert disallow_violations(FRAME | PCD | P, "pt", pv64("4.17")) == [(4, "PCD")]
    assert disallow_violations(FRAME | PCD | P, "pt", pv64("4.17", io_capable=True)) == []
    assert disallow_violations(FRAME | PS | P, "pt", pv64("4.17")) == [(7, "PAT")]
    assert disallow_violations(FRAME | BIT62 | P, "pt", pv64("4.17", debug=True)) == \
        [(62, "_PAGE_GNTTAB")]
    assert disallow_violations(FRAME | BIT62 | P, "pt", pv64("4.17")) == []
    assert disallow_violations(FRAME | G | P, "pt", pv64("4.17")) == []
    assert disallow_violations(FRAME | G | P, "pd", pv64("4.17")) == [(8, "G")]
    assert disallow_violations(FRAME | BIT52 | NX | P, "pdpt", pv32("4.17")) == \
        [(52, "bit52"), (63, "NX")]
    assert disallow_violations(FRAME | NX | P, "pd", pv64("4.17", hw=Hardware(nx=False))) == \
        [(63, "NX")]
    assert disallow_violations(FRAME | (1 << 11) | P, "pt", pv64("3.3", debug=True)) == \
        [(11, "_PAGE_GNTTAB")]


def test_violations_only_for_present_pv_entries():
    """Xen validates only present entries, and only for PV guests."""
    assert disallow_violations(FRAME | PCD, "pt", pv64("4.17")) == []
    assert disallow_violations(FRAME | PCD | P, "pt", hvm("4.17")) == []
    with pytest.raises(OptionError):
        disallow_mask("pt", hvm("4.17"))


def test_bad_level_names():
    """A 32-bit PV guest has no L4 of its own (Xen owns the compat L4); PV has no 5-level."""
    with pytest.raises(OptionError):
        disallow_violations(P, "pml4", pv32("4.17"))
    with pytest.raises(OptionError):
        xen_bits(P, "pml5", pv64("4.17"))
    with pytest.raises(OptionError):
        xen_bits(P, "bogus", pv64("4.17"))


# --------------------------------------------------------------------------------------------
# Xen-owned bits
# --------------------------------------------------------------------------------------------

def test_bit52_on_pv64_l1():
    """_PAGE_GUEST_KERNEL (1U<<12) = PTE bit 52 on 64-bit PV L1 entries
    (asm/x86_64/page.h:138; 6f562e72cd, 2006-09, first in 3.0.3; adjust_guest_l1e in pv/mm.h)."""
    kernel_page = FRAME | NX | BIT52 | 0x67
    bits = xen_bits(kernel_page, "pt", pv64("4.17"))
    assert [(b, n) for b, n, _ in bits] == [(52, "_PAGE_GUEST_KERNEL")]
    assert "kernel" in bits[0][2]
    assert [b for b, _, _ in xen_bits(kernel_page, "l1", pv64("3.0.3"))] == [52]


def test_bit52_not_xen_elsewhere():
    """Bit 52 is Xen's only on present L1 of 64-bit PV, from 3.0.3 (before, 1a4d425438 had not
    yet freed bits 62:52 at all); adjust_guest_l1e leaves 32-bit PV L1 alone; HVM PTEs hold GFNs."""
    entry = FRAME | BIT52 | 0x67
    assert xen_bits(entry, "pt", pv64("3.0")) == ()
    assert xen_bits(entry, "pt", pv32("4.17")) == ()
    assert xen_bits(entry, "pd", pv64("4.17")) == ()
    assert xen_bits(entry, "pt", hvm("4.17")) == ()
    assert xen_bits(entry & ~P, "pt", pv64("4.17")) == ()


def test_bit52_with_global():
    """adjust_guest_l1e: bit 52 together with G logs 'Global bit is set in kernel page' and
    leaves G (xen/arch/x86/pv/mm.h at RELEASE-4.22.0; same macro in mm.c at 3.0.3-branched)."""
    (_, _, meaning), = xen_bits(FRAME | BIT52 | G | 0x67, "pt", pv64("4.17"))
    assert "Global bit is set in kernel page" in meaning


def test_gnttab_bit62_debug_only():
    """_PAGE_GNTTAB = 1U<<22 (PTE bit 62), undefined under NDEBUG (asm/page.h:332-341) — debug
    builds only; moved there from bit 11 by cd5e866be5 (2008-09, 3.4.0-rc1)."""
    entry = FRAME | BIT62 | NX | 0x67
    assert [(b, n) for b, n, _ in xen_bits(entry, "pt", pv64("4.17", debug=True))] == \
        [(62, "_PAGE_GNTTAB")]
    assert [(b, n) for b, n, _ in xen_bits(entry, "pt", pv32("3.4", debug=True))] == \
        [(62, "_PAGE_GNTTAB")]
    assert xen_bits(entry, "pt", pv64("4.17")) == ()
    assert xen_bits(entry, "pt", pv64("3.3", debug=True)) == ()


def test_gnttab_bit11_in_3_0_to_3_3():
    """3.0-3.3 debug builds: _PAGE_GNTTAB = _PAGE_AVAIL2, PTE bit 11 (asm-x86/page.h at
    RELEASE-3.0.0 and 3.3.0-branched; ed5b604759)."""
    entry = FRAME | (1 << 11) | 0x67
    for version in ("3.0", "3.2", "3.3"):
        assert [b for b, _, _ in xen_bits(entry, "pt", pv64(version, debug=True))] == [11]
        assert xen_bits(entry, "pt", pv64(version)) == ()
    assert xen_bits(entry, "pt", pv64("3.4", debug=True)) == ()


def test_pkey_collision():
    """Bit 62 is both PKEY bit 3 (_PAGE_PKEY_BITS 0x780000, asm/x86_64/page.h:123, ccbe3b1448)
    and debug _PAGE_GNTTAB: 'an entry whose key is really a Xen bit must say so'."""
    entry = FRAME | BIT62 | (1 << 59) | 0x67
    note = pkey_collision(entry, "pt", pv64("4.17", debug=True))
    assert note and "_PAGE_GNTTAB" in note and "9" in note
    assert pkey_collision(entry, "pt", pv64("4.17")) is None
    assert pkey_collision(entry, "pt", hvm("4.17", debug=True)) is None
    assert pkey_collision(FRAME | (1 << 59) | 0x67, "pt", pv64("4.17", debug=True)) is None


# --------------------------------------------------------------------------------------------
# CR4: the seed's scenarios
# --------------------------------------------------------------------------------------------

SMEP_SMAP = CR4.SMEP | CR4.SMAP


def _kernel(domain, version, xen_cr4=None):
    """The one derivation of what binds the domain's kernel (domain_cpu.derive)."""
    return derive(NoMemory(), VcpuRegs(-1), Options(domain=domain, xen=version, xen_cr4=xen_cr4))


def _binds(state):
    """Protection -> who chose it, for those that bind the kernel."""
    return {name: p.chooser for name, p in state.protections.items() if p.applies}


def test_pv32_kernel_on_4_6_runs_with_smap():
    """Before 4.7 nothing clears SMEP/SMAP for ring 1: pv_guest_cr4_to_real_cr4 ORs in Xen's
    SMEP|SMAP (asm-x86/domain.h at RELEASE-4.6.0) and compat/entry.S at RELEASE-4.6.0 has no
    alt_cr4_pv32 — the regression in the 'Xen PV PTE ABI' mail."""
    cr4 = effective_cr4(pv32("4.6"), xen_cr4=0x1506F0 | SMEP_SMAP).value
    assert cr4 & SMEP_SMAP == SMEP_SMAP
    state = _kernel("pv32", "4.6", 0x1506F0 | SMEP_SMAP)
    assert state.kernel_cpl == 1 and _binds(state) == {"smep": "xen", "smap": "xen"}


def test_pv32_kernel_on_4_7_has_them_cleared():
    """Since ea3e8edfdb (J. Beulich, 2016-05-13, RELEASE-4.7.0) compat_restore_all_guest clears
    XEN_CR4_PV32_BITS on return to ring 1/2; ring 3 and Xen keep them (entry.S:130-154)."""
    policy = pv32("4.7")
    xen_cr4 = 0x1506F0 | SMEP_SMAP
    assert effective_cr4(policy, xen_cr4=xen_cr4).value & SMEP_SMAP == 0
    assert effective_cr4(policy, xen_cr4=xen_cr4, context="user").value & SMEP_SMAP == SMEP_SMAP
    assert effective_cr4(policy, xen_cr4=xen_cr4, context="xen").value & SMEP_SMAP == SMEP_SMAP
    assert _binds(_kernel("pv32", "4.7", xen_cr4)) == {}
    line, = [ln for ln in effective_cr4(policy, xen_cr4=xen_cr4).explanation
             if ln.startswith("SMAP=")]
    assert "ring 1" in line and "4.7" in line


def test_smap_hvm_on_4_8():
    """smap=hvm (493ab190e5, 4.8): Xen's own CR4 lacks SMAP, so PV context does too, while an
    HVM guest may still set it (setup.c:2054-2074; hvm_cr4_guest_valid_bits)."""
    derived = effective_cr4(pv32("4.8", smap="hvm"), context="xen").value
    assert derived & CR4.SMAP == 0 and derived & CR4.SMEP
    assert default_xen_cr4(pv32("4.8", smap="hvm")).value & CR4.SMAP == 0
    guest = CR4.PAE | CR4.PGE | CR4.SMAP
    assert effective_cr4(hvm("4.8", smap="hvm"), guest_cr4=guest).value & CR4.SMAP
    assert effective_cr4(hvm("4.8", smap=False), guest_cr4=guest).value & CR4.SMAP == 0


def test_pv64_kernel_not_subject():
    """The 64-bit PV kernel runs at CPL3 (FLAT_KERNEL_CS64 = FLAT_RING3_CS64 = 0xe033,
    public/arch-x86/xen-x86_64.h:30-41): SMEP/SMAP present in CR4 but never applicable."""
    policy = pv64("4.17")
    cr4 = effective_cr4(policy).value
    assert cr4 & SMEP_SMAP == SMEP_SMAP
    state = _kernel("pv64", "4.17")
    assert state.kernel_cpl == 3 and _binds(state) == {}
    assert "CPL3" in state.protections["smep"].why
    smep, = [ln for ln in effective_cr4(policy).explanation if ln.startswith("SMEP=")]
    assert "CPL3" in smep


def test_bad_context():
    """Contexts are the guest kernel, guest user space, and Xen itself."""
    with pytest.raises(OptionError):
        effective_cr4(pv64("4.17"), context="ring0")


def test_hvm_xen_context_is_xens_cr4():
    """write_ptbase loads mmu_cr4_features for HVM and idle vCPUs (mm.c:522-548)."""
    assert effective_cr4(hvm("4.17"), xen_cr4=TCG_XEN_CR4, context="xen").value == TCG_XEN_CR4


def test_kernel_cpl():
    """HVM kernel CPL0; PV64 CPL3; PV32 ring 1 (FLAT_RING1_CS 0xe019, xen-x86_32.h:27-34)."""
    assert [kernel_cpl(d) for d in ("hvm", "pv64", "pv32")] == [0, 3, 1]
    with pytest.raises(OptionError):
        kernel_cpl("pvh")


@pytest.mark.parametrize("domain", ["pv64", "pv32"])
@pytest.mark.parametrize("context", ["kernel", "user", "xen"])
def test_pke_never_for_pv(domain, context):
    """pv_make_cr4 clears X86_CR4_PKE (pv/domain.c:185-202, 95aaafb5e2, 4.16) even though
    mmu_cr4_features has it; PV guests never see it either (PV_CR4_GUEST_VISIBLE_MASK)."""
    policy = XenPolicy("4.17", domain=domain, hw=Hardware(pku=True))
    assert effective_cr4(policy, xen_cr4=TCG_XEN_CR4, context=context).value & CR4.PKE == 0
    assert guest_visible_cr4(policy, CR4.PKE, xen_cr4=TCG_XEN_CR4).value & CR4.PKE == 0
    assert not _kernel(domain, "4.17", TCG_XEN_CR4).protections["pke"].applies


# --------------------------------------------------------------------------------------------
# CR4: HVM
# --------------------------------------------------------------------------------------------

HVM_BASE = CR4.PAE | CR4.PGE | CR4.OSFXSR


def test_hvm_pke_by_version_and_hardware():
    """PKE valid for HAP guests with PKU from 4.7 (673807ab5c; CPUID PKU annotated 'H',
    cpufeatureset.h:224); hvm_cr4_guest_valid_bits (hvm.c:990-1022) drops it otherwise."""
    guest = HVM_BASE | CR4.PKE
    pku = Hardware(pku=True)
    assert effective_cr4(hvm("4.7", hw=pku), guest_cr4=guest).value & CR4.PKE
    assert effective_cr4(hvm("4.6", hw=pku), guest_cr4=guest).value & CR4.PKE == 0
    assert effective_cr4(hvm("4.17"), guest_cr4=guest).value & CR4.PKE == 0
    assert effective_cr4(hvm("4.17", hw=pku, hap=False), guest_cr4=guest).value & CR4.PKE == 0
    # A guest CR4 read with PKE set shows the hardware has PKU (observed over assumed): PKE then
    # binds the HVM kernel, as its own choice (the one derivation every command uses).
    state = derive(NoMemory(), VcpuRegs(-1, cr4=guest), Options(domain="hvm", xen="4.17"))
    assert state.cpu.cr4 & CR4.PKE
    assert (state.protections["pke"].applies, state.protections["pke"].chooser) == (True, "guest")


def test_hvm_pks_by_version_and_vendor():
    """PKS for HAP guests on VMX from 4.18 (1d60c20260; cpu-policy.c clears PKS unless
    cpu_has_vmx)."""
    guest = HVM_BASE | CR4.PKS
    assert effective_cr4(hvm("4.18", hw=Hardware(pks=True)), guest_cr4=guest).value & CR4.PKS
    assert effective_cr4(hvm("4.17", hw=Hardware(pks=True)), guest_cr4=guest).value & CR4.PKS == 0
    svm = Hardware(pks=True, vmx=False)
    assert effective_cr4(hvm("4.18", hw=svm), guest_cr4=guest).value & CR4.PKS == 0


def test_hvm_la57_never_and_guest_cr4_governs():
    """hvm_cr4_guest_valid_bits has no X86_CR4_LA57 (hvm.c at RELEASE-4.22.0); the guest's
    SMEP/SMAP govern its own tables (hvm.h:426-435), whatever Xen uses for itself."""
    out = effective_cr4(hvm("4.22"), guest_cr4=HVM_BASE | CR4.LA57 | CR4.SMEP)
    assert out.value == HVM_BASE | CR4.SMEP
    assert any(ln.startswith("LA57=0") and "#GP" in ln for ln in out.explanation)
    assert effective_cr4(hvm("4.17", smep="hvm"), guest_cr4=HVM_BASE).value & CR4.SMEP == 0
    with pytest.raises(OptionError):
        effective_cr4(hvm("4.17"))


def test_hvm_smep_smap_by_version():
    """HVM SMEP from 89c9f78710 (4.2), SMAP from 58658992c1 (4.5) (hvm.c)."""
    guest = HVM_BASE | CR4.SMEP | CR4.SMAP
    assert effective_cr4(hvm("4.1"), guest_cr4=guest).value & (CR4.SMEP | CR4.SMAP) == 0
    assert effective_cr4(hvm("4.4"), guest_cr4=guest).value & (CR4.SMEP | CR4.SMAP) == CR4.SMEP
    assert effective_cr4(hvm("4.5"), guest_cr4=guest).value & (CR4.SMEP | CR4.SMAP) == \
        CR4.SMEP | CR4.SMAP


# --------------------------------------------------------------------------------------------
# CR4: PV details
# --------------------------------------------------------------------------------------------

def test_pv64_pge_pcide_rules():
    """pv_make_cr4 (pv/domain.c at RELEASE-4.17.0): PCIDE if the domain uses PCID, else PGE
    without XPTI and with global-pages (5de961d9c0, 4.14); never both."""
    x = 0x1506E0 | SMEP_SMAP
    assert effective_cr4(pv64("4.17"), xen_cr4=x).value & (CR4.PGE | CR4.PCIDE) == CR4.PGE
    assert effective_cr4(pv64("4.17", xpti=True), xen_cr4=x).value & (CR4.PGE | CR4.PCIDE) == 0
    assert effective_cr4(pv64("4.17", xpti=True, pcid=True), xen_cr4=x).value & \
        (CR4.PGE | CR4.PCIDE) == CR4.PCIDE
    assert effective_cr4(pv64("4.17", global_pages=False), xen_cr4=x).value & CR4.PGE == 0
    # The option did not exist before 4.14: 4.13 behaves as global-pages on.
    assert effective_cr4(pv64("4.13", global_pages=False), xen_cr4=x).value & CR4.PGE
    # 32-bit PV never uses XPTI/PCID (switch_compat).
    assert effective_cr4(pv32("4.17", xpti=True), xen_cr4=x).value & CR4.PGE


def test_pv_fsgsbase_tsd_de():
    """pv_make_cr4: a 64-bit PV guest keeps FSGSBASE only if it set it, 32-bit PV keeps Xen's;
    TSD if vtsc or the guest set it; DE is never in the real CR4."""
    x = 0x1506E0
    assert effective_cr4(pv64("4.17"), xen_cr4=x).value & CR4.FSGSBASE == 0
    assert effective_cr4(pv64("4.17"), guest_cr4=CR4.FSGSBASE, xen_cr4=x).value & CR4.FSGSBASE
    assert effective_cr4(pv32("4.17"), xen_cr4=x).value & CR4.FSGSBASE
    assert effective_cr4(pv64("4.17", vtsc=True), xen_cr4=x).value & CR4.TSD
    assert effective_cr4(pv64("4.17"), guest_cr4=CR4.TSD | CR4.DE, xen_cr4=x).value & \
        (CR4.TSD | CR4.DE) == CR4.TSD
    # Pre-4.12 macro: Xen's FSGSBASE for every PV guest (asm-x86/domain.h at RELEASE-4.10.0).
    assert effective_cr4(pv64("4.10"), xen_cr4=x).value & CR4.FSGSBASE


def test_pv_pge_before_pv_make_cr4():
    """<= 4.10: the macro ORs in Xen's PGE (asm-x86/domain.h at RELEASE-4.10.0); 4.11: PGE only
    without XPTI (pv_guest_cr4_to_real_cr4 in mm.c at RELEASE-4.11.0, d543fa4093)."""
    x = 0x1506E0
    assert effective_cr4(pv64("4.10", xpti=True), xen_cr4=x).value & CR4.PGE
    assert effective_cr4(pv64("4.11", xpti=True), xen_cr4=x).value & CR4.PGE == 0
    assert effective_cr4(pv64("4.11"), xen_cr4=x).value & CR4.PGE


def test_guest_visible_cr4():
    """pv_fixup_guest_cr4: (choice & PV_CR4_GUEST_MASK 0x5000C) | (Xen's & 0x660)
    (pv/domain.c:150-169, asm/pv/domain.h:62-71; b2dd00574a, 4.12)."""
    assert xen.PV_CR4_GUEST_MASK == 0x5000C and xen.PV_CR4_GUEST_VISIBLE_MASK == 0x660
    assert guest_visible_cr4(pv64("4.17"), 0, xen_cr4=TCG_XEN_CR4).value == 0x660
    assert guest_visible_cr4(pv64("4.17"), CR4.OSXSAVE | CR4.SMEP,
                             xen_cr4=TCG_XEN_CR4).value == 0x40660


def test_guest_visible_cr4_pre_4_12_leaks_vmxe():
    """Before 4.12 the view is Xen's CR4 minus a hidden list, so VMXE leaked (reference §4.2,
    oops 'CR4: 0000000000002660'; real_cr4_to_pv_guest_cr4 at RELEASE-4.10.0)."""
    x = CR4.VMXE | 0x6E0 | CR4.OSXSAVE | SMEP_SMAP
    assert guest_visible_cr4(pv64("4.10"), 0, xen_cr4=x).value == 0x2660


# --------------------------------------------------------------------------------------------
# The real-CPU observation
# --------------------------------------------------------------------------------------------

def observed_policy():
    # Xen 4.17 release, CONFIG_PV32, QEMU TCG -cpu max: Xen runs virtualised on an AMD-vendor
    # CPU, so global-pages defaults off (5de961d9c0) — the observed PV-context CR4 has no PGE.
    return pv32("4.17", global_pages=False, hw=Hardware(pku=True, vmx=False))


def test_observation_pv32_dom0_on_tcg():
    """real-targets.md: CR4 0x50660 while ring-1 guest code runs, 0x350660 while Xen runs on
    that CPU, 0x7506e0 in Xen's idle loop; the guest's own mov %cr4 reads 0x660."""
    policy = observed_policy()
    assert effective_cr4(policy, xen_cr4=TCG_XEN_CR4).value == 0x50660
    assert effective_cr4(policy, xen_cr4=TCG_XEN_CR4, context="xen").value == 0x350660
    assert guest_visible_cr4(policy, 0, xen_cr4=TCG_XEN_CR4).value == 0x660


def test_observation_default_derivation():
    """Without Xen's CR4, setup code on that hardware (XEN_MINIMAL_CR4, OSFXSR/OSXMMEXCPT, MCE,
    OSXSAVE, FSGSBASE, SMEP, SMAP, PKE since 4.16; no VMXE under TCG) gives the same values."""
    policy = observed_policy()
    assert default_xen_cr4(policy).value == TCG_XEN_CR4
    assert effective_cr4(policy).value == 0x50660
    assert effective_cr4(policy, context="xen").value == 0x350660


def test_explanation_lines_name_every_relevant_bit():
    """Each set bit and each paging-relevant bit gets exactly one line saying where it came from."""
    out = effective_cr4(observed_policy(), xen_cr4=TCG_XEN_CR4)
    names = [ln.split("=")[0] for ln in out.explanation if not ln.startswith("note:")]
    assert len(names) == len(set(names))
    for name in ("PAE", "PGE", "SMEP", "SMAP", "PKE", "PKS", "LA57", "OSXSAVE", "FSGSBASE"):
        assert name in names
    pge, = [ln for ln in out.explanation if ln.startswith("PGE=")]
    assert pge.startswith("PGE=0") and "global-pages" in pge


def test_given_xen_cr4_inconsistent_with_policy_is_noted():
    """A measured Xen CR4 wins over the policy, and the disagreement is reported."""
    out = effective_cr4(pv32("4.17", smap="hvm"), xen_cr4=TCG_XEN_CR4, context="xen")
    assert out.value & CR4.SMAP
    assert any(ln.startswith("note:") and "SMAP" in ln for ln in out.explanation)


# --------------------------------------------------------------------------------------------
# Facts table and module hygiene
# --------------------------------------------------------------------------------------------

def test_every_fact_cites_source_and_release():
    """One table of Xen facts: each with a source file and a first release."""
    for key, fact in xen.FACTS.items():
        assert fact.key == key and fact.source and fact.since >= (3, 0, 0)
        assert xen.cite(key).startswith(fact.source)


def test_all_is_sorted_and_complete():
    """House style: a sorted __all__ naming every public top-level name."""
    assert xen.__all__ == sorted(xen.__all__)
    tree = ast.parse(pathlib.Path(xen.__file__).read_text())
    public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
              and not n.name.startswith("_")}
    assert public <= set(xen.__all__)
