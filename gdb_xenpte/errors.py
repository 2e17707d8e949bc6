"""The one error family of gdb_xenpte.

Every problem caused by input (a corrupt dump, a hostile page table, unreadable memory, a bad option)
is raised as a :class:`XenpteError` subclass whose message is one clear line naming *what* and
*where*. The gdb glue turns these into ``gdb.GdbError``; anything else is a bug and keeps its
traceback.
"""

__all__ = [
    "DumpFormatError",
    "OptionError",
    "SourceError",
    "SourceGone",
    "UnreadableMemory",
    "XenpteError",
]


class XenpteError(Exception):
    """A user-facing problem with the input; ``str(err)`` is the whole message."""


class OptionError(XenpteError):
    """A bad command option or parameter value."""


class SourceError(XenpteError):
    """A memory source cannot be opened or used.

    :param what: the file or target, e.g. ``"dump.elf"``.
    :param detail: what was wrong, including the offset or address where it applies.
    """

    def __init__(self, what: str, detail: str):
        self.what = what
        self.detail = detail
        super().__init__(f"{what}: {detail}")


class SourceGone(SourceError):
    """The whole source went away (a live target exited): no later read can succeed, so a walk
    stops here rather than listing every remaining table as unreadable."""


class DumpFormatError(SourceError):
    """A dump file is truncated, has a wrong magic, or holds inconsistent offsets."""


class UnreadableMemory(SourceError):
    """A physical range cannot be read from a source (outside RAM, not in the dump, I/O error).

    :param paddr: the first unreadable physical address (bytes).
    """

    def __init__(self, what: str, paddr: int, detail: str = "not readable"):
        self.paddr = paddr
        super().__init__(what, f"{detail} at physical address {paddr:#x}")
