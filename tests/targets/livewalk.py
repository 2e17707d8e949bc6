"""Run our ``xen-pte-walk`` inside a real gdb attached to a QEMU guest, and read back its output.

gdb embeds its own Python, which need not see this interpreter's packages: the working tree and
the folder holding ``tabulate`` (numpy and pyelftools sit next to it) go first on gdb's
``sys.path``, then ``gdb_xenpte/gdb_load.py`` is sourced as a user would. A walk's JSON Lines output is
written to a file by gdb's Python itself (tens of MB for a whole address space: far too much to
ship through MI console records).

Typical use, with the guest stopped for the whole block::

    with GdbMi(vm.gdb_port, timeout=600) as gdb:
        load_extension(gdb)
        seconds = run_to_file(gdb, "xen-pte-walk --no-coalesce --json", workdir / "live.jsonl")
        tlb_text = vm.monitor("info tlb")          # QEMU's own walk of the same CR3

Failure modes: :class:`~tests.targets.gdb.GdbError` when loading fails or the command raises
(its message is gdb's), or gdb does not answer within the timeout.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import tabulate

from .gdb import GdbMi
from .tlb import Leaf, leaf_from_record

__all__ = ["REPO", "WalkOutput", "compare_walks", "load_extension", "read_walk", "run_to_file"]

REPO = Path(__file__).resolve().parents[2]
LOADER = REPO / "gdb_xenpte" / "gdb_load.py"
# The site-packages folder of the interpreter running the tests (tabulate, numpy, pyelftools).
DEPS = Path(tabulate.__file__).resolve().parent.parent
# Mapping-record fields that must not depend on where the tables were read from.
SOURCE_INDEPENDENT = ("kind", "va", "pa", "size", "page_size", "level", "count", "entries",
                      "flags", "effective", "pkey", "xen_bits", "rsvd", "memtype", "verdicts")


def load_extension(gdb: GdbMi) -> None:
    """Make gdb_xenpte importable in gdb's Python and register its commands.

    :param gdb: an attached :class:`~tests.targets.gdb.GdbMi` session.
    :raises GdbError: if gdb cannot load the extension (its message says why).
    """
    paths = [str(REPO), str(DEPS)]
    gdb.cli(f"python import sys; sys.path[:0] = [p for p in {paths!r} if p not in sys.path]")
    gdb.cli(f"source {LOADER}")


def run_to_file(gdb: GdbMi, command: str, path: Path, timeout: float = 900.0) -> float:
    """Run one gdb command, writing what it prints to ``path``.

    :param command: a gdb command line, e.g. ``"xen-pte-walk --no-coalesce --json"``.
    :param timeout: seconds to wait for it.
    :returns: the seconds it took.
    :raises GdbError: with gdb's message if the command fails.
    """
    start = time.monotonic()
    # to_string keeps the output out of the MI stream; gdb's Python writes it to the file.
    gdb.cli(f"python open({str(path)!r}, 'w').write(gdb.execute({command!r}, to_string=True))",
            timeout=timeout)
    return time.monotonic() - start


@dataclass
class WalkOutput:
    """A walk's JSON Lines output: header and summary parsed, mapping records kept as text.

    :param mappings: the ``mapping`` lines in walk (VA) order, unparsed: comparing two walks line
        by line is exact and ten times faster than parsing both.
    """

    header: dict
    summary: dict
    mappings: List[str]

    def leaves(self) -> Dict[int, Leaf]:
        """Return QEMU's view (:mod:`tests.targets.tlb`) of every page record, keyed by VA.

        :raises ValueError: if a VA repeats.
        """
        leaves: Dict[int, Leaf] = {}
        for line in self.mappings:
            rec = json.loads(line)
            if rec.get("kind", "page") != "page":
                continue
            leaf = leaf_from_record(rec)
            if leaf.va in leaves:
                raise ValueError(f"walk printed VA {leaf.va:#x} twice")
            leaves[leaf.va] = leaf
        return leaves

    def stops(self) -> List[dict]:
        """Return the records that are not pages (walk stopped at a reserved bit, unreadable)."""
        return [rec for rec in map(json.loads, self.mappings) if rec.get("kind", "page") != "page"]


def read_walk(path: Path, remove: bool = True) -> WalkOutput:
    """Read ``xen-pte-walk --json`` output from ``path`` (then delete it unless ``remove`` False).

    :raises ValueError: if the header or summary record is missing.
    """
    header = summary = None
    mappings: List[str] = []
    with open(path) as lines:
        for line in lines:
            if line.startswith('{"type":"mapping"'):
                mappings.append(line.rstrip("\n"))
            elif line.strip():
                rec = json.loads(line)
                if rec.get("type") == "header":
                    header = rec
                elif rec.get("type") == "summary":
                    summary = rec
                elif rec.get("type") == "mapping":  # a renderer that orders keys differently
                    mappings.append(json.dumps(rec, separators=(",", ":")))
    if header is None or summary is None:
        raise ValueError(f"{path}: not xen-pte-walk --json output (header or summary missing)")
    if remove:
        Path(path).unlink()
    return WalkOutput(header, summary, mappings)


def _comparable(line: str) -> dict:
    rec = json.loads(line)
    return {key: rec.get(key) for key in SOURCE_INDEPENDENT}


def compare_walks(reference: WalkOutput, other: WalkOutput) -> Tuple[int, List[str]]:
    """Compare two walks record by record (in VA order), on the source-independent fields.

    :returns: ``(records equal, descriptions of the first few differences)``.
    """
    equal, problems = 0, []
    for index, (ref, oth) in enumerate(zip(reference.mappings, other.mappings)):
        if ref == oth or _comparable(ref) == _comparable(oth):
            equal += 1
        elif len(problems) < 5:
            problems.append(f"record {index}:\n  reference {_comparable(ref)}\n"
                            f"  other     {_comparable(oth)}")
    if len(reference.mappings) != len(other.mappings):
        problems.insert(0, f"{len(reference.mappings)} records vs {len(other.mappings)}")
    return equal, problems
