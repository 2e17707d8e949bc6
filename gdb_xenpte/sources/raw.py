"""A raw physical-memory image placed at a base address (``--raw FILE@BASE``).

For anything no other reader understands (a ``pmemsave`` file, a RAM dump from another tool): byte
``i`` of the file is guest-physical address ``BASE + i``. There are no registers in such a file.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for a malformed ``FILE@BASE`` spec;
:class:`~gdb_xenpte.errors.SourceError` if the file cannot be opened;
:class:`~gdb_xenpte.errors.UnreadableMemory` from :meth:`RawSource.read` outside the image.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from ..errors import OptionError
from .base import PhysSource
from .filemap import DumpFile
from .runs import RunMap

__all__ = ["RawSource", "parse_raw_spec"]


def parse_raw_spec(spec: str) -> Tuple[str, int]:
    """Split ``FILE@BASE`` into the path and the base address (bytes; any int literal).

    BASE is required, also when it is 0: a raw image says nothing about where it belongs, and
    guessing 0 walks the wrong memory without a word (one rule for the gdb commands and
    ``xen-pte-dump``). The last ``@`` separates, so paths may contain ``@``.

    :raises OptionError: if BASE is missing, not an integer, negative or not 4 KiB aligned.
    """
    path, sep, base_text = spec.rpartition("@")
    if not sep:
        raise OptionError(f"--raw {spec}: no base address: give FILE@BASE, the guest-physical "
                          f"address of the file's first byte (e.g. {spec}@0x0 for memory from "
                          "address 0)")
    try:
        base = int(base_text, 0)
    except ValueError:
        raise OptionError(f"--raw {spec}: base address {base_text!r} is not a number "
                          "(expected FILE@BASE, e.g. guest.ram@0x0)") from None
    if base < 0 or base % 4096:
        raise OptionError(f"--raw {spec}: base address {base:#x} must be a non-negative multiple "
                          "of 4096")
    if not path:
        raise OptionError(f"--raw {spec}: no file name before '@'")
    return path, base


class RawSource(PhysSource):
    """A flat image of guest-physical memory starting at ``base``.

    :param path: the image; opened read-only (never mapped: see filemap).
    :param base: guest-physical address of the file's first byte.
    """

    format_name = "raw"

    @classmethod
    def probe(cls, head: bytes) -> bool:
        """Raw images have no signature: never chosen automatically."""
        return False

    def __init__(self, path: str, base: int = 0):
        self._file = DumpFile(path)
        self.base = base
        self.name = f"raw image {self._file.name}@{base:#x}"
        self._runs = RunMap(self._file, self._file.name)
        try:
            self._runs.add(base, 0, self._file.size, "raw image")
            self._runs.finish()
        except BaseException:
            self._file.close()
            raise

    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes at ``paddr``.

        :raises UnreadableMemory: for any byte outside ``[base, base + file size)``.
        """
        return self._runs.read(paddr, size)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return self._runs.ranges()

    @property
    def identity(self) -> tuple:
        return ("raw", self.base) + self._file.identity

    def describe(self) -> str:
        return f"{self.name}: {self._file.size:#x} bytes, no registers (give --cr3/--cr4)"

    def close(self) -> None:
        self._file.close()
