"""Xen's facts about guest page tables and CR4, and the policy that selects among them.

Everything Xen-specific lives here, in one place: which PTE bits Xen owns (bit 52
``_PAGE_GUEST_KERNEL``, bit 62 or 11 ``_PAGE_GNTTAB``), the disallow masks Xen validates 64-bit
and 32-bit PV page tables against, the CR4 the hardware really runs a domain's vCPU with, the CR4
the guest is shown, and the ring its kernel runs in. Each fact is a row of :data:`FACTS` naming its
source file, the commit that introduced it (xen-project/xen) and its first release, so "what does
bit 52 mean in Xen 4.x" has exactly one home. Code here is written from those facts; no Xen code
is copied.

Only a 64-bit (x86_64) hypervisor is modelled: the i386 Xen build, removed in 4.3, is not.
Versions are ``(major, minor, patch)``; Xen 3.0 to 4.22 are known, newer 4.x releases are taken
to behave like 4.22 (source checked up to master ``c447b7308b13``, 2026-08). Point-release
backports (e.g. XPTI in 4.6.x-4.10.x stable releases) are not modelled: a version selects the
behaviour of its ``x.y.0`` release. PV CR4 handling before 3.2 (731a2050ac) is modelled like
3.2's; Xen had no SMEP, SMAP or PKE then, so no verdict depends on it.

Failure modes: every function raises :class:`~gdb_xenpte.errors.OptionError`, with one line, for
an unknown version string, a bad ``smep=``/``smap=`` value or one the version does not have, an
unknown domain type, a level name the domain has no Xen-validated table for, or an HVM CR4 asked
for without the guest's CR4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from .arch import CR4, PTE
from .errors import OptionError

__all__ = [
    "Cr4",
    "DOMAIN_TYPES",
    "FACTS",
    "Hardware",
    "KernelProtections",
    "PV32_HYPERVISOR_START",
    "PV_CR4_GUEST_MASK",
    "PV_CR4_GUEST_VISIBLE_MASK",
    "XEN_CR4_PV32_BITS",
    "XenFact",
    "XenPolicy",
    "cite",
    "default_xen_cr4",
    "disallow_mask",
    "disallow_violations",
    "domain_from_cs",
    "effective_cr4",
    "get_pte_flags",
    "guest_visible_cr4",
    "kernel_cpl",
    "kernel_protections",
    "l4_slot_label",
    "parse_version",
    "pkey_collision",
    "put_pte_flags",
    "pv32_hypervisor_area",
    "xen_bits",
]

Version = Tuple[int, int, int]

DOMAIN_TYPES = ("hvm", "pv64", "pv32")


# --------------------------------------------------------------------------------------------
# The facts table
# --------------------------------------------------------------------------------------------

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
    since = _vtext(fact.since)
    until = f"-{fact.until[0]}.{fact.until[1]}" if fact.until else "+"
    commit = f"{fact.commit}, " if fact.commit else ""
    return f"{fact.source}; {commit}Xen {since}{until}"


def _vtext(v: Version) -> str:
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[2] else "")


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?\+?\s*$")

# Xen's boolean vocabulary (parse_bool in xen/common/kernel.c).
_TRUE = {"1", "yes", "on", "true", "enable"}
_FALSE = {"0", "no", "off", "false", "disable"}


def parse_version(text: Union[str, Tuple[int, ...]]) -> Version:
    """Turn ``"4.17"``, ``"3.0.3"``, ``"4.22+"`` or ``(4, 17)`` into ``(major, minor, patch)``.

    Known are 3.0 to 3.4 and every 4.x; 4.x newer than 4.22 behaves like 4.22.

    :param text: the version.
    :returns: a 3-tuple of ints.
    :raises OptionError: if it is not such a version.
    """
    if isinstance(text, float):
        # 4.10 and 4.1 are the same float: only strings and tuples say which was meant.
        raise OptionError(f"ambiguous Xen version {text!r}: give it as a string, e.g. '4.10'")
    if isinstance(text, tuple):
        parts = tuple(text) + (0,) * (3 - len(text))
        if len(parts) != 3 or not all(isinstance(p, int) and p >= 0 for p in parts):
            raise OptionError(f"bad Xen version {text!r}: expected e.g. (4, 17) or (3, 0, 3)")
    else:
        m = _VERSION_RE.match(str(text))
        if not m:
            raise OptionError(f"bad Xen version {text!r}: expected e.g. '4.17' or '3.0.3'")
        parts = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    major, minor = parts[0], parts[1]
    if not ((major == 3 and minor <= 4) or major == 4):
        raise OptionError(f"unknown Xen version {_vtext(parts)}: known are 3.0-3.4 and 4.x")
    return parts


def _parse_sm_option(name: str, value: Union[bool, str], version: Version) -> Union[bool, str]:
    """Normalise a ``smep=``/``smap=`` value to True, False or ``"hvm"``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "hvm":
        if version < (4, 8, 0):
            raise OptionError(f"{name}=hvm needs Xen 4.8 or later (this is {_vtext(version)})")
        return "hvm"
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"bad {name}= value {value!r}: expected a boolean or 'hvm'")


@dataclass(frozen=True)
class Hardware:
    """CPU features that Xen's choices depend on (what CPUID offers Xen).

    :param vmx: Xen runs HVM guests with Intel VT-x (sets CR4.VMXE; needed for guest PKS);
        False for AMD SVM or no HVM support.
    """

    smep: bool = True
    smap: bool = True
    pku: bool = False
    pks: bool = False
    nx: bool = True
    vmx: bool = True
    xsave: bool = True
    fsgsbase: bool = True
    mce: bool = True


