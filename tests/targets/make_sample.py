"""Regenerate the bundled README sample: a trimmed QEMU ELF dump of Xen 4.17 with a PV dom0.

Boots Xen + dom0 (:mod:`tests.targets.xen`) with about the least memory that boots here (384 MiB
machine, 192 MiB dom0: with 320/160 Xen finds too little RAM for dom0, with 256/128 dom0's
allocation is too small for the kernel image), stops it under gdb with dom0's kernel L4 in CR3 (in
Xen's idle loop or in dom0's kernel: Xen switches to idle lazily), takes ``dump-guest-memory``
(ELF, no ``-p``), and trims it with :mod:`tests.targets.trim_dump` to the notes plus every page
table reachable from CR3 (Xen's own L4 slots included). Before writing the sample, it checks that
a walk of the trimmed file equals a walk of the full dump, mapping for mapping.

Usage (from the repository root): ``python3 tests/targets/make_sample.py [OUTPUT]``
(default OUTPUT: ``gdb_xenpte/data/sample-xen-dom0.elf``). Takes ~30 s here.

Failure modes: those of :func:`tests.targets.xen.boot_xen`; :class:`RuntimeError` if no stop
shows a dom0 kernel L4 or the trimmed walk differs from the full one.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for _path in (TESTS.parent, TESTS):  # run as a script: the repository and tests/ importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gdb_xenpte.session import Options, prepare  # noqa: E402
from gdb_xenpte.sources.qemu_elf import QemuElfSource  # noqa: E402
from targets.gdb import GdbMi  # noqa: E402
from targets.trim_dump import trim_qemu_elf  # noqa: E402
from targets.xen import boot_xen  # noqa: E402

__all__ = ["DEFAULT_OUTPUT", "make_sample", "walk_signature"]

DEFAULT_OUTPUT = TESTS.parent / "gdb_xenpte" / "data" / "sample-xen-dom0.elf"
MEMORY, DOM0_MEM = "384M", "192M"
KERNEL_TEXT_SLOT = 511  # Linux's kernel image (0xffffffff80000000): present only in kernel L4s
PV64 = Options(domain="pv64", xen="4.17")


def walk_signature(path: Path) -> list:
    """Return every mapping of a walk of dump ``path`` as dom0 (pv64, Xen 4.17), as tuples."""
    with QemuElfSource(str(path)) as source:
        walker = prepare(source, PV64).walker()
        return [(m.va, m.pa, m.page_size, m.count, tuple(e.raw for e in m.entries),
                 tuple(sorted(m.flags)), m.xen_bits, m.notes)
                for m in walker.iter_mappings(coalesce=True)]


def make_sample(output: Path = DEFAULT_OUTPUT) -> dict:
    """Boot, dump, trim and verify; write the sample to ``output``.

    :returns: figures (boot seconds, full and trimmed sizes, tables kept, mappings).
    :raises RuntimeError: if dom0's kernel L4 is never in CR3 or the trimmed walk differs.
    """
    with tempfile.TemporaryDirectory(prefix="xpt-sample-") as tmp:
        work = Path(tmp)
        full = work / "full.elf"
        with boot_xen(work / "boot", memory=MEMORY, dom0_mem=DOM0_MEM) as guest:
            vm = guest.vm
            time.sleep(1.0)
            for _attempt in range(20):
                with GdbMi(vm.gdb_port) as gdb:
                    cr3 = gdb.evaluate("$cr3")
                    slot = vm.pmemsave((cr3 & ~0xFFF) + 8 * KERNEL_TEXT_SLOT, 8)
                    if struct.unpack("<Q", slot)[0] & 1:
                        vm.monitor(f"dump-guest-memory {full}", timeout=300)
                        break
                time.sleep(0.3)
            else:
                raise RuntimeError("CPU 0 never stopped with dom0's kernel L4 in CR3")
        figures = trim_qemu_elf(full, work / "trimmed.elf")
        full_walk, trimmed_walk = walk_signature(full), walk_signature(work / "trimmed.elf")
        if full_walk != trimmed_walk:
            raise RuntimeError(f"trimmed walk differs from the full dump's: {len(full_walk)} vs "
                               f"{len(trimmed_walk)} mappings")
        figures.update(boot_seconds=round(guest.boot_seconds, 1), full_bytes=full.stat().st_size,
                       mappings=len(full_walk))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes((work / "trimmed.elf").read_bytes())
    return figures


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT
    print(f"{target}: {make_sample(target)}")
