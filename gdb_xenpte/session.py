"""From a source and the user's options to everything a walk needs: one place for every front end.

:func:`prepare` picks the vCPU (:func:`~gdb_xenpte.sources.open.pick_vcpu`), asks :func:`gdb_xenpte.domain_cpu.derive` for
the CPU state the domain's kernel runs with (observed values over assumed ones, each with its
origin), and returns a :class:`Session` that makes walkers and describes itself (the JSON header,
the ``xen-cr4`` explanation). The gdb commands, the batch tool and the what-if comparison all use
it; none derives CPU state itself.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for a missing CR3, an unknown vCPU, a bad
Xen version or option value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from . import __version__, xen
from .arch import CR4, MODES
from .cpu import CpuState, paging_mode
from .domain_cpu import NEWEST_XEN, DomainCpu, Options, derive
from .errors import OptionError
from .sources.base import PhysSource, VcpuRegs
from .sources.open import pick_vcpu
from .verdicts import Judge
from .render.jsonl import SCHEMA_VERSION
from .replay import SubtreeMemo
from .walk import Walker
from .xenview import XenView

__all__ = ["NEWEST_XEN", "Options", "Session", "prepare"]


@dataclass
class Session:
    """Inputs of one walk, and how they were derived.

    :param state: the CPU state the domain's kernel runs with (:class:`DomainCpu`), every value
        with its origin; ``state.cpu.cr4`` is the effective CR4.
    :param judge: verdicts under that state.
    :param xen_view: Xen's view of the domain's entries, or None when no Xen policy applies.
    """

    source: PhysSource
    regs: VcpuRegs
    state: DomainCpu
    judge: Judge
    xen_view: Optional[XenView]
    memo: Optional[SubtreeMemo] = None  # subtrees earlier walks of this (unchanging) source saw

    # The walk's inputs under their short names (walkers, what-if and tests read these).
    @property
    def cpu(self) -> CpuState:
        return self.state.cpu

    @property
    def effective_cr4(self) -> int:
        return self.state.cpu.cr4

    @property
    def domain(self) -> str:
        return self.state.domain

    @property
    def policy(self) -> Optional[xen.XenPolicy]:
        return self.state.policy

    @property
    def mode(self) -> Optional[str]:
        return self.state.mode

    @property
    def notes(self) -> List[str]:
        return self.state.notes

    @property
    def kernel_notes(self) -> List[str]:
        """One line per protection a text header must show: those imposed on the kernel, and
        (PV) those set in CR4 that cannot bind it. A guest's own choices go without saying."""
        return [f"{name.upper()}: {p.why}" for name, p in self.state.protections.items()
                if p.applies and p.chooser != "guest"
                or not p.applies and self.state.policy is not None
                and self.state.cpu.cr4 & getattr(CR4, name.upper())]

    def walker(self, **kw) -> Walker:
        """A :class:`~gdb_xenpte.walk.Walker` for this session (``kw``: budgets, root)."""
        kw.setdefault("memo", self.memo)
        return Walker(self.source, self.cpu, mode=self.mode, xen_view=self.xen_view,
                      judge=self.judge, **kw)

    def header(self) -> Dict[str, object]:
        """The JSON header record's fields (addresses as hex strings)."""
        st = self.state
        choice = paging_mode(st.cpu)
        mode = MODES[st.mode].name if st.mode else choice.mode.name  # "4-level", as the SDM
        hx = lambda v: None if v is None else f"{v:#x}"
        return {
            "type": "header", "tool": f"gdb_xenpte {__version__}", "schema": SCHEMA_VERSION,
            "source": self.source.describe(),
            "vcpu": self.regs.index if self.regs.index >= 0 else None,
            "cr0": hx(st.cpu.cr0), "cr3": hx(st.cpu.cr3),
            "cr4": hx(st.cr4_read if st.cr4_read is not None else st.cpu.cr4),
            "efer": hx(st.cpu.efer), "effective_cr4": hx(st.cpu.cr4),
            "pkru": hx(st.cpu.pkru), "pkrs": hx(st.cpu.pkrs), "ac": st.cpu.ac,
            "mode": mode, "domain": st.domain, "kernel_cpl": st.kernel_cpl,
            "xen": None if st.policy is None else {
                "version": ".".join(map(str, st.policy.version[:2])),
                "debug": st.policy.debug},
            "protections": {name: {"applies": p.applies, "chooser": p.chooser}
                            for name, p in st.protections.items()},
            "provenance": st.provenance(),
            "notes": list(st.notes) + self.kernel_notes + list(choice.notes),
        }



def prepare(source: PhysSource, opts: Options = Options()) -> Session:
    """Combine options and the source's registers into a :class:`Session`.

    :raises OptionError: if no CR3 is known or an option value is inconsistent.
    """
    regs = pick_vcpu(source, opts.vcpu)
    state = derive(source, regs, opts)
    if "cr3" not in state.origins:
        raise OptionError(f"{source.name} gives no CR3: give --cr3 VALUE")
    cpu = state.cpu
    judge = Judge(cpu.cr0, cpu.cr4, state.kernel_cpl, cpu.ac, cpu.pkru, cpu.pkrs,
                  state.imposed_cr4)
    view = None
    if state.policy is not None:
        view = XenView(state.policy, root_is_xen_l4=state.mode != "pv32")
    return Session(source, regs, state, judge, view)