@dataclass(frozen=True)
class XenPolicy:
    """How one Xen build runs one domain: everything the Xen facts depend on.

    :param version: Xen release, ``"4.17"``/``"3.0.3"`` or a tuple; stored as a 3-tuple.
    :param domain: ``"hvm"``, ``"pv64"`` or ``"pv32"``.
    :param debug: a debug (``CONFIG_DEBUG``) hypervisor build: ``_PAGE_GNTTAB`` exists.
    :param smep: the ``smep=`` option: True, False or ``"hvm"`` (4.8+); Xen's strings accepted.
    :param smap: the ``smap=`` option, likewise.
    :param hw: the CPU's features.
    :param io_capable: the domain has iomem/ioport capabilities or passed-through devices (dom0
        usually does): it may set PWT/PCD/PAT on L1 entries.
    :param xpti: XPTI is active for this 64-bit PV domain (4.11+; ignored for 32-bit PV).
    :param pcid: this 64-bit PV domain uses PCID (``pcid=``, 4.11+; ignored for 32-bit PV).
    :param global_pages: the ``global-pages=`` option (4.14+; earlier versions behave as on).
    :param vtsc: Xen virtualises the TSC for this domain (forces CR4.TSD in PV context).
    :param hap: an HVM guest uses hardware-assisted paging (needed for guest PKE/PKS).
    :param superpages: Xen booted with ``allowsuperpage`` (3.4-4.9): PV L2 entries may set PSE.
    :raises OptionError: for an unknown version or domain, or a bad or unavailable option.
    """

    version: Union[Version, str]
    domain: str = "pv64"
    debug: bool = False
    smep: Union[bool, str] = True
    smap: Union[bool, str] = True
    hw: Hardware = field(default_factory=Hardware)
    io_capable: bool = False
    xpti: bool = False
    pcid: bool = False
    global_pages: bool = True
    vtsc: bool = False
    hap: bool = True
    superpages: bool = False

    def __post_init__(self):
        # Frozen: normalise through object.__setattr__ so comparisons see canonical values.
        version = parse_version(self.version)
        object.__setattr__(self, "version", version)
        domain = str(self.domain).strip().lower()
        if domain not in DOMAIN_TYPES:
            raise OptionError(f"unknown domain type {self.domain!r}: expected hvm, pv64 or pv32")
        if domain == "pv32" and version < FACTS["compat"].since:
            raise OptionError(f"32-bit PV guests on a 64-bit Xen need Xen 3.1 or later "
                              f"(this is {_vtext(version)})")
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "smep", _parse_sm_option("smep", self.smep, version))
        object.__setattr__(self, "smap", _parse_sm_option("smap", self.smap, version))
        if self.superpages and not (3, 4, 0) <= version < (4, 10, 0):
            raise OptionError(f"allowsuperpage exists only in Xen 3.4-4.9 "
                              f"(this is {_vtext(version)})")

    @property
    def is_pv(self) -> bool:
        return self.domain != "hvm"

    def has(self, key: str) -> bool:
        """Whether the fact ``key`` of :data:`FACTS` holds in this policy's version."""
        fact = FACTS[key]
        return fact.since <= self.version and (fact.until is None or self.version <= fact.until)

    def _feature(self, name: str) -> Tuple[bool, bool, str]:
        """SMEP/SMAP: (in Xen's own CR4, offered to HVM guests, why)."""
        hw = getattr(self.hw, name)
        option = getattr(self, name)
        key = "xen_" + name
        label = name.upper()
        if not self.has(key):
            return False, False, f"Xen {_vtext(self.version)} does not use {label} ({cite(key)})"
        if not hw:
            return False, False, f"the CPU has no {label}"
        if option is False:
            return False, False, f"{name}=0 hides {label} from Xen and HVM guests"
        if option == "hvm":
            return False, True, f"{name}=hvm: Xen's own CR4 lacks {label} ({cite('smep_hvm')})"
        return True, True, f"Xen uses {label} ({cite(key)})"


# --------------------------------------------------------------------------------------------
# PTE flags, levels, Xen-owned bits
# --------------------------------------------------------------------------------------------

def get_pte_flags(raw: int) -> int:
    """Return Xen's 24-bit flags word of a PTE: bits 11:0 stay, bits 63:52 become 23:12.

    :param raw: the 64-bit entry.
    :returns: the flags word (:data:`FACTS` ``pte_flags``).
    """
    return ((raw >> 40) & 0xFFF000) | (raw & 0xFFF)


def put_pte_flags(flags: int) -> int:
    """Return the PTE bits of a flags word (the inverse of :func:`get_pte_flags`).

    Bits 24-31 of Xen's ``uint32`` masks have no PTE position and are dropped.

    :param flags: a flags word or disallow mask.
    :returns: the corresponding 64-bit PTE mask.
    """
    return ((flags & 0xFFF000) << 40) | (flags & 0xFFF)


_LEVEL_ALIASES = {"pt": 1, "l1": 1, "pd": 2, "l2": 2, "pdpt": 3, "l3": 3, "pml4": 4, "l4": 4}


def _xen_level(level_name: str, policy: XenPolicy) -> int:
    """Map an SDM (``pt``/``pd``/``pdpt``/``pml4``) or Xen (``l1``..``l4``) name to Xen's level."""
    level = _LEVEL_ALIASES.get(str(level_name).strip().lower())
    top = 3 if policy.domain == "pv32" else 4
    if level is None or level > top:
        raise OptionError(f"level {level_name!r} has no Xen-validated table in a "
                          f"{policy.domain} guest: expected one of pt/pd/pdpt"
                          + ("" if top == 3 else "/pml4"))
    return level


