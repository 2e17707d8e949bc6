"""``xen-domains``: every pCPU, domain and vCPU of a crashed Xen host, as Xen recorded them."""

from __future__ import annotations

import argparse
from typing import List

import gdb

from ..errors import OptionError
from ..render import dumps
from ..render.domains import domain_records, domains_text
from .args import GdbArgumentParser
from .base import XenPteCommand, write_lines
from .hostargs import add_host_options, xen_syms_path

__all__ = ["XenPteDomainsCommand", "register"]


class XenPteDomainsCommand(XenPteCommand):
    """List a Xen host's pCPUs, domains and vCPUs from its crash dump.

    Each pCPU with the CR3/CR4 it saved in Xen's crash notes and which one crashed; each domain
    with its kind (pv64, pv32, hvm, pvh) and each vCPU's state, pCPU, page tables (kernel and user
    L4 for 64-bit PV), the CR4 the guest sees and, where a pCPU was running it, the hardware CR4.
    vCPU state needs the crashed Xen's xen-syms with DWARF (--xen-syms, or gdb's symbol file);
    without it the dump's VMCOREINFO_XEN gives the domain ids. Walk one of them with
    xen-pte-walk --core FILE --domid N --vcpu M."""

    command = "xen-domains"

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-domains --core vmcore --xen-syms xen-syms\n"
            "  xen-domains --core vmcore.kdump --json"))
        p.add_argument("--core", metavar="FILE", required=True,
                       help="the host's kexec crash vmcore (ELF) or its makedumpfile copy")
        add_host_options(p, domid=False)
        p.add_argument("--json", action="store_true",
                       help="JSON Lines: pcpu, vcpu, domain (and crash) records")
        return p

    def run(self, args: argparse.Namespace) -> None:
        from ..sources.open import open_dump
        from ..xen_host import open_host
        with open_dump(args.core) as src:
            syms = xen_syms_path(args)
            if getattr(src, "host", None) is None and syms is None:
                raise OptionError(f"{src.name} is not a Xen host crash dump (no Xen crash "
                                  "notes): give --xen-syms to read a Xen host's memory from it")
            host = open_host(src, syms)
            try:
                doms = host.domains()
                crashing, why = host.crashing_pcpu()
                pcpus = src.vcpus()
                tables = [host.tables_of(r.cr3, doms) for r in pcpus]
                xen_cr4 = host.xen_cr4()
                notes = list(host.notes)
                if xen_cr4 is not None:
                    notes.append(f"Xen's own CR4 (mmu_cr4_features, read from the dump): "
                                 f"{xen_cr4:#x}")
                if args.json:
                    info = {"source": src.describe(), "layout": host.layout.name,
                            "xen_cr4": None if xen_cr4 is None else f"{xen_cr4:#x}",
                            "notes": notes}
                    return write_lines(dumps(r) for r in
                                       domain_records(pcpus, doms, crashing, why, info,
                                                      tables))
                write_lines(domains_text(src.describe(), host.layout.name, pcpus, doms,
                                         crashing, why, notes, tables))
            finally:
                host.layout.close()


def register() -> List[gdb.Command]:
    """Create the ``xen-domains`` command."""
    return [XenPteDomainsCommand()]
