"""xen-pte-diff: what changed between two walks — the before/after view of an upgrade.

Reads two JSON Lines files written by ``xen-pte-dump`` or ``xen-pte-walk --json`` and compares
their mappings VA by VA: ranges only in B were **added**, only in A **removed**, and ranges in
both whose effective rights, verdicts, fault class, protection key or Xen bits differ **changed**
(physical addresses are expected to differ between dumps and are not compared unless ``--pa``).
Coalesced ranges need not line up: the comparison splits them where either side changes, and
merges neighbouring differences that are alike again.

Streams are paired by (target, vCPU); when each file holds exactly one stream, those two are
compared whatever their names. Output: JSON Lines ``{"type": "added"|"removed"|"changed", "va",
"size", "before", "after", "what"}`` records and a closing ``summary``, or ``--table``.

Memory stays flat: each stream is read in VA order straight from the file (a first pass notes
where each stream's lines are), so only the current range of each side is held.

A stream that xen-pte-dump could not read (an ``error`` record) is reported as ``not-compared``
rather than as everything added or removed.

The output (``-o``) is written through a temporary file and renamed at the end; it may not be
one of the inputs.

Exit status: 0 no differences, 1 differences, 2 bad usage, unreadable input (one line naming
the file and line) or a stream not compared.
"""

from __future__ import annotations

import heapq
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union

from tabulate import tabulate

from .cli import EXIT_USAGE as EXIT_TROUBLE, ArgumentParser, UsageError, run_main
from .output import AtomicFile, refuse_inputs
from .records import ACCESS_KEYS, RecordError, dumps, parse_line

__all__ = ["Range", "diff_streams", "main", "stream_index"]

PROG = "xen-pte-diff"
StreamKey = Tuple[Optional[str], Optional[int]]


@dataclass(frozen=True)
class Range:
    """One side's mapping over [start, end): ``state`` is what is compared, ``pa`` for display."""

    start: int
    end: int
    state: tuple
    pa: Optional[int]


def _state(rec: dict, with_pa: bool) -> tuple:
    eff = rec.get("effective", {})
    rights = (f"R{'W' if eff.get('write') else '-'}{'X' if eff.get('exec') else '-'} "
              f"{'U' if eff.get('user') else 'S'}")
    verdicts = rec.get("verdicts", {})
    state = (rights, rec.get("pkey"), tuple(rec.get("xen_bits", ())),
             tuple(verdicts.get(k) for k in ACCESS_KEYS), rec.get("kind", "page"),
             rec.get("page_size"), rec.get("fault_class"))
    return state + ((rec.get("pa"),) if with_pa else ())


def _as_dict(state: Optional[tuple]) -> Optional[dict]:
    if state is None:
        return None
    out = {"rights": state[0], "pkey": state[1], "xen_bits": list(state[2]),
           "verdicts": {k: v for k, v in zip(ACCESS_KEYS, state[3]) if v is not None},
           "kind": state[4], "page_size": state[5]}
    if state[6] is not None:  # records from before fault_class have none
        out["fault_class"] = state[6]
    if len(state) > 7:
        out["pa"] = state[7]
    return out


def stream_index(path: str) -> Dict[StreamKey, Union[List[Tuple[int, int]], str]]:
    """First pass: for each (target, vCPU), the (first, last) line numbers of its header and
    mappings (a walk that matched nothing is a stream too: everything else was removed), or the
    message of the error record xen-pte-dump wrote instead.

    :raises UsageError: for an unreadable file, or one that holds no walk (check output, or no
        header and no mappings); :class:`RecordError` for a line that is not a JSON object.
    """
    spans: Dict[StreamKey, Union[List[Tuple[int, int]], str]] = {}
    try:
        with open(path, "rb") as fh:
            for number, line in _text_lines(fh, path):
                if not line.strip():
                    continue
                rec = parse_line(line, path, number)
                if rec.get("type") in ("anomaly", "what-if", "change"):
                    raise UsageError(f"{path}:{number}: {rec['type']!r} record: this is "
                                     "xen-pte-check output, not a walk")
                key = (rec.get("target"), rec.get("vcpu"))
                if rec.get("type") == "error":
                    spans[key] = str(rec.get("message"))
                if rec.get("type") not in ("header", "mapping"):
                    continue
                runs = spans.setdefault(key, [])
                if runs and runs[-1][1] == number - 1:
                    runs[-1] = (runs[-1][0], number)
                else:
                    runs.append((number, number))
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror or err}") from None
    return spans