def _gnttab_flag(policy: XenPolicy) -> Tuple[int, str]:
    """``_PAGE_GNTTAB`` as a flags bit for this build (0 in release builds), and its fact key."""
    if not policy.debug:
        return 0, ""
    if policy.has("gnttab_bit11"):
        return 1 << 11, "gnttab_bit11"
    return 1 << 22, "gnttab_bit62"


def xen_bits(raw: int, level_name: str, policy: XenPolicy) -> Tuple[Tuple[int, str, str], ...]:
    """Name the Xen-owned bits set in one guest entry.

    Only present L1 entries of PV guests carry Xen's bits: bit 52 (64-bit PV, 3.0.3+) and, in
    debug builds, ``_PAGE_GNTTAB`` (bit 11 before 3.4, bit 62 since). HVM guest entries hold
    GFNs and nothing of Xen's. A bit in the guest-available range that Xen does not own in this
    policy is the guest's and is not listed.

    :param raw: the 64-bit entry as read from the guest's table.
    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: the Xen build and domain.
    :returns: ``(pte_bit, name, meaning)`` per Xen-owned bit set, in bit order.
    :raises OptionError: for a level the domain has no table for.
    """
    if not policy.is_pv:
        return ()
    if _xen_level(level_name, policy) != 1 or not raw & (1 << PTE.P):
        return ()
    found = []
    gnt, gnt_key = _gnttab_flag(policy)
    gnt_bit = 11 if gnt == 1 << 11 else 62
    if gnt and raw & (1 << gnt_bit):
        found.append((gnt_bit, "_PAGE_GNTTAB",
                      f"Xen debug build: grant mapping ({cite(gnt_key)})"))
    if policy.domain == "pv64" and policy.has("guest_kernel") and raw & (1 << 52):
        if raw & (1 << PTE.G):
            meaning = ("Xen: guest-kernel page, but G is set too: Xen warns 'Global bit is set "
                       "in kernel page' when an entry is written so, and leaves G: this kernel "
                       f"mapping is global ({cite('guest_kernel_global')})")
        else:
            meaning = ("Xen: guest-kernel page (written with U=0; Xen forced U=1, no G) "
                       f"({cite('guest_kernel')})")
        found.append((52, "_PAGE_GUEST_KERNEL", meaning))
    return tuple(sorted(found))


def pkey_collision(raw: int, level_name: str, policy: XenPolicy) -> Optional[str]:
    """Say when an entry's protection key (PTE bits 62:59) is really, in part, a Xen bit.

    That happens on present L1 entries of PV guests in debug builds since 3.4, where bit 62 is
    ``_PAGE_GNTTAB``. (PV context never has CR4.PKE, so the field is never a key for PV guests.)

    :param raw: the 64-bit entry.
    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: the Xen build and domain.
    :returns: one line explaining the collision, or None when there is none.
    :raises OptionError: for a level the domain has no table for.
    """
    for bit, name, _ in xen_bits(raw, level_name, policy):
        if bit in range(PTE.PKEY_SHIFT, PTE.PKEY_SHIFT + 4):
            key = (raw & PTE.PKEY_MASK) >> PTE.PKEY_SHIFT
            return (f"protection key {key} is not a key: PTE bit {bit} (key bit "
                    f"{bit - PTE.PKEY_SHIFT}) is Xen's {name} in this debug build, and CR4.PKE "
                    f"is never set for PV guests ({cite('pkey_bits')})")
    return None


# --------------------------------------------------------------------------------------------
# Disallow masks
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MaskEra:
    """The x86_64 disallow-mask rules from one release on (flags-word masks, NX hardware)."""

    since: Version
    fact: str
    base: int                 # with NX hardware
    nx_needs_hw: bool         # without NX hardware the base also disallows NX (flag bit 23)
    l1_allows_g: bool
    gnttab_everywhere: bool   # 3.0.0-3.0.2: _PAGE_GNTTAB is in the base mask of every level
    io_relax: bool            # l1_disallow_mask() relaxes PAGE_CACHE_ATTRS
    compat_l3: Optional[int]  # 32-bit PV L3 (PAE PDPTE) mask


_NX_FLAG = 1 << 23
_G_FLAG = 1 << PTE.G
_PSE_FLAG = 1 << PTE.PS
_CACHE_ATTRS = (1 << PTE.PWT) | (1 << PTE.PCD) | (1 << PTE.PAT_4K)

_MASK_ERAS = (
    _MaskEra((3, 0, 0), "mask_3_0", 0xFF7FF180, True, False, True, False, None),
    _MaskEra((3, 0, 3), "mask_3_0_3", 0xFF000180, False, True, False, False, None),
    _MaskEra((3, 1, 0), "mask_3_1", 0xFF000180, True, True, False, False, 0xFFFFF1E6),
    _MaskEra((3, 2, 0), "mask_3_2", 0xFF000198, True, True, False, True, 0xFFFFF1FE),
    _MaskEra((3, 4, 0), "mask_3_4", 0xFF000198, True, True, False, True, 0xFFFFF198),
)


def _mask_era(version: Version) -> _MaskEra:
    return [era for era in _MASK_ERAS if era.since <= version][-1]


