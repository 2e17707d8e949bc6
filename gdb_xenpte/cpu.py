"""The CPU state a walk is evaluated under, and the paging mode it selects.

Failure modes: :func:`paging_mode` raises :class:`~gdb_xenpte.errors.OptionError` when paging is
off or the register combination selects no paging mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

from .arch import CR0, CR4, EFER, MODES, PagingMode
from .errors import OptionError

__all__ = ["CpuState", "ModeChoice", "paging_mode"]


@dataclass(frozen=True)
class CpuState:
    """Registers and CPU properties that decide how a guest's tables are walked and judged.

    ``None`` means unknown: the engine then infers (EFER) or reports both outcomes (AC, PKRU, PKRS).

    :param cr3: raw CR3 (PCID/PWT/PCD/LAM bits are stripped by the walker, not here).
    :param cr4: the CR4 the *hardware* runs the guest with (for Xen PV: the effective CR4 from
        :mod:`gdb_xenpte.xen`, not the guest-visible one).
    :param maxphyaddr: CPUID.80000008H:EAX[7:0]; bits from it up to 51 are reserved in entries.
    :param pat: IA32_PAT; ``None`` means the power-on default.
    :param ac: EFLAGS.AC for explicit supervisor accesses (SMAP); ``None`` gives both verdicts.
    :param long_mode: a hint when EFER is unknown (e.g. QEMU's CS.L); ``None`` if not known.
    :param vendor: ``"intel"`` or ``"amd"`` (AMD reserves bits that Intel ignores in PML4Es).
    """

    cr0: int = CR0.PG | CR0.PE | CR0.WP
    cr3: int = 0
    cr4: int = 0
    efer: Optional[int] = None
    pkru: Optional[int] = None
    pkrs: Optional[int] = None
    ac: Optional[int] = None
    maxphyaddr: int = 52
    pat: Optional[int] = None
    long_mode: Optional[bool] = None
    vendor: str = "intel"

    def with_(self, **changes) -> "CpuState":
        """Return a copy with some fields changed."""
        return replace(self, **changes)

    @property
    def wp(self) -> bool:
        return bool(self.cr0 & CR0.WP)

    def has(self, cr4_bit: int) -> bool:
        return bool(self.cr4 & cr4_bit)


@dataclass(frozen=True)
class ModeChoice:
    """The paging mode chosen from the registers, and how it was chosen.

    :param nxe: EFER.NXE as used by the walk (inferred when EFER is unknown).
    :param notes: human-readable lines on any inference made.
    """

    mode: PagingMode
    nxe: bool
    notes: Tuple[str, ...] = ()


def paging_mode(cpu: CpuState) -> ModeChoice:
    """Choose the paging mode from CR0.PG, CR4.PAE/LA57 and EFER.LMA (SDM Vol. 3A §4.1.1).

    EFER.LMA (not LME) says whether IA-32e paging is active. When EFER is unknown, long mode is
    taken from ``cpu.long_mode`` or, failing that, from CR4.PAE (a guest with PAE on is taken as
    64-bit), and NXE is assumed set in long mode; the notes say so.

    :raises OptionError: if CR0.PG is clear.
    """
    if not cpu.cr0 & CR0.PG:
        raise OptionError(f"paging is disabled (CR0={cpu.cr0:#x}, PG clear): nothing to walk")
    notes = []
    pae = bool(cpu.cr4 & CR4.PAE)
    if cpu.efer is not None:
        lma = bool(cpu.efer & EFER.LMA)
        nxe = bool(cpu.efer & EFER.NXE)
    else:
        if cpu.long_mode is not None:
            lma = cpu.long_mode and pae
            why = "from the code-segment L flag"
        else:
            lma = pae
            why = "from CR4.PAE (no other hint)"
        nxe = lma or pae
        notes.append(f"EFER unknown: long mode {'on' if lma else 'off'} inferred {why}; "
                     f"NXE assumed {'1' if nxe else '0'}")
    if lma and not pae:
        raise OptionError(f"EFER.LMA=1 with CR4.PAE=0 (CR4={cpu.cr4:#x}) selects no paging mode")
    if lma:
        mode = MODES["5level" if cpu.cr4 & CR4.LA57 else "4level"]
    elif pae:
        mode = MODES["pae"]
    else:
        mode = MODES["32bit"]
        nxe = False  # no XD bit in 32-bit paging entries (SDM Table 4-4..4-6)
    return ModeChoice(mode, nxe, tuple(notes))
