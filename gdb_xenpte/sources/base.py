"""The small interface every memory source implements.

A source gives the walker physical reads and the vCPU registers a walk needs. Dumps of PV guests
hold machine frames (MFNs) in their page tables; such a source also offers a frame translator
(MFN -> PFN) that the walker applies to every frame it follows.

Failure modes, once for all sources: opening raises :class:`~gdb_xenpte.errors.DumpFormatError`
(bad or truncated file) or :class:`~gdb_xenpte.errors.SourceError`; :meth:`PhysSource.read` raises
:class:`~gdb_xenpte.errors.UnreadableMemory` for any byte it cannot provide. Sources never write to
the target or the file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from .filemap import DumpFile

__all__ = ["FileSource", "NoMemory", "PhysSource", "VcpuRegs"]


@dataclass(frozen=True)
class VcpuRegs:
    """Registers of one vCPU as a source knows them; ``None`` means unknown.

    :param index: vCPU number within the source.
    :param cr3: for PV dumps the *machine* address (MFN << 12) of the top-level table, already
        decoded from Xen's CR3 encoding; otherwise the raw CR3.
    :param cr4: the CR4 the source reports. For Xen PV dumps this is the *guest-visible* CR4
        (``ctrlreg[4]``), not the hardware value: see ``cr4_is_guest_view``.
    :param long_mode: True/False when the source can tell (e.g. QEMU's CS.L flag), else None.
    """

    index: int
    cr0: Optional[int] = None
    cr2: Optional[int] = None
    cr3: Optional[int] = None
    cr4: Optional[int] = None
    efer: Optional[int] = None
    pkru: Optional[int] = None
    pkrs: Optional[int] = None
    rflags: Optional[int] = None
    rip: Optional[int] = None
    cs: Optional[int] = None
    long_mode: Optional[bool] = None
    online: bool = True
    cr4_is_guest_view: bool = False
    user_cr3: Optional[int] = None  # PV64 ctrlreg[1]: the guest's user page table (machine addr)
    notes: Tuple[str, ...] = ()  # e.g. ("EFER not in dump: inferred",)
    # Where these values were read, for headers that say where every value came from, e.g.
    # "vCPU 0 of QEMU ELF dump guest.elf (QEMU CPU note)", "pCPU 1 (Xen crash note)".
    origin: str = ""
    # Xen's own CR4 (mmu_cr4_features) when the source observed it (a Xen host dump read with
    # xen-syms): a PV vCPU's hardware CR4 is derived from it rather than from defaults.
    xen_cr4: Optional[int] = None


class PhysSource:
    """Base class of memory sources. Subclasses fill in the attributes and override ``read``.

    Attributes:
        name: short description shown in headers, e.g. ``"QEMU ELF dump guest.elf"``.
        domain: ``"hvm"``, ``"pv64"``, ``"pv32"`` when the source can tell, else ``None``.
        xen_version: ``(major, minor)`` when the source carries it (xl dump-core), else ``None``.
        translate_frame: ``None`` when page-table frames are this source's physical frames;
            otherwise a function MFN -> PFN returning ``None`` for a frame not in the source.
        identity: for a source that cannot change (a dump file), a value equal for every
            opening of the same bytes read the same way; ``None`` for one that can (live).
    """

    name: str = "memory"
    domain: Optional[str] = None
    xen_version: Optional[Tuple[int, int]] = None
    translate_frame: Optional[Callable[[int], Optional[int]]] = None
    identity: Optional[tuple] = None

    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes at physical address ``paddr`` (bytes, PFN space for PV dumps).

        :raises UnreadableMemory: if any byte is outside what the source holds.
        """
        raise NotImplementedError

    def ranges(self) -> Sequence[Tuple[int, int]]:
        """Return the readable physical ranges as sorted ``(start, end)`` pairs, end exclusive."""
        raise NotImplementedError

    def vcpus(self) -> List[VcpuRegs]:
        """Return the vCPUs whose registers the source knows (possibly empty)."""
        return []

    def describe(self) -> str:
        """Return one line saying what this source is and how it reads memory."""
        return self.name

    def close(self) -> None:
        """Release files and restore any target state the source changed."""

    def hold(self):
        """A context manager keeping per-read target state (a live gdbstub's PhyMemMode) on
        across many reads without closing the source; a no-op for files."""
        return contextlib.nullcontext(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class FileSource(PhysSource):
    """A source read from one dump file, opened read-only; subclasses parse it in ``_open``.

    The file is closed again if parsing fails, so a bad dump never leaks its mapping.

    :param path: the dump file.
    :raises DumpFormatError: from ``_open`` for a file of the wrong format.
    """

    def __init__(self, path: str):
        self._file = DumpFile(path)
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        raise NotImplementedError

    @property
    def identity(self) -> tuple:
        return (type(self).__name__,) + self._file.identity

    def close(self) -> None:
        self._file.close()



class NoMemory(PhysSource):
    """A source with no memory and no registers: for questions that need only options
    (``xen-cr4 VALUE``, ``xen-pte-decode``), so they go through the same derivation as walks."""

    name = "no target (options only)"

    def read(self, paddr: int, size: int) -> bytes:
        from ..errors import UnreadableMemory
        raise UnreadableMemory(self.name, paddr, "no memory (only options were given)")

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return ()