def disallow_mask(level_name: str, policy: XenPolicy) -> int:
    """Return the flags-word mask Xen rejects in a present PV guest entry at this level.

    The mask applies to :func:`get_pte_flags` of the entry (use :func:`put_pte_flags` for the PTE
    bits). It depends on the version, the build (debug adds ``_PAGE_GNTTAB`` on L1), NX hardware,
    I/O capability (cache attributes on L1), and 32-bit PV (its L3 is a PAE PDPT).

    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: a PV policy.
    :returns: the mask as Xen's ``uint32`` (bits 24-31 have no PTE meaning).
    :raises OptionError: for an HVM policy (Xen does not validate HVM guest tables) or a level
        the domain has no table for.
    """
    if not policy.is_pv:
        raise OptionError("Xen validates only PV guest page tables; this policy is for HVM")
    level = _xen_level(level_name, policy)
    era = _mask_era(policy.version)
    gnt, _ = _gnttab_flag(policy)
    base = era.base
    if era.nx_needs_hw and not policy.hw.nx:
        base |= _NX_FLAG
    if era.gnttab_everywhere:
        base |= gnt
    if level == 3 and policy.domain == "pv32":
        return era.compat_l3
    if level == 1:
        mask = (base | gnt) & ~(_G_FLAG if era.l1_allows_g else 0)
        if era.io_relax and policy.io_capable:
            mask &= ~_CACHE_ATTRS
        return mask
    if level == 2 and policy.superpages:
        return base & ~_PSE_FLAG
    return base


def _pte_bit_name(bit: int, level: int, policy: XenPolicy) -> str:
    gnt, _ = _gnttab_flag(policy)
    if gnt and bit == (11 if gnt == 1 << 11 else 62):
        return "_PAGE_GNTTAB"
    if bit == PTE.PS:
        return "PAT" if level == 1 else "PSE"
    names = {PTE.P: "P", PTE.RW: "RW", PTE.US: "US", PTE.PWT: "PWT", PTE.PCD: "PCD", PTE.A: "A",
             PTE.D: "D", PTE.G: "G", PTE.XD: "NX"}
    names.update({b: f"AVAIL{i}" for i, b in enumerate(PTE.AVAIL_LOW)})
    return names.get(bit, f"bit{bit}")


def disallow_violations(raw: int, level_name: str, policy: XenPolicy) -> List[Tuple[int, str]]:
    """Name the bits of a present PV entry that Xen's disallow mask rejects.

    Such an entry cannot have been installed by Xen (``-EINVAL``, "Bad L1 flags"); finding one in
    a live table means the table was never validated or was corrupted. Non-present entries are not
    checked by Xen, so none is reported for them; HVM guests have no masks and get ``[]``.

    :param raw: the 64-bit entry.
    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: the Xen build and domain.
    :returns: ``(pte_bit, name)`` per violating bit, in bit order.
    :raises OptionError: for a level the domain has no table for.
    """
    if not policy.is_pv:
        return []
    level = _xen_level(level_name, policy)
    if not raw & (1 << PTE.P):
        return []
    bad = put_pte_flags(get_pte_flags(raw) & disallow_mask(level_name, policy))
    return [(bit, _pte_bit_name(bit, level, policy)) for bit in range(64) if bad >> bit & 1]


# --------------------------------------------------------------------------------------------
# CR4
# --------------------------------------------------------------------------------------------

PV_CR4_GUEST_MASK = CR4.TSD | CR4.DE | CR4.FSGSBASE | CR4.OSXSAVE       # 0x5000C
PV_CR4_GUEST_VISIBLE_MASK = CR4.PAE | CR4.MCE | CR4.OSFXSR | CR4.OSXMMEXCPT  # 0x660
XEN_CR4_PV32_BITS = CR4.SMEP | CR4.SMAP                                  # 0x300000

# Bits explained even when clear: the ones that decide how a walk is judged.
_PAGING_BITS = (CR4.PSE, CR4.PAE, CR4.PGE, CR4.LA57, CR4.PCIDE, CR4.SMEP, CR4.SMAP, CR4.PKE,
                CR4.PKS)


class Cr4(NamedTuple):
    """A CR4 value and how it was derived.

    :param value: the CR4 value.
    :param explanation: one line per relevant bit, ``"NAME=v: where it came from"``, in bit
        order; extra ``"note: ..."`` lines at the end.
    """

    value: int
    explanation: Tuple[str, ...]


class _Cr4Builder:
    """Accumulates a CR4 value with one reason per bit touched."""

    def __init__(self, value: int, reason: str):
        self.value = value
        self.reasons: Dict[int, str] = {}
        self.notes: List[str] = []
        for bit in _bits(value):
            self.reasons[bit] = reason

    def set(self, bit: int, on: bool, reason: str):
        self.value = (self.value | bit) if on else (self.value & ~bit)
        self.reasons[bit] = reason

    def result(self) -> Cr4:
        for bit in _PAGING_BITS:
            self.reasons.setdefault(bit, "not set")
        lines = [f"{CR4.NAMES.get(bit, hex(bit))}={int(bool(self.value & bit))}: {why}"
                 for bit, why in sorted(self.reasons.items())]
        return Cr4(self.value, tuple(lines + [f"note: {n}" for n in self.notes]))


def _bits(value: int) -> List[int]:
    return [1 << i for i in range(value.bit_length()) if value >> i & 1]


