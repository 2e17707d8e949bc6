"""``xen-domains``: every pCPU, domain and vCPU of a Xen host, live or dumped."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from typing import List

import gdb

from ..errors import OptionError
from ..render import dumps
from ..render.domains import domain_records, domains_text
from .args import GdbArgumentParser
from .base import XenPteCommand, write_lines
from . import params
from .hostargs import add_host_options, xen_syms_path
from .live import open_live_source

__all__ = ["XenPteDomainsCommand", "register"]


class XenPteDomainsCommand(XenPteCommand):
    """List a Xen host's pCPUs, domains and vCPUs: live under QEMU's gdbstub, or from a dump.

    Each pCPU with its CR3/CR4 (a crash dump's: what Xen saved in its crash notes, and which one
    crashed; live or a QEMU dump of the host: the CPU's own); each domain with its kind (pv64,
    pv32, hvm, pvh) and each vCPU's state, pCPU, page tables (kernel and user L4 for 64-bit PV),
    the CR4 the guest sees and, where a pCPU runs it or holds its state, the hardware CR4.
    vCPU state needs that Xen's xen-syms with DWARF (--xen-syms, or gdb's symbol file); without
    it a crash dump's VMCOREINFO_XEN gives the domain ids. Walk one of them with
    xen-pte-walk --domid N --vcpu M (and --core FILE for a dump)."""

    command = "xen-domains"

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-domains --xen-syms xen-syms\n"
            "  xen-domains --core vmcore --xen-syms xen-syms\n"
            "  xen-domains --core vmcore.kdump --json"))
        p.add_argument("--core", metavar="FILE",
                       help="a dump of the host: its kexec crash vmcore (ELF) or makedumpfile "
                            "copy, or a QEMU dump-guest-memory of it (default: the live target)")
        add_host_options(p, domid=False)
        p.add_argument("--json", action="store_true",
                       help="JSON Lines: pcpu, vcpu, domain (and crash) records")
        return p

    def run(self, args: argparse.Namespace) -> None:
        from ..sources.open import open_dump
        from ..xen_host import open_host
        src = open_dump(args.core) if args.core else \
            open_live_source(fast=bool(params.value("fast-path")))
        with ExitStack() as stack:
            stack.callback(src.close)
            stack.enter_context(src.hold())  # live: one PhyMemMode session for every read
            syms = xen_syms_path(args)
            if getattr(src, "host", None) is None and syms is None:
                raise OptionError(f"{src.name} has no Xen crash notes: give the running Xen's "
                                  "xen-syms (--xen-syms FILE, or load it as gdb's symbol file)")
            host = open_host(src, syms)
            stack.callback(host.layout.close)
            doms = host.domains()
            crashing, why = host.crashing_pcpu()
            pcpus = src.vcpus()
            tables = [host.tables_of(r.cr3, doms) for r in pcpus]
            xen_cr4 = host.xen_cr4()
            notes = list(host.notes)
            if xen_cr4 is not None:
                notes.append(f"Xen's own CR4 (mmu_cr4_features, read from memory): "
                             f"{xen_cr4:#x}")
            if args.json:
                info = {"source": src.describe(), "layout": host.layout.name,
                        "xen_cr4": None if xen_cr4 is None else f"{xen_cr4:#x}",
                        "notes": notes}
                return write_lines(dumps(r) for r in
                                   domain_records(pcpus, doms, crashing, why, info, tables))
            pcpu_from = "Xen crash notes" if getattr(src, "host", None) is not None else \
                "the CPUs' own registers"
            write_lines(domains_text(src.describe(), host.layout.name, pcpus, doms,
                                     crashing, why, notes, tables, pcpu_from))


def register() -> List[gdb.Command]:
    """Create the ``xen-domains`` command."""
    return [XenPteDomainsCommand()]
