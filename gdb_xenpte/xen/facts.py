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

__all__ = ["CRASH_KEYS", "FACTS", "Version", "XenFact", "cite", "version_text"]

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

# Xen's kexec crash dumps and the host structures read from them (issue 16). Each row was checked
# in the 4.17.5 tree only (xen-4.17.5+72-g01140da4e8); its first release was not traced, so
# ``since`` says "holds at 4.17". kexec-tools and makedumpfile paths are of their upstream trees.
_CHECKED = (4, 17, 0)
CRASH_KEYS = ("crash_notes", "crash_regs", "crash_prstatus", "crash_info", "crash_shootdown",
              "vmcoreinfo_xen", "kexec_vmcore_phdrs", "makedumpfile_notes", "virt_to_maddr",
              "domain_list", "domain_kind", "vcpu_pagetables", "vcpu_state", "curr_vcpu")
_CRASH: Dict[str, XenFact] = {f.key: f for f in (
    # --- the notes Xen's kexec crash path writes -----------------------------------------------
    XenFact("crash_notes", "every pCPU has one note buffer: a 'CORE' NT_PRSTATUS (ELF_Prstatus, "
            "336 bytes on x86_64) then a 'Xen' XEN_ELFNOTE_CRASH_REGS; pCPU 0's buffer also holds "
            "the one 'Xen' XEN_ELFNOTE_CRASH_INFO; buffers are zeroed at allocation, so a pCPU "
            "that never saved its state has all-zero notes",
            "xen/common/kexec.c sizeof_cpu_notes(), kexec_init_cpu_notes()", "", _CHECKED),
    XenFact("crash_regs", "XEN_ELFNOTE_CRASH_REGS = 0x1000002, descriptor crash_xen_core_t = "
            "{unsigned long cr0, cr2, cr3, cr4}, read with mov from the control registers by the "
            "pCPU itself when it saves its state (elf_core_save_regs)",
            f"xen/include/public/elfnote.h:219; {_ASM}/elf.h; {_ASM}/x86_64/elf.h "
            "elf_core_save_regs()", "", _CHECKED),
    XenFact("crash_prstatus", "the CORE note's pr_reg (at byte 112 of ELF_Prstatus) is ELF_Gregset "
            "in Linux order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax "
            "rip cs rflags rsp ss fs_base gs_base ds es fs gs (u64 each); Xen fills it from the "
            "pCPU at save time, so rip/cs/rsp are Xen's own (CS 0xe008)",
            "xen/include/xen/elfcore.h ELF_Prstatus; "
            f"{_ASM}/x86_64/elf.h ELF_Gregset, elf_core_save_regs()", "", _CHECKED),
    XenFact("crash_info", "XEN_ELFNOTE_CRASH_INFO = 0x1000001, descriptor crash_xen_info_t = "
            "{xen_major_version, xen_minor_version, xen_extra_version, xen_changeset, "
            "xen_compiler, xen_compile_date, xen_compile_time, tainted, xen_phys_start, "
            "dom0_pfn_to_mfn_frame_list_list} (unsigned long each; the five strings as machine "
            "addresses, __pa()); written by the crashing pCPU",
            "xen/include/public/elfnote.h:209; xen/include/xen/elfcore.h crash_xen_info_t; "
            "xen/common/kexec.c kexec_crash_save_info(); xen/arch/x86/crash.c "
            "machine_crash_shutdown()", "", _CHECKED),
    XenFact("crash_shootdown", "the crashing pCPU saves its own notes in kexec_crash() after "
            "NMI-ing every other pCPU (those save theirs from do_nmi_crash()); every pCPU saves "
            "the same registers from the same function, so the notes do not name the crashing "
            "one; kexec.c's static crashing_cpu (one_cpu_only(), 'crashing_cpu.N' in xen-syms) "
            "holds its number (-1 before a crash)",
            "xen/arch/x86/crash.c do_nmi_crash(), nmi_shootdown_cpus(); xen/common/kexec.c "
            "one_cpu_only(), kexec_crash()", "", _CHECKED),
    XenFact("vmcoreinfo_xen", "the VMCOREINFO_XEN note (name 'VMCOREINFO_XEN', type 0) holds "
            "text lines PAGESIZE=, SYMBOL(domain_list|frame_table|max_page|dom_xen|dom_io|"
            "pgd_l4)=hex VA, SIZE(page_info|domain)=, OFFSET(page_info.count_info|_domain)=, "
            "OFFSET(domain.domain_id|next_in_list)=; pgd_l4 is idle_pg_table",
            "xen/common/kexec.c crash_save_vmcoreinfo(); xen/include/xen/kexec.h:61-79; "
            "xen/arch/x86/machine_kexec.c arch_crash_save_vmcoreinfo()", "", _CHECKED),
    # --- the files kexec-tools and makedumpfile make -------------------------------------------
    XenFact("kexec_vmcore_phdrs", "a kexec crash vmcore's PT_LOADs carry p_paddr = the (machine) "
            "address and p_vaddr = the crash-time kernel's direct-map address, page_offset + "
            "p_paddr (-1 for i386 highmem); a kernel-text segment may alias part of RAM; the "
            "crash kernel's /proc/vmcore merges every PT_NOTE into one",
            "kexec-tools kexec/crashdump-elf.c (PT_LOAD loop, phys_to_virt()); Linux "
            "fs/proc/vmcore.c merge_note_headers_elf64()", "", _CHECKED),
    XenFact("makedumpfile_notes", "makedumpfile's kdump-compressed output keeps every ELF note of "
            "the vmcore in the sub-header's note area (offset_note/size_note, header version 4+) "
            "and numbers pages by the vmcore's physical (here machine) frame",
            "makedumpfile diskdump_mod.h struct kdump_sub_header; makedumpfile.c "
            "write_kdump_header()", "", _CHECKED),
    # --- host structures (read through xen-syms' DWARF; names here, offsets from DWARF) --------
    XenFact("virt_to_maddr", "a Xen VA in the 1 GiB image region maps to xen_phys_start + (va - "
            "XEN_VIRT_START); XEN_VIRT_START (= __image_base__) is 1 GiB aligned; the directmap "
            "and everything else is mapped by idle_pg_table (4-level)",
            f"{_ASM}/x86_64/page.h __virt_to_maddr(); {_ASM}/config.h:220-243; "
            "xen/arch/x86/xen.lds.S __image_base__", "", _CHECKED),
    XenFact("domain_list", "domains form a list from domain_list through struct domain "
            "next_in_list, sorted by domain_id; d->vcpu[] (max_vcpus entries) points at each "
            "struct vcpu, NULL where not created", "xen/include/xen/sched.h struct domain; "
            "xen/common/domain.c domain_create()", "", _CHECKED),
    XenFact("domain_kind", "a domain is HVM (or PVH) iff d->options has XEN_DOMCTL_CDF_hvm (bit "
            "0); a PV domain is 32-bit iff d->arch.pv.is_32bit; an HVM domain without emulated "
            "PIC (arch.emulation_flags bit 5, XEN_X86_EMU_PIC) is PVH",
            "xen/include/xen/sched.h is_pv_domain(), is_pv_32bit_domain(); "
            "xen/include/public/domctl.h:37; xen/include/public/arch-x86/xen.h:266-290",
            "", _CHECKED),
    XenFact("vcpu_pagetables", "a PV vCPU's v->arch.guest_table holds the MFN of its kernel "
            "top-level table (the guest's CR3), guest_table_user the 64-bit guest's user L4; "
            "v->arch.pv.ctrlreg[4] is the CR4 the guest sees; HVM: v->arch.hvm.guest_cr[3]/[4]",
            f"{_ASM}/domain.h struct arch_vcpu, struct pv_vcpu, {_ASM}/hvm/vcpu.h",
            "", _CHECKED),
    XenFact("vcpu_state", "v->runstate.state: 0 running, 1 runnable, 2 blocked, 3 offline; "
            "v->pause_flags bit 0 VPF_blocked, bit 1 VPF_down; v->pause_count and the domain's "
            "pause_count / controller_pause_count > 0 mean paused; v->processor is the pCPU; "
            "v->is_running says it runs there now",
            "xen/include/public/vcpu.h:85-99; xen/include/xen/sched.h:174-263, 913-926",
            "", _CHECKED),
    XenFact("curr_vcpu", "per-pCPU variables live at symbol + __per_cpu_offset[cpu]; "
            "per_cpu(curr_vcpu) is the vCPU whose state the pCPU holds (lazy switch)",
            "xen/arch/x86/include/asm/percpu.h; xen/arch/x86/include/asm/current.h:210", "",
            (3, 0, 0)),
)}
assert not set(_CRASH) & set(FACTS) and set(_CRASH) == set(CRASH_KEYS)
FACTS.update(_CRASH)


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

