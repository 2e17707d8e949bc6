"""The JSON Lines contract: records of walks, traces and checks, and their encoder.

Records follow ``gdb_xenpte/data/xen-pte-walk.schema.json`` (and ``xen-pte-check.schema.json``): a
``header``, then ``mapping`` (or ``trace``) records, then a ``summary``. Addresses and raw entries
are ``"0x..."`` strings; sizes are integers.
"""

from __future__ import annotations

import json
import operator
from dataclasses import replace
from typing import Any, Dict, List, Mapping as TMapping, Optional, Sequence, Tuple

from ..model import ACCESS_KEYS, EntryRef, Mapping, PageBatch, Trace, Verdict
from .common import FLAG_ORDER, ByIdentity, hexa
from ..verdicts import FAULT_CLASSES, FAULTING_CLASSES, fault_class

__all__ = [
    "RecordCounter",
    "SCHEMA_VERSION",
    "anomaly_record",
    "batch_lines",
    "check_summary_record",
    "dumps",
    "mapping_json",
    "mapping_record",
    "summary_record",
    "trace_record",
    "what_if_records",
]


# The "version" of gdb_xenpte/data/xen-pte-walk.schema.json these records follow.
SCHEMA_VERSION = 2

# Shared by every record: json.dumps only reads the dict it is given.
_VERDICT_TEXTS = ByIdentity(lambda verdicts: _verdict_texts(verdicts))


# A mapping's fault class (verdicts.fault_class) and imposed reasons, once per shared verdicts dict.
_FAULT_CLASS = ByIdentity(fault_class)
_IMPOSED = ByIdentity(lambda verdicts: tuple(_imposed(verdicts)))

# A mapping's flag names in FLAG_ORDER; records share the walker's flag sets.
_FLAG_NAMES = ByIdentity(lambda flags: tuple(f for f in FLAG_ORDER if f in flags))



def _verdict_texts(verdicts: TMapping[str, Verdict]) -> Dict[str, str]:
    return {k: str(verdicts[k]) for k in ACCESS_KEYS if k in verdicts}


def _imposed(verdicts: TMapping[str, Verdict]) -> List[str]:
    """``["kernel_read:SMAP", ...]``: the reasons that enforce a protection the guest did not
    choose (by Xen or a what-if)."""
    return [f"{k}:{r}" for k in ACCESS_KEYS if k in verdicts for r in verdicts[k].imposed]



def _entry_record(e: EntryRef) -> Dict[str, Any]:
    return {"level": e.level, "index": e.index, "table_pa": hex(e.table_pa), "raw": hex(e.raw)}



def mapping_record(m: Mapping) -> Dict[str, Any]:
    """Return the ``mapping`` record of one (coalesced) mapping."""
    rec = {
        "type": "mapping", "kind": getattr(m, "kind", "page"), "va": hexa(m.va),
        "pa": hexa(m.pa), "size": m.size,
        "page_size": m.page_size, "level": m.level, "count": m.count,
    }
    rec.update(_repeat_fields(m))
    rec.update({
        "entries": [_entry_record(e) for e in m.entries],
        "flags": list(_FLAG_NAMES(m.flags)),
        "effective": {"user": m.effective.user, "write": m.effective.write,
                      "exec": m.effective.exec},
        "pkey": m.pkey, "xen_bits": list(m.xen_bits), "rsvd": list(m.rsvd),
        "disallowed": list(getattr(m, "disallowed", ())),
        "memtype": m.memtype,
        "verdicts": _VERDICT_TEXTS(m.verdicts),
        "fault_class": _FAULT_CLASS(m.verdicts) if m.verdicts else None,
        "imposed": list(_IMPOSED(m.verdicts)),
        "notes": list(m.notes),
    })
    if getattr(m, "p2m", None) is not None:
        rec["p2m"] = {"rights": m.p2m.rwx(), "type": m.p2m.type_name or None}
    return rec


def _repeat_fields(m: Mapping) -> Dict[str, Any]:
    """Present only when they say something (schema version 2): ``pa_contiguous`` false when
    the run's frames are scattered (``pa`` is then the first frame only), ``repeat`` when the
    record stands for copies at ``va + k * stride``."""
    out: Dict[str, Any] = {}
    if not getattr(m, "pa_contiguous", True):
        out["pa_contiguous"] = False
    if getattr(m, "repeat", 1) > 1:
        out["repeat"] = {"count": m.repeat, "stride": m.stride}
    return out



