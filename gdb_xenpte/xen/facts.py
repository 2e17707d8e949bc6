"""Every Xen fact gdb_xenpte relies on, each with its source: one table, one home.

Each fact is a row of :data:`FACTS` naming its source file, the commit that introduced it
(xen-project/xen) and its first release, so "what does bit 52 mean in Xen 4.x" has exactly one
home; :func:`cite` formats the citation that explanations print. Code elsewhere in this package is
written from these facts; no Xen code is copied. Versions are ``(major, minor, patch)``.

Failure modes: :func:`cite` raises ``KeyError`` for an unknown key (a bug, not an input error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["FACTS", "Version", "XenFact", "cite", "version_text"]

Version = Tuple[int, int, int]



@dataclass(frozen=True)
class XenFact:
    """One fact about Xen and where it comes from.

    :param key: identifier used by the code and in explanations.
    :param text: the fact, paraphrased.
    :param source: file (path in the current tree unless marked) and function or lines.
    :param commit: abbreviated xen-project/xen commit that introduced it; ``""`` when the fact is
        only known to hold at the tag in ``source``.
    :param since: first release containing it, ``(major, minor, patch)``.
    :param until: last release it holds in, or ``None`` if it still holds.
    """

    key: str
    text: str
    source: str
    commit: str
    since: Version
    until: Optional[Version] = None


# Until 4.16, xen/arch/x86/include/asm/* was xen/include/asm-x86/* (725381a5ea, 4.17).
_ASM = "xen/arch/x86/include/asm"

FACTS: Dict[str, XenFact] = {f.key: f for f in (
    # --- PTE layout and Xen-owned bits ------------------------------------------------------
    XenFact("pte_flags", "Xen handles PTE flags as a 24-bit word: PTE bits 11:0 and 63:52; flag "
            "bit n >= 12 is PTE bit n+40 (get_pte_flags/put_pte_flags)",
            f"{_ASM}/x86_64/page.h get_pte_flags()", "", (3, 0, 0)),
    XenFact("guest_kernel", "_PAGE_GUEST_KERNEL, PTE bit 52 (flag 1<<12), on L1 entries of 64-bit "
            "PV guests: the guest wrote the entry with U=0 (a kernel page); Xen set U=1 and this "
            "bit, and gives it no G (only user pages get G)",
            f"{_ASM}/x86_64/page.h:138; adjust_guest_l1e() in xen/arch/x86/pv/mm.h",
            "6f562e72cd", (3, 0, 3)),
    XenFact("guest_kernel_global", "an L1 entry written with both bit 52 and G set makes Xen log "
            "'Global bit is set in kernel page <pfn>' (gdprintk); G is left as written",
            "adjust_guest_l1e() in xen/arch/x86/pv/mm.h (a macro in mm.c before 4.10)",
            "6f562e72cd", (3, 0, 3)),
    XenFact("gnttab_bit11", "_PAGE_GNTTAB = _PAGE_AVAIL2, PTE bit 11, debug builds only: the entry "
            "was made by a grant map and must be removed with GNTTABOP_unmap_grant_ref",
            "xen/include/asm-x86/page.h (at RELEASE-3.0.0)", "ed5b604759", (3, 0, 0), (3, 3, 99)),
    XenFact("gnttab_bit62", "_PAGE_GNTTAB = flag 1<<22, PTE bit 62, debug (CONFIG_DEBUG) builds "
            "only: the entry was made by a grant map; implicitly unmapping it is refused (#GP "
            "injected today)",
            f"{_ASM}/x86_64/page.h:131 and {_ASM}/page.h:332-341", "cd5e866be5", (3, 4, 0)),
    XenFact("pkey_bits", "_PAGE_PKEY_BITS = flags 22:19 = PTE bits 62:59, the protection key of a "
            "leaf; bit 62 is also _PAGE_GNTTAB in debug builds, so PV guests get no PKE",
            f"{_ASM}/x86_64/page.h:123", "ccbe3b1448", (4, 7, 0)),
    # --- Disallow masks ----------------------------------------------------------------------
    XenFact("mask_3_0", "x86_64 BASE_DISALLOW_MASK = (0xFFFFF180 | _PAGE_GNTTAB) & ~_PAGE_NX at "
            "every level: PTE bits 52-62, G and PSE/PAT disallowed; PWT/PCD allowed",
            "xen/include/asm-x86/page.h (at RELEASE-3.0.0)", "", (3, 0, 0), (3, 0, 2)),
    XenFact("mask_3_0_3", "x86_64 mask 0xFF000180: PTE bits 62:52 made available to guests; G "
            "allowed on L1 (user mappings are global)",
            "xen/include/asm-x86/x86_64/page.h", "1a4d425438", (3, 0, 3), (3, 0, 99)),
    XenFact("mask_3_1", "x86_64 mask 0xFF800180 & ~_PAGE_NX (NX allowed only on NX hardware); "
            "32-bit PV (compat) L3 mask 0xFFFFF1E6",
            "xen/include/asm-x86/x86_64/page.h", "3bddff4a58", (3, 1, 0), (3, 1, 99)),
    XenFact("mask_3_2", "x86_64 mask 0xFF800198 & ~_PAGE_NX (PWT/PCD disallowed); "
            "l1_disallow_mask() lets I/O-capable domains set PWT/PCD/PAT on L1; compat L3 "
            "0xFFFFF1FE", "xen/include/asm-x86/x86_64/page.h, xen/arch/x86/mm.c",
            "3052b875c7", (3, 2, 0), (3, 3, 99)),
    XenFact("mask_3_4", "_PAGE_GNTTAB moves to PTE bit 62; compat L3 mask 0xFFFFF198",
            "xen/include/asm-x86/x86_64/page.h", "2f819e06d1", (3, 4, 0)),
    XenFact("mask_now", "base_disallow_mask = ~(P|RW|U|A|D|AVAIL|AVAIL_HIGH|NX-if-cpu_has_nx) "
            "(0xFF000198 with NX); L1 = (base | _PAGE_GNTTAB) & ~G; L2 = L4 = base; L3 = base "
            "(64-bit PV) or 0xFFFFF198 (32-bit PV); checked only on present entries ('Bad L1 "
            "flags')", "xen/arch/x86/mm.c:157-177, 278-284 (arch_init_memory)", "6eec5bd4db",
            (4, 8, 0)),
    XenFact("mask_io", "l1_disallow_mask(d): PWT/PCD/PAT (0x98) also allowed on L1 for dom_io and "
            "domains with iomem/ioport capabilities or passed-through devices",
            "xen/arch/x86/mm.c l1_disallow_mask()", "3052b875c7", (3, 2, 0)),
    XenFact("superpages", "PSE on a PV L2 entry is refused unless Xen booted with "
            "allowsuperpage/allowhugepage; the option and PV superpages were removed in 4.10",
            "xen/arch/x86/mm.c get_page_from_l2e()", "56fff3e5e9", (3, 4, 0), (4, 9, 99)),
    XenFact("compat", "32-bit PV guests on a 64-bit Xen (32on64, 'compat') exist",
            "xen/arch/x86/x86_64/compat/*", "cb44adaed6", (3, 1, 0)),
    # --- Rings -------------------------------------------------------------------------------
    XenFact("pv64_ring3", "the 64-bit PV kernel runs at CPL3 like its user space "
            "(FLAT_KERNEL_CS64 = FLAT_RING3_CS64 = 0xe033), so every page is U=1 and SMEP/SMAP/PKS "
            "never apply to it", "xen/include/public/arch-x86/xen-x86_64.h:30-41", "", (3, 0, 0)),
    XenFact("pv32_ring1", "the 32-bit PV kernel runs in ring 1 (FLAT_RING1_CS 0xe019): supervisor "
            "mode, so SMEP/SMAP apply to it whenever CR4 has them",
            "xen/include/public/arch-x86/xen-x86_32.h:27-34", "", (3, 1, 0)),
    # --- Xen's own CR4 (mmu_cr4_features) ----------------------------------------------------
    XenFact("minimal_cr4_pse", "mmu_cr4_features starts at PSE|PGE|PAE",
            "xen/arch/x86/setup.c (at RELEASE-4.0.0)", "", (3, 0, 0), (4, 5, 99)),
    XenFact("minimal_cr4", "mmu_cr4_features starts at XEN_MINIMAL_CR4 = PGE|PAE",
            f"{_ASM}/processor.h:54", "ca7f96c3b2", (4, 6, 0)),
    XenFact("cr4_fxsr", "Xen sets OSFXSR|OSXMMEXCPT", "xen/arch/x86/setup.c", "", (3, 0, 0)),
    XenFact("cr4_mce", "Xen sets MCE when machine checks are set up", "xen/arch/x86/cpu/mcheck",
            "193af2f5c7", (3, 0, 2)),
    XenFact("cr4_osxsave", "Xen sets OSXSAVE when the CPU has XSAVE", "xen/arch/x86/xstate.c",
            "fb7925518f", (4, 0, 0)),
    XenFact("cr4_fsgsbase", "Xen sets FSGSBASE when the CPU has it", "xen/arch/x86/setup.c",
            "4b46e7be78", (4, 4, 0)),
    XenFact("cr4_vmxe", "Xen sets VMXE when it enables VMX (Intel VT-x)",
            "xen/arch/x86/hvm/vmx/vmx.c", "", (3, 0, 0)),
    XenFact("xen_smep", "Xen sets CR4.SMEP for itself when the CPU has SMEP (smep= option)",
            "xen/arch/x86/setup.c", "a2e5546098", (4, 2, 0)),
    XenFact("xen_smap", "Xen sets CR4.SMAP for itself when the CPU has SMAP (smap= option)",
            "xen/arch/x86/setup.c", "64df8742aa", (4, 5, 0)),
    XenFact("smep_hvm", "smep=hvm / smap=hvm: the feature stays available to HVM guests but Xen's "
            "own CR4, and so PV context, lacks it; smep=0 / smap=0 hide it from HVM guests too",
            "xen/arch/x86/setup.c:181-247, 2054-2074", "493ab190e5", (4, 8, 0)),
    XenFact("xen_pke", "mmu_cr4_features has PKE whenever the CPU has PKU (HVM and idle context); "
            "before, Xen ran with PKE clear", "xen/arch/x86/setup.c", "95aaafb5e2", (4, 16, 0)),
    # --- CR4 in PV context -------------------------------------------------------------------
    XenFact("pv_cr4_macro", "real CR4 = guest's CR4 view | Xen's PGE/PSE(/SMEP/SMAP/OSXSAVE/"
            "FSGSBASE) | TSD if vtsc, minus DE (pv_guest_cr4_to_real_cr4 macro)",
            "xen/include/asm-x86/domain.h", "731a2050ac", (3, 2, 0), (4, 10, 99)),
    XenFact("pv_cr4_xpti", "pv_guest_cr4_to_real_cr4() takes PGE only without XPTI, PCIDE when "
            "the domain uses PCID", "xen/arch/x86/mm.c (at RELEASE-4.11.0)", "d543fa4093",
            (4, 11, 0), (4, 11, 99)),
    XenFact("pv_make_cr4", "pv_make_cr4(): Xen's CR4 minus PCIDE|PGE|TSD|PKE; PCIDE if the domain "
            "uses PCID, else PGE without XPTI (and with global-pages); TSD if vtsc or the guest "
            "set it; a 64-bit PV guest keeps FSGSBASE only if it set it",
            "xen/arch/x86/pv/domain.c:185-231", "b2dd00574a", (4, 12, 0)),
    XenFact("pv_pke", "pv_make_cr4() clears PKE: protection keys are not supported for PV guests "
            "(the key bits overlap debug _PAGE_GNTTAB; PTE software-bit ownership is not part of "
            "the PV ABI)", "xen/arch/x86/pv/domain.c:185-202", "95aaafb5e2", (4, 16, 0)),
    XenFact("global_pages", "global-pages= option (default on, off when Xen itself runs "
            "virtualised on AMD/Hygon)", "xen/arch/x86/pv/domain.c, docs/misc/xen-command-line",
            "5de961d9c0", (4, 14, 0)),
    XenFact("pv32_no_xpti", "32-bit PV domains never use XPTI or PCID (switch_compat())",
            "xen/arch/x86/pv/domain.c switch_compat() (at RELEASE-4.17.0)", "", (4, 11, 0)),
    XenFact("pv32_cr4", "SMEP|SMAP (XEN_CR4_PV32_BITS, 0x300000) are cleared on every return to "
            "ring 1/2 of a 32-bit PV guest and set again on entry to Xen (alt_cr4_pv32 in "
            "compat_restore_all_guest; cr4_pv32_restore)",
            "xen/arch/x86/x86_64/compat/entry.S:130-154, 175-202", "ea3e8edfdb", (4, 7, 0)),
    XenFact("pv_cr4_view", "a PV guest sees (its choice & PV_CR4_GUEST_MASK 0x5000C) | (Xen's CR4 "
            "& PV_CR4_GUEST_VISIBLE_MASK 0x660) (pv_fixup_guest_cr4)",
            f"xen/arch/x86/pv/domain.c:150-169, {_ASM}/pv/domain.h:62-71", "b2dd00574a",
            (4, 12, 0)),
    XenFact("pv_cr4_view_old", "a PV guest sees Xen's CR4 minus PGE/PSE/TSD/OSXSAVE/SMEP/SMAP/"
            "FSGSBASE/PCIDE, with its own TSD/DE/OSXSAVE (and FSGSBASE for 64-bit) "
            "(real_cr4_to_pv_guest_cr4, pv_guest_cr4_fixup); Xen's VMXE leaks into it",
            "xen/include/asm-x86/domain.h, xen/arch/x86/domain.c (at RELEASE-4.11.0)",
            "731a2050ac", (3, 2, 0), (4, 11, 99)),
    # --- CR4 in HVM context ------------------------------------------------------------------
    XenFact("hvm_cr4", "an HVM guest's own CR4 governs its page tables; hvm_set_cr4() raises #GP "
            "for bits outside hvm_cr4_guest_valid_bits(); LA57 is never valid",
            "xen/arch/x86/hvm/hvm.c:990-1022, 2463", "", (3, 0, 0)),
    XenFact("hvm_smep", "HVM guests may set SMEP", "xen/arch/x86/hvm/hvm.c", "89c9f78710",
            (4, 2, 0)),
    XenFact("hvm_smap", "HVM guests may set SMAP", "xen/arch/x86/hvm/hvm.c", "58658992c1",
            (4, 5, 0)),
    XenFact("hvm_pke", "HAP HVM guests may set PKE when the CPU has PKU (CPUID PKU is 'H')",
            "xen/arch/x86/hvm/hvm.c; xen/include/public/arch-x86/cpufeatureset.h:224",
            "673807ab5c", (4, 7, 0)),
    # --- Xen's slots in PV L4 tables ----------------------------------------------------------
    XenFact("xen_l4_slots", "every 64-bit PV guest L4 (and each 32-bit PV vCPU's compat L4) "
            "carries Xen's own entries in slots 256-271 (init_xen_l4_slots); they point at Xen "
            "frames, not the guest's", "xen/arch/x86/mm.c init_xen_l4_slots(); "
            f"{_ASM}/config.h (virtual memory map)", "", (3, 0, 0)),
    XenFact("compat_alt_slot", "a 32-bit PV vCPU's compat L4 also maps Xen's per-domain area at "
            "slot 4 (PERDOMAIN_ALT_VIRT_START: the compat argument-translation area), the same "
            "L3 as slot 260", f"{_ASM}/config.h:208-209", "", (4, 0, 0)),
    XenFact("pv32_hv_area", "in a 32-bit PV guest, VAs from HYPERVISOR_VIRT_START_PAE "
            "(0xF5800000) up are Xen's: it fills the guest's top L2 there (read-only compat M2P "
            "and Xen mappings)", "xen/include/public/arch-x86/xen-x86_32.h:41-61; "
            "init_xen_pae_l2_slots() in xen/arch/x86/mm.c", "", (3, 1, 0)),
    # --- Segment selectors and Xen's areas ------------------------------------------------------
    XenFact("sel_ring3_cs64", "FLAT_RING3_CS64 (= FLAT_KERNEL_CS64): a 64-bit PV guest's code, "
            "kernel or user, both at CPL3", "xen/include/public/arch-x86/xen-x86_64.h FLAT_RING3_CS64",
            "", (3, 0, 0)),
    XenFact("sel_ring3_cs32", "FLAT_RING3_CS32: 32-bit user code of a 64-bit PV guest",
            "xen/include/public/arch-x86/xen-x86_64.h FLAT_RING3_CS32", "", (3, 0, 0)),
    XenFact("sel_compat_ring1_cs", "FLAT_COMPAT_RING1_CS (a 32-bit PV guest's FLAT_RING1_CS): "
            "a 32-bit PV kernel in ring 1", f"{_ASM}/desc.h FLAT_COMPAT_RING1_CS; "
            "xen/include/public/arch-x86/xen-x86_32.h FLAT_RING1_CS", "", (3, 1, 0)),
    XenFact("sel_compat_ring3_cs", "FLAT_COMPAT_RING3_CS: a 32-bit PV guest's user space in "
            "ring 3 (on a 64-bit Xen; 0xe02b is a data selector, FLAT_RING3_DS32, for 64-bit "
            "guests)", f"{_ASM}/desc.h FLAT_COMPAT_RING3_CS", "", (3, 1, 0)),
    XenFact("sel_hypervisor_cs", "__HYPERVISOR_CS (__HYPERVISOR_CS64): Xen's own code; with a "
            "PV guest's tables still loaded (lazy switch) or Xen's idle ones",
            f"{_ASM}/config.h __HYPERVISOR_CS64 (at RELEASE-4.17.0; 3.x used 0xe010)", "", (3, 0, 0)),
    XenFact("m2p_pv64", "a 64-bit PV guest sees Xen's read-only M2P at RO_MPT_VIRT_START = "
            "HYPERVISOR_VIRT_START 0xFFFF800000000000, 8 bytes an entry",
            "xen/include/public/arch-x86/xen-x86_64.h __MACH2PHYS_VIRT_START", "", (3, 0, 0)),
    XenFact("m2p_pv32", "a 32-bit PV guest on a 64-bit Xen sees the compat M2P at "
            "HYPERVISOR_COMPAT_VIRT_START's default 0xF5800000, 4 bytes an entry",
            "xen/include/public/arch-x86/xen-x86_32.h:41-61", "", (3, 1, 0)),
    XenFact("hvm_pks", "HAP HVM guests on VMX may set PKS when the CPU has PKS",
            "xen/arch/x86/hvm/hvm.c; xen/arch/x86/cpu-policy.c:~828-834", "1d60c20260",
            (4, 18, 0)),
)}


def cite(key: str) -> str:
    """Return a short citation for a fact: ``"source; commit, Xen x.y+"``.

    :param key: a key of :data:`FACTS`.
    :returns: the citation text.
    :raises KeyError: for an unknown key (a bug, not an input error).
    """
    fact = FACTS[key]
    since = version_text(fact.since)
    until = f"-{fact.until[0]}.{fact.until[1]}" if fact.until else "+"
    commit = f"{fact.commit}, " if fact.commit else ""
    return f"{fact.source}; {commit}Xen {since}{until}"


def version_text(v: Version) -> str:
    """``(4, 17, 0)`` as ``"4.17"``, ``(3, 0, 3)`` as ``"3.0.3"``."""
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[2] else "")