def default_xen_cr4(policy: XenPolicy) -> Cr4:
    """Derive a plausible ``mmu_cr4_features`` (Xen's own CR4) from the version and hardware.

    Use the real value when known (e.g. CR4 read while the CPU is in Xen's idle loop, HVM
    context); this is only what setup code would set on such hardware. Not modelled: CET (Xen's
    shadow stacks/IBT), FRED, UMIP and LASS.

    :param policy: the Xen build (its domain is irrelevant here).
    :returns: the value and one line per bit.
    """
    hw = policy.hw
    pse = policy.has("minimal_cr4_pse")
    b = _Cr4Builder(0, "")
    minimal = "minimal_cr4_pse" if pse else "minimal_cr4"
    for bit in ((CR4.PSE,) if pse else ()) + (CR4.PGE, CR4.PAE):
        b.set(bit, True, f"Xen's minimal CR4 ({cite(minimal)})")
    for bit in (CR4.OSFXSR, CR4.OSXMMEXCPT):
        b.set(bit, True, f"set by Xen at boot ({cite('cr4_fxsr')})")
    for bit, has_hw, key in ((CR4.MCE, hw.mce, "cr4_mce"), (CR4.OSXSAVE, hw.xsave, "cr4_osxsave"),
                             (CR4.FSGSBASE, hw.fsgsbase, "cr4_fsgsbase"),
                             (CR4.VMXE, hw.vmx, "cr4_vmxe")):
        if has_hw and policy.has(key):
            b.set(bit, True, f"hardware has it ({cite(key)})")
    for bit, name in ((CR4.SMEP, "smep"), (CR4.SMAP, "smap")):
        in_xen, _, why = policy._feature(name)
        b.set(bit, in_xen, why)
    if hw.pku and policy.has("xen_pke"):
        b.set(CR4.PKE, True, f"hardware has PKU ({cite('xen_pke')})")
    else:
        b.set(CR4.PKE, False, "no PKU" if not hw.pku else
              f"Xen runs with PKE clear before 4.16 ({cite('xen_pke')})")
    b.notes.append("derived from version and hardware, not read from the machine")
    return b.result()


def _start(policy: XenPolicy, xen_cr4: Optional[int]) -> Tuple[_Cr4Builder, int]:
    """A builder seeded with Xen's CR4 (given, or derived), plus that CR4."""
    given = xen_cr4 is not None
    x = int(xen_cr4) if given else default_xen_cr4(policy).value
    how = "given" if given else "derived from version/hardware"
    b = _Cr4Builder(x, f"from Xen's CR4 (mmu_cr4_features, {how})")
    for bit, name in ((CR4.SMEP, "smep"), (CR4.SMAP, "smap")):
        in_xen, _, why = policy._feature(name)
        if bool(x & bit) != in_xen:
            b.notes.append(f"the given Xen CR4 has {name.upper()}={int(bool(x & bit))} but the "
                           f"policy says otherwise ({why}); the given value is used")
        b.reasons[bit] = f"Xen's CR4 ({how}) {'has' if x & bit else 'lacks'} it: {why}"
    return b, x


def _pv_cr4(policy: XenPolicy, guest_cr4: int, xen_cr4: Optional[int]) -> _Cr4Builder:
    """The CR4 Xen loads for a PV vCPU (pv_make_cr4 and its predecessors)."""
    b, x = _start(policy, xen_cr4)
    v = policy.version
    pv64 = policy.domain == "pv64"
    # 32-bit PV domains never get XPTI or PCID (switch_compat).
    xpti = policy.xpti and pv64
    pcid = policy.pcid and pv64
    if v >= (4, 12, 0):
        why = cite("pv_make_cr4")
        for bit in (CR4.PCIDE, CR4.PGE, CR4.TSD):
            b.set(bit, False, f"pv_make_cr4 clears it ({why})")
    elif v >= (4, 11, 0):
        why = cite("pv_cr4_xpti")
        for bit in (CR4.PCIDE, CR4.PGE):
            b.set(bit, False, f"not taken from Xen's CR4 ({why})")
    else:
        why = cite("pv_cr4_macro")
        for bit in (CR4.PGE, CR4.PSE):
            if x & bit:
                b.set(bit, True, f"Xen's, ORed in by pv_guest_cr4_to_real_cr4 ({why})")
        if policy.xpti or policy.pcid:
            b.notes.append("xpti/pcid are not modelled before 4.11 (stable backports differ)")
    if v >= (4, 11, 0):
        if pcid:
            b.set(CR4.PCIDE, True, f"the domain uses PCID ({why})")
        elif xpti:
            b.set(CR4.PGE, False, f"XPTI is active: no global pages ({why})")
        elif not policy.global_pages and policy.has("global_pages"):
            b.set(CR4.PGE, False, f"global-pages=0 ({cite('global_pages')})")
        else:
            b.set(CR4.PGE, True, f"no PCID, no XPTI: global pages on ({why})")
        if not pv64 and (policy.xpti or policy.pcid):
            b.notes.append(f"xpti/pcid ignored: 32-bit PV never uses them "
                           f"({cite('pv32_no_xpti')})")
    if policy.vtsc or guest_cr4 & CR4.TSD:
        b.set(CR4.TSD, True, "Xen virtualises the TSC (vtsc)" if policy.vtsc
              else f"the guest set TSD in its CR4 view ({why})")
    if CR4.DE & (x | guest_cr4):
        b.set(CR4.DE, False, f"DE is emulated for PV, never in the real CR4 ({why})")
    if v >= (4, 12, 0) and pv64:
        want = bool(guest_cr4 & CR4.FSGSBASE) and bool(x & CR4.FSGSBASE)
        if want or x & CR4.FSGSBASE:
            b.set(CR4.FSGSBASE, want, ("the 64-bit PV guest set FSGSBASE" if want else
                                       "a 64-bit PV guest keeps FSGSBASE only if it sets it")
                  + f" ({why})")
    # PKE: cleared by pv_make_cr4 since 4.16; before, Xen's own CR4 never had it.
    if policy.has("pv_pke"):
        b.set(CR4.PKE, False, f"pv_make_cr4 clears it: no protection keys for PV guests "
                              f"({cite('pv_pke')})")
    else:
        b.set(CR4.PKE, False, f"never set for PV guests: Xen's own CR4 has no PKE before 4.16 "
                              f"({cite('xen_pke')})")
    return b


