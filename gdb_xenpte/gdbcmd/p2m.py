"""``xen-pte-p2m``: an HVM/PVH guest address through the guest's tables and the host p2m."""

from __future__ import annotations

import argparse
from typing import List

import gdb

from ..errors import OptionError
from ..render import dumps, header_lines, trace_record, trace_text
from ..render.domains import p2m_records, p2m_text
from ..session import Options, prepare
from .args import GdbArgumentParser, address, int_in
from .base import XenPteCommand, style, write_lines
from .hostargs import add_host_options, host_view

__all__ = ["XenPteP2mCommand", "register"]


class XenPteP2mCommand(XenPteCommand):
    """Trace one address of an HVM/PVH domain through its own page tables and Xen's host p2m.

    The guest's walk (its CR3/CR4/EFER as Xen recorded them) with every guest table frame and the
    final frame looked up in the domain's host p2m (EPT or NPT, read from the crash dump): the
    machine frame, the p2m's own R/W/X and Xen's p2m type, and the rights both allow together."""

    command = "xen-pte-p2m"
    takes_address = True

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "example:\n  xen-pte-p2m --core vmcore --xen-syms xen-syms --domid 2 0x404000"))
        p.add_argument("addr", metavar="ADDR", type=address, help="the guest virtual address")
        p.add_argument("--core", metavar="FILE", required=True,
                       help="the Xen host's crash dump (kexec vmcore or makedumpfile copy)")
        p.add_argument("--vcpu", metavar="N", type=int_in(0, 4095),
                       help="the domain's vCPU (default 0)")
        add_host_options(p)
        p.add_argument("--json", action="store_true",
                       help="JSON Lines: header, trace, p2m records, p2m_combined")
        return p

    def run(self, args: argparse.Namespace) -> None:
        if args.domid is None:
            raise OptionError("give --domid N: the HVM/PVH domain whose address to trace")
        from ..sources.open import open_dump
        with host_view(args, open_dump(args.core)) as view:
            dom = getattr(view, "host_domain", None)
            if dom is None or dom.kind not in ("hvm", "pvh"):
                raise OptionError(f"domain {args.domid} is {dom.kind if dom else 'unknown'}: "
                                  "xen-pte-p2m traces HVM/PVH guests (PV tables hold machine "
                                  "frames already: use xen-pte-walk --domid)")
            from ..xen_host import p2m_trace
            session = prepare(view, Options(vcpu=args.vcpu or 0))
            trace = session.walker().trace(args.addr)
            pt = p2m_trace(view.host_view, dom, session.cpu.cr3, trace)
            header = session.header()
            if args.json:
                return write_lines(dumps(r) for r in [header, trace_record(trace)]
                                   + p2m_records(pt))
            write_lines(header_lines(header) + trace_text(trace, style()) + p2m_text(pt))


def register() -> List[gdb.Command]:
    """Create the ``xen-pte-p2m`` command."""
    return [XenPteP2mCommand()]
