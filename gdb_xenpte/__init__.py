"""gdb_xenpte: walk x86 guest page tables and explain every entry, Xen-aware.

The engine (everything in this package except :mod:`gdb_xenpte.gdbcmd`) imports no ``gdb``: it is
used from plain Python, from the batch scripts and from inside gdb alike.
"""

__version__ = "0.2.0"