def mapping_json(m: Mapping) -> str:
    """``dumps(mapping_record(m))``, the same bytes, made from cached JSON fragments.

    The hot path of ``--json``: the json encoder was most of a record's cost, and most of a record
    is shared with its neighbours (the walker hands equal mappings the same flags, rights, verdicts,
    Xen bits and path entries), so those parts are encoded once.
    """
    if getattr(m, "p2m", None) is not None:  # HVM/PVH through a host p2m: not the hot path
        return dumps(mapping_record(m))
    entries = ",".join([_entry_json(e) for e in m.entries])
    extra = ""
    if getattr(m, "repeat", 1) > 1 or not getattr(m, "pa_contiguous", True):
        extra = _ENCODER.encode(_repeat_fields(m))[1:-1] + ","
    return ('{"type":"mapping","kind":%s,"va":%s,"pa":%s,"size":%d,"page_size":%d,"level":%s,'
            '"count":%d,%s"entries":[%s],%s}' % (
                _ENCODER.encode(getattr(m, "kind", "page")), _ENCODER.encode(hexa(m.va)),
                _ENCODER.encode(hexa(m.pa)), m.size, m.page_size, _ENCODER.encode(m.level),
                m.count, extra, entries, _tail_json(m)))


# Values no real record has, replaced by %-conversions to make a batch's line template.
_S_VA, _S_PA, _S_INDEX, _S_RAW = 0x5EED0A110CA7ED01, 0x5EED0A110CA7ED02, 918273645, \
    0x5EED0A110CA7ED03


def batch_lines(batch: PageBatch, limit: Optional[int] = None) -> List[str]:
    """The ``mapping_json`` lines of a :class:`~gdb_xenpte.model.PageBatch`'s records (the first
    ``limit``), made from one template per A/D state: the same bytes, without a Mapping each."""
    n = batch.n if limit is None else min(limit, batch.n)
    if n < 8:  # a template costs a few records' worth
        return [mapping_json(m) for m, _ in zip(batch.mappings(), range(n))]
    templates = {}
    for ad, proto in batch.protos.items():
        leaf = proto.entries[-1]
        line = mapping_json(replace(proto, va=_S_VA, pa=_S_PA, entries=proto.entries[:-1] + (
            EntryRef(leaf.level, _S_INDEX, leaf.table_pa, _S_RAW),)))
        parts = line.replace("%", "%%")
        for value, conv in ((f'"{_S_VA:#x}"', '"0x%x"'), (f'"{_S_PA:#x}"', '"0x%x"'),
                            (f'"index":{_S_INDEX},', '"index":%d,'),
                            (f'"{_S_RAW:#x}"', '"0x%x"')):
            assert parts.count(value) == 1, value
            parts = parts.replace(value, conv)
        templates[ad] = parts
    vas, pas, indices, raws = batch.vas, batch.pas, batch.indices, batch.raws
    if len(templates) == 1:
        t = next(iter(templates.values()))
        return [t % x for x in zip(vas[:n], pas[:n], indices[:n], raws[:n])]
    return [templates[r & 0x60] % (va, pa, i, r)
            for va, pa, i, r in zip(vas[:n], pas[:n], indices[:n], raws[:n])]


# Path entries are shared objects (the walker's context path, its leaf-ref cache).
_entry_json = ByIdentity(lambda e: _ENCODER.encode(_entry_record(e)))



_TAIL_FIELDS = ("flags", "effective", "pkey", "xen_bits", "rsvd", "disallowed", "memtype",
                "verdicts", "fault_class", "imposed", "notes")


_tail_memo: Dict[Tuple[int, ...], Tuple[Tuple[Any, ...], str]] = {}



def _tail_json(m: Mapping) -> str:
    """The record's fields after ``entries``, encoded once per distinct set of objects."""
    objs = (m.flags, m.effective, m.pkey, m.xen_bits, m.rsvd, getattr(m, "disallowed", ()),
            m.memtype, m.verdicts, m.notes)
    key = tuple(map(id, objs))
    hit = _tail_memo.get(key)
    if hit is not None and all(map(operator.is_, hit[0], objs)):
        return hit[1]
    rec = mapping_record(m)
    text = _ENCODER.encode({k: rec[k] for k in _TAIL_FIELDS})[1:-1]
    if len(_tail_memo) >= 4096:
        _tail_memo.clear()  # hostile walks: every record distinct; stay small
    _tail_memo[key] = (objs, text)  # holding the objects keeps their ids unique
    return text



class RecordCounter:
    """Counts what a walk emitted, for the ``summary`` record.

    ``mappings`` and ``faulting`` count records (a repeat record once); ``pages`` and ``bytes``
    count every copy of a repeat record (``Mapping.total_pages``/``total_bytes``).
    """

    def __init__(self):
        self.mappings = 0
        self.pages = 0
        self.bytes = 0
        self.faulting = 0
        self.classes = dict.fromkeys(FAULT_CLASSES, 0)

    def add(self, m: Mapping) -> None:
        """Count one record (``faulting``: beyond the guest's own choices, is_faulting)."""
        self.mappings += 1
        if getattr(m, "kind", "page") == "page":  # RSVD/unreadable records map nothing
            repeat = getattr(m, "repeat", 1)
            self.pages += m.count * repeat
            self.bytes += m.size * repeat
        if m.verdicts:
            kind = _FAULT_CLASS(m.verdicts)
            self.classes[kind] += 1
            self.faulting += kind in FAULTING_CLASSES

    def add_batch(self, batch: PageBatch, n: Optional[int] = None) -> None:
        """Count the first ``n`` (all) records of a PageBatch as ``add`` would, one by one."""
        n = batch.n if n is None else min(n, batch.n)
        proto = next(iter(batch.protos.values()))  # every page's rights and verdicts
        self.mappings += n
        self.pages += n
        self.bytes += n * proto.page_size
        if proto.verdicts:
            kind = _FAULT_CLASS(proto.verdicts)
            self.classes[kind] += n
            self.faulting += n * (kind in FAULTING_CLASSES)