# No record of a walk comes near this; a binary file without newlines is refused past it.
MAX_LINE = 64 << 20


def _text_lines(fh, path: str) -> Iterator[Tuple[int, str]]:
    """``(number, text)`` per line of a file opened in binary mode.

    :raises RecordError: for a line that is not UTF-8 (a binary file: naming file and line), or
        longer than :data:`MAX_LINE` (memory stays bounded whatever the file holds).
    """
    number = 0
    while True:
        raw = fh.readline(MAX_LINE + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE:
            raise RecordError(f"{path}:{number}: a line longer than {MAX_LINE >> 20} MiB: "
                              "not a JSON Lines walk")
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordError(f"{path}:{number}: not UTF-8 text (byte {err.start} of the line "
                              "is 0x%02x): not a JSON Lines walk" % raw[err.start]) from None


def _ranges(path: str, key: StreamKey, span: Tuple[int, int], with_pa: bool) -> Iterator[Range]:
    """The mappings of one stream (lines ``span`` of the file), in VA order.

    A record with ``repeat`` ({count, stride}) stands for ``count`` copies at ``va + k*stride``
    (same PA and attributes); the copies are yielded where they fall among the other records,
    from a heap holding one pending copy per repeat record (memory: the repeat records alive).

    :raises UsageError: if the records are not in ascending VA order, or two ranges overlap.
    """
    heap: List[tuple] = []  # (start, line, size, state, pa, copies left, stride)
    last_end, last_line, last_start, start_line = -1, 0, -1, 0
    first, last = span

    def emit(upto: Optional[int]) -> Iterator[Range]:
        nonlocal last_end, last_line
        while heap and (upto is None or heap[0][0] < upto):
            begin, line, size, state, pa, left, stride = heapq.heappop(heap)
            if begin < last_end:
                raise UsageError(f"{path}:{line}: mappings overlap (a range at {begin:#x}, "
                                 f"line {last_line}'s ended {last_end:#x})")
            last_end, last_line = begin + size, line
            if left > 1:
                heapq.heappush(heap, (begin + stride, line, size, state, pa, left - 1, stride))
            yield Range(begin, begin + size, state, pa)

    with open(path, "rb") as fh:
        for number, line in _text_lines(fh, path):
            if number < first:
                continue
            if number > last:
                break
            rec = parse_line(line, path, number)
            if rec.get("type") != "mapping" or (rec.get("target"), rec.get("vcpu")) != key:
                continue
            try:
                begin = int(rec["va"], 16)
                size = int(rec["size"])
                pa = None if rec.get("pa") is None else int(rec["pa"], 16)
                repeat = rec.get("repeat") or {}
                copies, stride = int(repeat.get("count", 1)), int(repeat.get("stride", 0))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise UsageError(f"{path}:{number}: mapping without a valid va/size/repeat") \
                    from None
            if size <= 0 or copies < 1 or (copies > 1 and stride < size):
                raise UsageError(f"{path}:{number}: mapping with an impossible size or repeat")
            if begin < last_start:
                raise UsageError(f"{path}:{number}: mappings out of VA order (this one starts "
                                 f"{begin:#x}, before line {start_line}'s {last_start:#x})")
            last_start, start_line = begin, number
            yield from emit(begin)
            heapq.heappush(heap, (begin, number, size, _state(rec, with_pa), pa, copies, stride))
    yield from emit(None)


def _segments(a: Iterator[Range], b: Iterator[Range]):
    """Sweep both sides: yield (start, end, range of A or None, range of B or None) pieces."""
    ra, rb = next(a, None), next(b, None)
    pos = 0
    while ra is not None or rb is not None:
        pos = max(pos, min(r.start for r in (ra, rb) if r is not None))
        in_a = ra if ra is not None and ra.start <= pos < ra.end else None
        in_b = rb if rb is not None and rb.start <= pos < rb.end else None
        end = min((r.start if r.start > pos else r.end) for r in (ra, rb) if r is not None)
        yield pos, end, in_a, in_b
        pos = end
        if ra is not None and ra.end <= pos:
            ra = next(a, None)
        if rb is not None and rb.end <= pos:
            rb = next(b, None)


def _what(before: Optional[tuple], after: Optional[tuple]) -> List[str]:
    if before is None:
        return ["added"]
    if after is None:
        return ["removed"]
    out = []
    names = ("rights", "pkey", "Xen bits", None, "kind", "page size", "fault class", "PA")
    for i, name in enumerate(names[:len(before)]):
        if name and before[i] != after[i]:
            out.append(f"{name} {before[i]} -> {after[i]}")
    for k, bv, av in zip(ACCESS_KEYS, before[3], after[3]):
        if bv != av:
            out.append(f"{k} {bv} -> {av}")
    return out


def diff_streams(a: Iterator[Range], b: Iterator[Range]) -> Iterator[dict]:
    """Difference records of two VA-ordered streams, neighbouring alike pieces merged."""
    pending: Optional[dict] = None
    for start, end, ra, rb in _segments(a, b):
        before = ra.state if ra else None
        after = rb.state if rb else None
        if before == after:
            continue
        kind = "added" if before is None else "removed" if after is None else "changed"
        if (pending is not None and pending["_end"] == start
                and (pending["type"], pending["_b"], pending["_a"]) == (kind, before, after)):
            pending["_end"] = end
            continue
        if pending is not None:
            yield _finish(pending)
        pending = {"type": kind, "_start": start, "_end": end, "_b": before, "_a": after,
                   "_pa": (ra.pa if ra else None, rb.pa if rb else None)}
    if pending is not None:
        yield _finish(pending)


def _finish(p: dict) -> dict:
    return {"type": p["type"], "va": f"{p['_start']:#x}", "size": p["_end"] - p["_start"],
            "before": _as_dict(p["_b"]), "after": _as_dict(p["_a"]),
            "what": _what(p["_b"], p["_a"])}


def _pairs(path_a: str, path_b: str):
    """Streams to compare: ``(label, (key, span) in A or None, (key, span) in B or None)``."""
    ia, ib = stream_index(path_a), stream_index(path_b)
    for path, index in ((path_a, ia), (path_b, ib)):
        if not index:
            raise UsageError(f"{path}: no walk in it (no header or mapping records; give the "
                             "output of xen-pte-dump without --check, or xen-pte-walk --json)")
        for key, spans in index.items():
            if not isinstance(spans, str) and len(spans) > 1:
                raise UsageError(f"{path}: the mappings of {_label(key)} are not contiguous "
                                 f"(lines {spans[0][0]} and {spans[1][0]}): concatenated walks?")
    def side(index, k):
        if k not in index:
            return None
        return index[k] if isinstance(index[k], str) else (k, index[k][0])

    if len(ia) == 1 and len(ib) == 1:
        (ka,), (kb,) = ia, ib
        return [(_label(ka) if ka == kb else f"{_label(ka)} vs {_label(kb)}", side(ia, ka),
                 side(ib, kb))]
    keys = list(ia) + [k for k in ib if k not in ia]
    return [(_label(k), side(ia, k), side(ib, k)) for k in keys]


def _label(key: StreamKey) -> str:
    target, vcpu = key
    if target is None:
        return "walk" if vcpu is None else f"vCPU {vcpu}"
    return target + ("" if vcpu is None else f" vCPU {vcpu}")


def _empty() -> Iterator[Range]:
    return iter(())


def _table(rows: List[dict]) -> List[str]:
    out = [[r["stream"], r["type"], "-", "-", "-", f"{r['side']}: {r['message']}"]
           if r["type"] == "not-compared" else
           [r["stream"], r["type"], r["va"], f"{int(r['va'], 16) + r['size'] - 1:#x}",
            r["size"], "; ".join(r["what"]) if r["type"] == "changed" else
            (r["after"] or r["before"])["rights"]] for r in rows]
    return tabulate(out, headers=["stream", "change", "VA start", "VA end", "bytes", "what"],
                    tablefmt="simple", disable_numparse=True).splitlines()


def _run(argv: List[str]) -> int:
    p = ArgumentParser(PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("a", metavar="A.jsonl", help="the walk before")
    p.add_argument("b", metavar="B.jsonl", help="the walk after")
    p.add_argument("--table", action="store_true", help="a table instead of JSON Lines")
    p.add_argument("--pa", action="store_true", help="also report changed physical addresses")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    args = p.parse_args(argv)
    counts = {"added": 0, "removed": 0, "changed": 0}
    sizes = dict(counts)
    table_rows: List[dict] = []  # --table only: a table is read by people, so it is short
    not_compared = 0
    if args.output:  # before anything is read: the output must not be an input
        refuse_inputs(args.output, (args.a, args.b))
    try:
        pairs = _pairs(args.a, args.b)  # the first pass validates both files
    except RecordError as err:
        raise UsageError(str(err)) from None
    try:
        out = AtomicFile(args.output) if args.output else sys.stdout
    except OSError as err:
        raise UsageError(f"{args.output}: {err.strerror or err}") from None
    try:
        for label, ka, kb in pairs:
            failed = [(name, msg) for name, msg in (("A", ka), ("B", kb)) if isinstance(msg, str)]
            if failed:  # that walk failed: nothing to compare it with
                for name, msg in failed:
                    rec = {"type": "not-compared", "stream": label, "side": name,
                           "message": msg}
                    if args.table:
                        table_rows.append(rec)
                    else:
                        out.write(dumps(rec) + "\n")
                not_compared += 1
                continue
            a = _ranges(args.a, *ka, args.pa) if ka is not None else _empty()
            b = _ranges(args.b, *kb, args.pa) if kb is not None else _empty()
            for rec in diff_streams(a, b):
                counts[rec["type"]] += 1
                sizes[rec["type"]] += rec["size"]
                rec = {"type": rec["type"], "stream": label, **{k: v for k, v in rec.items()
                                                                 if k != "type"}}
                if args.table:
                    table_rows.append(rec)
                else:
                    out.write(dumps(rec) + "\n")
        summary = {"type": "summary", "counts": counts, "bytes": sizes,
                   "not_compared": not_compared}
        if args.table:
            lines = _table(table_rows) if table_rows else ["no differences."]
            lines.append(", ".join(f"{counts[k]} {k} ({sizes[k]} bytes)" for k in counts)
                         + (f"; {not_compared} not compared (a walk failed)"
                            if not_compared else ""))
            out.write("\n".join(lines) + "\n")
        else:
            out.write(dumps(summary) + "\n")
        if out is not sys.stdout:
            out.commit()  # a full disk says so here (ENOSPC at close)
    except RecordError as err:
        raise UsageError(str(err)) from None
    except BrokenPipeError:
        raise
    except OSError as err:
        raise UsageError(f"{err.filename or args.output or 'output'}: "
                         f"{err.strerror or err}") from None
    finally:
        if out is not sys.stdout:
            out.discard()
    if not_compared:
        return EXIT_TROUBLE
    return 1 if any(counts.values()) else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Console script entry point."""
    return run_main(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
