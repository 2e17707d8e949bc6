"""Facts about Xen's kexec crash dumps and the host structures read from them, each with its source.

The rows have the shape of :class:`gdb_xenpte.xen.XenFact` and live in their own table,
:data:`CRASH_FACTS`, so the readers (:mod:`.xen_crash`, :mod:`.kexec_elf`) and the host view
(:mod:`gdb_xenpte.xen_host`) cite one place. Paths are those of the Xen 4.17 tree (checked against
4.17.5, ``xen-4.17.5+72-g01140da4e8``) unless marked; kexec-tools and makedumpfile paths are of
their upstream trees. No code is copied from either.

Failure modes: :func:`cite_crash` raises ``KeyError`` for an unknown key (a bug, not an input
error).
"""

from __future__ import annotations

from typing import Dict

from ..xen import XenFact

__all__ = ["CRASH_FACTS", "cite_crash"]

_ASM = "xen/arch/x86/include/asm"
# Each row was checked in the 4.17.5 tree only; its first release was not traced, so ``since``
# says "holds at 4.17" (older Xen may differ; the readers say which facts a dump confirmed).
_CHECKED = (4, 17, 0)

CRASH_FACTS: Dict[str, XenFact] = {f.key: f for f in (
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


def cite_crash(key: str) -> str:
    """Return a short citation for a crash-dump fact: ``"source; Xen x.y+"``.

    :raises KeyError: for an unknown key.
    """
    fact = CRASH_FACTS[key]
    since = f"{fact.since[0]}.{fact.since[1]}"
    until = f"-{fact.until[0]}.{fact.until[1]}" if fact.until else "+"
    return f"{fact.source}; Xen {since}{until}"