def _hvm_valid(policy: XenPolicy) -> Dict[int, Tuple[bool, str]]:
    """For the paging-relevant CR4 bits an HVM guest may or may not set: (valid, why)."""
    hw = policy.hw
    _, smep, smep_why = policy._feature("smep")
    _, smap, smap_why = policy._feature("smap")
    valid = {
        CR4.SMEP: (smep and policy.has("hvm_smep"), smep_why if not smep else cite("hvm_smep")),
        CR4.SMAP: (smap and policy.has("hvm_smap"), smap_why if not smap else cite("hvm_smap")),
        CR4.LA57: (False, f"never valid for HVM guests ({cite('hvm_cr4')})"),
    }
    pke_why = cite("hvm_pke")
    if not policy.has("hvm_pke"):
        valid[CR4.PKE] = (False, f"not before 4.7 ({pke_why})")
    elif not hw.pku:
        valid[CR4.PKE] = (False, "the CPU has no PKU")
    elif not policy.hap:
        valid[CR4.PKE] = (False, f"only with HAP, this guest is shadow-paged ({pke_why})")
    else:
        valid[CR4.PKE] = (True, pke_why)
    pks_why = cite("hvm_pks")
    if not policy.has("hvm_pks"):
        valid[CR4.PKS] = (False, f"not before 4.18 ({pks_why})")
    elif not hw.pks:
        valid[CR4.PKS] = (False, "the CPU has no PKS")
    elif not (policy.hap and hw.vmx):
        valid[CR4.PKS] = (False, f"only for HAP guests on VMX ({pks_why})")
    else:
        valid[CR4.PKS] = (True, pks_why)
    return valid


def _hvm_cr4(policy: XenPolicy, guest_cr4: int) -> _Cr4Builder:
    """The CR4 that governs an HVM guest's page tables: its own, within the valid bits."""
    b = _Cr4Builder(guest_cr4, f"the guest's own CR4 ({cite('hvm_cr4')})")
    for bit, (ok, why) in _hvm_valid(policy).items():
        if guest_cr4 & bit:
            if ok:
                b.set(bit, True, f"the guest's own CR4 ({why})")
            else:
                b.set(bit, False, f"the guest cannot set it, hvm_set_cr4 raises #GP: {why}")
        elif not ok:
            b.set(bit, False, f"the guest's own CR4; not available to it: {why}")
    b.notes.append("Xen also ORs host-owned bits (VMXE, MCE) into the hardware CR4 of a VMX "
                   "guest; they do not affect paging and are not shown")
    return b


def effective_cr4(policy: XenPolicy, guest_cr4: Optional[int] = None,
                  xen_cr4: Optional[int] = None, context: str = "kernel") -> Cr4:
    """Return the CR4 the hardware really runs with while this vCPU's code runs, and why.

    * HVM: the guest's own CR4 governs its tables (only bits ``hvm_cr4_guest_valid_bits``
      allows: PKE with PKU on HAP 4.7+, PKS with PKS on HAP+VMX 4.18+, never LA57).
    * 64-bit PV: ``pv_make_cr4`` (4.12+) or its predecessors: Xen's CR4 with PKE cleared, PGE or
      PCIDE per XPTI/PCID/global-pages, TSD, FSGSBASE rules. SMEP/SMAP are there as Xen set them,
      but do not apply to the CPL3 kernel (see :func:`kernel_protections`).
    * 32-bit PV: the same, but since 4.7 SMEP and SMAP are cleared while ring 1 (the kernel)
      runs; before 4.7 they stay set (the regression in the "Xen PV PTE ABI" mail).

    :param policy: the Xen build and domain.
    :param guest_cr4: for HVM, the guest's CR4 (required); for PV, the guest's CR4 *view*
        (``ctrlreg[4]``), whose TSD/DE/FSGSBASE/OSXSAVE choices matter; ``None`` means 0.
    :param xen_cr4: Xen's own CR4 (``mmu_cr4_features``, e.g. read in Xen's idle loop) when
        known; otherwise :func:`default_xen_cr4` is used and the explanation says so.
    :param context: ``"kernel"`` (the guest kernel runs), ``"user"`` (guest user space runs) or
        ``"xen"`` (Xen runs on this vCPU's behalf, e.g. in a hypercall or fault handler).
    :returns: the value and one explanation line per relevant bit.
    :raises OptionError: for an unknown context, or HVM without ``guest_cr4``.
    """
    if context not in ("kernel", "user", "xen"):
        raise OptionError(f"unknown CR4 context {context!r}: expected kernel, user or xen")
    if not policy.is_pv:
        if context == "xen":
            b, _ = _start(policy, xen_cr4)
            b.notes.append("Xen runs HVM and idle context with mmu_cr4_features")
            return b.result()
        if guest_cr4 is None:
            raise OptionError("an HVM guest's page tables follow its own CR4: give the guest's "
                              "CR4")
        return _hvm_cr4(policy, int(guest_cr4)).result()
    b = _pv_cr4(policy, int(guest_cr4 or 0), xen_cr4)
    if policy.domain == "pv32" and context == "kernel":
        if policy.has("pv32_cr4"):
            for bit in (CR4.SMEP, CR4.SMAP):
                if b.value & bit:
                    b.set(bit, False, "cleared by Xen on return to ring 1 (the 32-bit PV kernel) "
                                      f"({cite('pv32_cr4')})")
        else:
            for bit in (CR4.SMEP, CR4.SMAP):
                if b.value & bit:
                    b.reasons[bit] += ("; still set in ring 1: Xen clears it for 32-bit PV "
                                       "guest code only since 4.7")
    elif policy.domain == "pv64":
        for bit in (CR4.SMEP, CR4.SMAP):
            if b.value & bit:
                b.reasons[bit] += ("; does not apply to the 64-bit PV kernel, which runs at CPL3 "
                                   "(it keeps Xen off guest memory, all of which is U=1)")
    elif policy.domain == "pv32" and policy.has("pv32_cr4"):
        where = "guest user space (ring 3)" if context == "user" else "Xen"
        b.notes.append(f"SMEP/SMAP as in Xen's CR4 while {where} runs: Xen clears them only "
                       f"for ring 1/2 ({cite('pv32_cr4')})")
    return b.result()


