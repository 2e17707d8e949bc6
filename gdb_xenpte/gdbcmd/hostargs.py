"""Options that pick one domain's vCPU of a Xen host — live under QEMU's gdbstub or dumped:
``--domid N`` (with ``--vcpu M``) and ``--xen-syms FILE``; shared by ``xen-pte-walk``,
``xen-pte-check``, ``xen-cr4`` and ``xen-domains``.

The lookup is the engine's (:mod:`gdb_xenpte.xen_host`); :func:`host_view` only wraps the opened
source so the session sees that vCPU's registers, as Xen recorded them, with their origin.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import gdb

from ..errors import OptionError
from ..sources.base import PhysSource
from .args import GdbArgumentParser, int_in

__all__ = ["add_host_options", "host_view", "xen_syms_path"]


def add_host_options(p: GdbArgumentParser, domid: bool = True) -> None:
    """Add ``--xen-syms FILE`` and (``domid``) ``--domid N`` to a parser."""
    g = p.add_argument_group("Xen hosts (live under QEMU's gdbstub, a kexec crash vmcore or its "
                             "makedumpfile copy, a QEMU dump of the host)")
    if domid:
        g.add_argument("--domid", metavar="N", type=int_in(0, 0x7FEF),
                       help="walk domain N's vCPU (--vcpu M, default 0) with the page tables and "
                            "CR4 Xen recorded for it, instead of a pCPU's")
    g.add_argument("--xen-syms", metavar="FILE",
                   help="the xen-syms (with DWARF) of that Xen: every domain's vCPU state "
                        "(default: gdb's symbol file if it is one, else a crash dump's "
                        "VMCOREINFO_XEN)")


def xen_syms_path(args: argparse.Namespace) -> Optional[str]:
    """``--xen-syms``, else gdb's loaded symbol file when it defines ``domain_list``."""
    path = getattr(args, "xen_syms", None)
    if path:
        return os.path.expanduser(path)
    prog = gdb.current_progspace().filename if gdb.current_progspace() else None
    if prog and gdb.lookup_global_symbol("domain_list") is not None:
        return prog
    return None


def host_view(args: argparse.Namespace, source: PhysSource) -> PhysSource:
    """``source`` itself, or with ``--domid`` the view of that domain's vCPU (closing the
    source on error).

    :raises OptionError: if the source is no Xen host dump, or the domain/vCPU does not exist.
    """
    domid = getattr(args, "domid", None)
    if domid is None:
        return source
    try:
        syms = xen_syms_path(args)
        if getattr(source, "host", None) is None and syms is None:
            raise OptionError(f"--domid needs the running Xen's xen-syms (--xen-syms FILE, or "
                              f"gdb's symbol file) on {source.name}: it has no Xen crash notes")
        from ..xen_host import DomainVcpuSource, open_host
        with source.hold():  # a live host: one PhyMemMode session for all of Xen's structures
            host = open_host(source, syms)
            dom, vcpu = host.find(domid, getattr(args, "vcpu", None) or 0)
            return DomainVcpuSource(host, dom, vcpu)
    except BaseException:
        source.close()
        raise
