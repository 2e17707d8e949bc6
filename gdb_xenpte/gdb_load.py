"""Load gdb_xenpte into gdb, or print the gdb line that does.

In gdb: ``source /path/to/site-packages/gdb_xenpte/gdb_load.py``. gdb embeds its own Python (on
Debian /usr/bin/python3), which need not be the Python that ``pip install`` used, so this file
puts the directory it was installed into (and, for a venv made with ``--system-site-packages``,
the base interpreter's site-packages) on gdb's ``sys.path``, then registers the commands.

As the console script ``xen-pte-gdbinit``: print that ``source`` line, e.g.
``xen-pte-gdbinit >> ~/.gdbinit``; with ``--sample``, the path of the bundled sample dump.

Failure modes: in gdb, a missing dependency (tabulate) stops loading with one error line naming
the directory searched; nothing is registered then.
"""

import os
import sys

__all__ = ["gdbinit_line", "main"]

HERE = os.path.dirname(os.path.abspath(__file__))
SITE = os.path.dirname(HERE)  # the site-packages (or source tree) holding the package


def gdbinit_line() -> str:
    """The gdb command that loads the extension from where this file is installed."""
    return f"source {os.path.join(HERE, 'gdb_load.py')}"


SAMPLE = os.path.join(HERE, "data", "sample-xen-dom0.elf")


def main(argv=None) -> int:
    """Console script: print the line to add to ~/.gdbinit (or give to gdb with -ix/-ex).

    ``--sample`` prints the path of the bundled sample dump instead (a trimmed QEMU ELF dump of
    Xen 4.17 running a 64-bit PV dom0).
    """
    import argparse
    ap = argparse.ArgumentParser(prog="xen-pte-gdbinit", description=main.__doc__.splitlines()[0])
    ap.add_argument("--sample", action="store_true",
                    help="print the path of the bundled sample dump (Xen 4.17 + PV dom0)")
    args = ap.parse_args(argv)
    print(SAMPLE if args.sample else gdbinit_line())
    return 0


def _base_site_dirs(site: str):
    """site-packages of a venv's base interpreter when the venv includes system packages."""
    # site is <venv>/lib/pythonX.Y/site-packages
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(site)))
    cfg = os.path.join(prefix, "pyvenv.cfg")
    try:
        with open(cfg) as f:
            conf = dict(line.split("=", 1) for line in f if "=" in line)
    except OSError:
        return []
    conf = {k.strip(): v.strip() for k, v in conf.items()}
    if conf.get("include-system-site-packages", "").lower() != "true" or "home" not in conf:
        return []
    base = os.path.dirname(conf["home"])  # home = <base prefix>/bin
    pyver = os.path.basename(os.path.dirname(site))
    return [os.path.join(base, "lib", pyver, "site-packages")]


def _load() -> None:
    import gdb  # only inside gdb
    for path in reversed([SITE] + _base_site_dirs(SITE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        import tabulate  # noqa: F401  (the one dependency the glue needs)
    except ImportError:
        # gdb prints a traceback for any exception escaping a sourced file: write one line.
        gdb.write(f"gdb_xenpte: 'tabulate' is not importable by gdb's Python "
                  f"{sys.version.split()[0]} (searched {SITE}); install gdb_xenpte with its "
                  f"dependencies into one environment; no commands loaded\n", gdb.STDERR)
        return
    from gdb_xenpte.gdbcmd import register
    register()


if __name__ == "__main__":
    if "gdb" in sys.modules:  # sourced by gdb, which has imported its own module already
        _load()
    else:
        sys.exit(main())