def guest_visible_cr4(policy: XenPolicy, guest_choice: int = 0,
                      xen_cr4: Optional[int] = None) -> Cr4:
    """Return the CR4 the guest reads back (MOV from CR4, ``ctrlreg[4]`` in dumps), and why.

    Kept apart from :func:`effective_cr4`: a PV guest never sees SMEP, SMAP, PKE, PGE, PCIDE or
    PSE, whatever the hardware runs with.

    :param policy: the Xen build and domain.
    :param guest_choice: the CR4 value the guest last wrote (HVM: its CR4).
    :param xen_cr4: Xen's own CR4 when known, else :func:`default_xen_cr4`.
    :returns: the value and one line per bit.
    """
    if not policy.is_pv:
        b = _Cr4Builder(int(guest_choice), "HVM: the guest reads its own CR4 (read shadow)")
        return b.result()
    b, x = _start(policy, xen_cr4)
    pv64 = policy.domain == "pv64"
    # Guest-controllable bits, each dropped when the CPUID policy lacks the feature.
    controllable = CR4.TSD | CR4.DE
    if policy.hw.xsave:
        controllable |= CR4.OSXSAVE
    if policy.hw.fsgsbase and (pv64 or policy.version >= (4, 12, 0)):
        controllable |= CR4.FSGSBASE
    if policy.version >= (4, 12, 0):
        why = cite("pv_cr4_view")
        for bit in _bits(x & ~PV_CR4_GUEST_VISIBLE_MASK):
            b.set(bit, False, f"not in PV_CR4_GUEST_VISIBLE_MASK ({why})")
        for bit in _bits(x & PV_CR4_GUEST_VISIBLE_MASK):
            b.set(bit, True, f"read-only copy of Xen's ({why})")
    else:
        why = cite("pv_cr4_view_old")
        hidden = (CR4.PGE | CR4.PSE | CR4.TSD | CR4.OSXSAVE | CR4.SMEP | CR4.SMAP |
                  CR4.FSGSBASE | CR4.PCIDE | CR4.PKE)
        for bit in _bits(x & hidden):
            b.set(bit, False, f"hidden from PV guests ({why})")
        for bit in _bits(x & ~hidden & ~controllable):
            b.set(bit, True, f"copy of Xen's ({why})")
    for bit in _bits(controllable):
        if guest_choice & bit:
            b.set(bit, True, f"the guest's choice ({why})")
        elif b.value & bit:
            b.set(bit, False, f"guest-controlled, not chosen ({why})")
    for bit in _bits(guest_choice & ~controllable):
        if not x & bit:
            b.set(bit, False, f"the guest cannot set it ({why})")
    b.reasons = {bit: r for bit, r in b.reasons.items() if b.value & bit or bit in _PAGING_BITS}
    return b.result()


# --------------------------------------------------------------------------------------------
# Rings
# --------------------------------------------------------------------------------------------

def kernel_cpl(domain: str) -> int:
    """Return the privilege level the guest kernel runs at: 0 (HVM), 3 (64-bit PV), 1 (32-bit PV).

    :param domain: ``"hvm"``, ``"pv64"`` or ``"pv32"``.
    :returns: the CPL.
    :raises OptionError: for an unknown domain type.
    """
    cpl = {"hvm": 0, "pv64": 3, "pv32": 1}.get(str(domain).strip().lower())
    if cpl is None:
        raise OptionError(f"unknown domain type {domain!r}: expected hvm, pv64 or pv32")
    return cpl


class KernelProtections(NamedTuple):
    """Which CR4 protections apply to the guest kernel's own accesses.

    :param cpl: the kernel's privilege level (accesses at CPL3 are user-mode accesses).
    :param smep: SMEP applies to the kernel's instruction fetches.
    :param smap: SMAP applies to the kernel's data accesses to user pages.
    :param pke: PKRU applies to its accesses to user pages.
    :param pks: PKRS applies to its accesses to supervisor pages.
    :param cr4: the effective CR4 these were read from (see :func:`effective_cr4`).
    :param notes: why, in a few lines.
    """

    cpl: int
    smep: bool
    smap: bool
    pke: bool
    pks: bool
    cr4: Cr4
    notes: Tuple[str, ...]


