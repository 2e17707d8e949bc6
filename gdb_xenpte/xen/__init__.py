"""Xen's facts about guest page tables and CR4, and the policy that selects among them.

Everything Xen-specific lives in this package, one idea a module:

* :mod:`.facts` — every fact with its source (file, commit, first release), one table;
* :mod:`.policy` — which Xen: version, build, boot options, hardware (:class:`XenPolicy`);
* :mod:`.pte` — Xen-owned PTE bits, protection-key collisions, PV disallow masks;
* :mod:`.cr4` — the CR4 Xen's policy gives a domain per context, and the guest's view of it;
* :mod:`.layout` — Xen's L4 slots and areas in a guest's space, code selectors, kernel rings.

The names below are the package's public API; import them from ``gdb_xenpte.xen``.
"""

from .cr4 import (PAGING_BITS, PV_CR4_GUEST_MASK, PV_CR4_GUEST_VISIBLE_MASK, XEN_CR4_PV32_BITS, Cr4,
                  default_xen_cr4, effective_cr4, explain_bits, guest_visible_cr4,
                  hvm_valid_bits)
from .facts import FACTS, XenFact, cite, version_text
from .layout import (M2P_PV32, M2P_PV64, PV32_HYPERVISOR_START, SELECTORS, Selector,
                     domain_from_cs, kernel_cpl, l4_slot_label, pv32_hypervisor_area)
from .policy import DOMAIN_TYPES, Hardware, XenPolicy, parse_version
from .pte import (disallow_mask, disallow_violations, get_pte_flags, pkey_collision,
                  put_pte_flags, xen_bits)

__all__ = [
    "Cr4",
    "DOMAIN_TYPES",
    "FACTS",
    "Hardware",
    "M2P_PV32",
    "M2P_PV64",
    "PAGING_BITS",
    "PV32_HYPERVISOR_START",
    "PV_CR4_GUEST_MASK",
    "PV_CR4_GUEST_VISIBLE_MASK",
    "SELECTORS",
    "Selector",
    "XEN_CR4_PV32_BITS",
    "XenFact",
    "XenPolicy",
    "cite",
    "default_xen_cr4",
    "disallow_mask",
    "disallow_violations",
    "domain_from_cs",
    "effective_cr4",
    "explain_bits",
    "get_pte_flags",
    "guest_visible_cr4",
    "hvm_valid_bits",
    "kernel_cpl",
    "l4_slot_label",
    "parse_version",
    "pkey_collision",
    "put_pte_flags",
    "pv32_hypervisor_area",
    "version_text",
    "xen_bits",
]