def summary_record(counter: RecordCounter, budget_hit: bool,
                   unreadable: Sequence[Tuple[int, str]] = (), interrupted: bool = False,
                   **extra: Any) -> Dict[str, Any]:
    """Return the ``summary`` record.

    :param unreadable: ``(physical address, reason)`` of tables the walk could not read.
    :param budget_hit: True when ``--limit`` stopped the walk early.
    """
    rec = {
        "type": "summary",
        "counts": {"mappings": counter.mappings, "pages": counter.pages,
                   "bytes": counter.bytes, "faulting": counter.faulting,
                   "fault_classes": dict(counter.classes)},
        "budget_hit": bool(budget_hit), "interrupted": bool(interrupted),
        "unreadable": [{"pa": hexa(pa), "reason": why} for pa, why in unreadable],
    }
    rec.update(extra)
    return rec



def anomaly_record(key: str, finding: Any) -> Dict[str, Any]:
    """One ``anomaly`` record of ``xen-pte-check --json``."""
    m = finding.mapping
    return {"type": "anomaly", "category": key, "va": hexa(m.va), "size": m.size,
            "pa": hexa(m.pa), "level": m.level, "rights": m.effective.rwx(),
            "detail": finding.detail,
            "verdicts": {k: str(m.verdicts[k]) for k in ACCESS_KEYS if k in m.verdicts}}



def check_summary_record(groups: Sequence[Any], stats: Any,
                         what_ifs: Sequence[Any] = ()) -> Dict[str, Any]:
    """The closing record of ``xen-pte-check --json``: findings (ranges, and pages) per
    category (:class:`gdb_xenpte.findings.Group`), what-if totals."""
    return {"type": "summary", "counts": {g.key: g.ranges for g in groups},
            "pages": {g.key: g.pages for g in groups},
            "budget_hit": bool(getattr(stats, "budget_hit", None)),
            "unreadable": [{"pa": hexa(pa), "reason": why}
                           for pa, why in getattr(stats, "unreadable", ())],
            "what_if": {r.scenario: _what_if_counts(r) for r in what_ifs}}



def _what_if_counts(r: Any) -> Dict[str, int]:
    return {"breaks": sum(c.count for c in r.broken), "fixes": sum(c.count for c in r.fixed),
            "changed": sum(c.count for c in r.changes), "ranges": len(r.changes),
            "mappings_seen": r.mappings_seen, "pages_seen": r.pages_seen}



def what_if_records(r: Any) -> List[Dict[str, Any]]:
    """A ``what-if`` record (headline, description, notes, totals) and one ``change`` record per
    changed range of a :class:`~gdb_xenpte.whatif.WhatIf`."""
    recs: List[Dict[str, Any]] = [{
        "type": "what-if", "scenario": r.scenario, "headline": r.headline(),
        "description": r.description, "notes": list(r.notes), **_what_if_counts(r)}]
    for c in r.changes:
        recs.append({"type": "change", "scenario": r.scenario, "va": hexa(c.va), "size": c.size,
                     "count": c.count, "level": c.level, "breaks": c.breaks, "fixes": c.fixes,
                     "what": list(c.what), "before": c.before, "after": c.after})
    return recs



def trace_record(trace: Trace) -> Dict[str, Any]:
    """Return the ``trace`` record of a single-address walk: every level visited."""
    return {
        "type": "trace", "va": hexa(trace.va), "stop": trace.stop,
        "steps": [{"level": s.level, "index": s.index, "table_pa": hexa(s.table_pa),
                   "entry_pa": hexa(s.entry_pa), "raw": hexa(s.raw),
                   "bits": [{"name": n, "value": v, "meaning": t} for n, v, t in s.bits],
                   "effective": {"user": s.effective.user, "write": s.effective.write,
                                 "exec": s.effective.exec},
                   "rule": s.rule} for s in trace.steps],
    }


# json.dumps with any option builds a new encoder per call; a walk dumps one record per mapping.
# Records are acyclic (plain dicts, lists and strings): the cycle check would only cost (~10 %).
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)



def dumps(record: Dict[str, Any]) -> str:
    """One JSON Lines line (no trailing newline), keys in insertion order."""
    return _ENCODER.encode(record)