def kernel_protections(policy: XenPolicy, guest_cr4: Optional[int] = None,
                       xen_cr4: Optional[int] = None) -> KernelProtections:
    """Say whether SMEP/SMAP/PKE/PKS apply to the guest kernel's accesses under this policy.

    64-bit PV: never SMEP/SMAP/PKS (the kernel runs at CPL3, every page is U=1), never PKE (not
    set in PV context). 32-bit PV: the ring-1 kernel is a supervisor, so SMEP/SMAP apply exactly
    when the effective CR4 has them; no PKE/PKS. HVM: as the guest's CR4 says.

    :param policy: the Xen build and domain.
    :param guest_cr4: as for :func:`effective_cr4` (required for HVM).
    :param xen_cr4: as for :func:`effective_cr4`.
    :returns: the flags, the CR4 they come from and the reasons.
    :raises OptionError: as :func:`effective_cr4`.
    """
    cr4 = effective_cr4(policy, guest_cr4, xen_cr4, context="kernel")
    cpl = kernel_cpl(policy.domain)
    on = {bit: bool(cr4.value & bit) for bit in (CR4.SMEP, CR4.SMAP, CR4.PKE, CR4.PKS)}
    if cpl == 3:
        notes = (f"the 64-bit PV kernel runs at CPL3: its accesses are user-mode accesses, so "
                 f"SMEP/SMAP/PKS do not apply even though CR4 has "
                 f"SMEP={int(on[CR4.SMEP])} SMAP={int(on[CR4.SMAP])} ({cite('pv64_ring3')})",
                 f"CR4.PKE is never set in PV context ({cite('pv_pke')})")
        return KernelProtections(cpl, False, False, False, False, cr4, notes)
    if policy.domain == "pv32":
        notes = (f"the 32-bit PV kernel runs in ring 1, a supervisor mode: SMEP/SMAP apply as "
                 f"the effective CR4 has them ({cite('pv32_ring1')})",)
        return KernelProtections(cpl, on[CR4.SMEP], on[CR4.SMAP], False, False, cr4, notes)
    notes = ("the HVM kernel runs at CPL0 under its own CR4",)
    return KernelProtections(cpl, on[CR4.SMEP], on[CR4.SMAP], on[CR4.PKE], on[CR4.PKS], cr4,
                             notes)


# Xen's L4 slots, from the virtual memory map comment in config.h (x86_64, 4.x).
_L4_SLOTS = {
    256: "read-only M2P (guest-visible machine-to-phys table)",
    257: "PCI MMCFG ioremap",
    258: "linear page table (self-map of this L4)",
    259: "shadow linear page table",
    260: "per-domain mappings (GDT/LDT, XPTI)",
    261: "M2P, vmap/fixmap, Xen text and frame table",
}


def l4_slot_label(index: int, policy: XenPolicy) -> Optional[str]:
    """Name the Xen-owned slot ``index`` of a PV L4 table, or None for a guest slot.

    :param index: L4 index (0..511).
    :param policy: the domain (only PV L4s carry Xen slots; HVM tables hold nothing of Xen's).
    :returns: a label such as ``"Xen L4 slot 258: linear page table ..."``.
    """
    if policy.domain == "pv32" and index == 4:
        return (f"Xen L4 slot 4: per-domain area mirror (compat translation area) "
                f"({cite('compat_alt_slot')})")
    if not policy.is_pv or not 256 <= index <= 271:
        return None
    what = _L4_SLOTS.get(index, "1:1 direct map of all memory")
    return f"Xen L4 slot {index}: {what} ({cite('xen_l4_slots')})"


PV32_HYPERVISOR_START = 0xF5800000


def pv32_hypervisor_area(va: int, span: int, policy: XenPolicy) -> Optional[str]:
    """Label an entry of a 32-bit PV guest's tables that lies wholly in Xen's area, else None.

    :param va: first guest VA the entry covers (32-bit); ``span``: bytes it covers.
    """
    if policy.domain != "pv32" or va < PV32_HYPERVISOR_START or va + span > 1 << 32:
        return None
    return (f"Xen's area of a 32-bit PV guest (VA >= {PV32_HYPERVISOR_START:#x}) "
            f"({cite('pv32_hv_area')})")


# Xen's flat code selectors (public/arch-x86/xen-x86_64.h:30-41, xen-x86_32.h:27-34) and the
# hypervisor's own (__HYPERVISOR_CS, asm/x86_64/asm_defns.h): a CPU state with one of them is a
# Xen machine, and the selector tells whose code was running.
_CS_DOMAINS = {
    0xE033: ("pv64", "CS 0xe033 is Xen's FLAT_RING3_CS64: a 64-bit PV guest was running"),
    0xE02B: ("pv64", "CS 0xe02b is Xen's FLAT_RING3_CS64 (64-bit PV user space)"),
    0xE019: ("pv32", "CS 0xe019 is Xen's FLAT_RING1_CS: a 32-bit PV kernel was running"),
    0xE008: ("pv64", "CS 0xe008 is Xen's own code segment: the CPU was in Xen, with a PV "
                     "guest's tables loaded (taken as a 64-bit PV guest's)"),
}


def domain_from_cs(cs: Optional[int]) -> Optional[Tuple[str, str]]:
    """Guess the domain type from a stopped CPU's CS selector: ``(domain, why)`` or None.

    :param cs: the CS selector (None when unknown).
    """
    if cs is None:
        return None
    return _CS_DOMAINS.get(cs & 0xFFFF)

