"""The batch tools' record handling: tagging, counting and CSV rows, one line at a time.

Records are the JSON Lines ``xen-pte-walk --json`` / ``xen-pte-check --json`` print
(gdb_xenpte/data/*.schema.json); ``xen-pte-dump`` adds ``target`` and ``vcpu`` (and ``vcpus`` when
several vCPUs share one set of page tables) to each, and writes ``{"type": "error", ...}`` records
for targets it could not read. Nothing here keeps more than one record: files are read line by
line (:func:`parse_line`) and counted into a :class:`Tally`, whose size depends on the number of
distinct verdicts, keys and bits, not on the number of mappings.

Failure modes: :class:`RecordError` for a line that is not a JSON object, or nested too deeply
for the json module (naming file and line).
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from gdb_xenpte.model import ACCESS_KEYS

__all__ = ["ACCESS_KEYS", "CSV_COLUMNS", "FAULTING_CLASSES", "RecordError", "Tally", "csv_row",
           "dumps", "error_record", "is_faulting", "is_pf_loop", "parse_line", "tag_line"]

# A mapping record's ``fault_class`` (the one vocabulary of gdb_xenpte): the classes that count
# as "faulting" by default — a fault beyond the guest's own choices.
FAULTING_CLASSES = frozenset(("invalid", "imposed"))
# copies/stride: a repeat record's copies lie at va + k*stride (k < copies), size per copy.
CSV_COLUMNS = ("type", "target", "vcpu", "va", "size", "copies", "stride", "pa", "page_size",
               "level", "kind", "rights", "pkey", "xen_bits", "flags") + ACCESS_KEYS + (
                   "fault_class", "category", "detail", "domid")  # domid last: older readers


class RecordError(ValueError):
    """A line that is not a JSON object."""


def parse_line(line: str, path: str, number: int) -> dict:
    """One JSON Lines line as a dict.

    :raises RecordError: naming the file and line if it is not a JSON object.
    """
    try:
        rec = json.loads(line)
    except ValueError as err:
        raise RecordError(f"{path}:{number}: not JSON ({err})") from None
    except RecursionError:  # e.g. 200,000 nested '[': json recurses once per level
        raise RecordError(f"{path}:{number}: not a record (JSON nested too deeply)") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}:{number}: not a JSON object")
    return rec


def tag_line(line: str, target: str, vcpu: Optional[int], vcpus: Sequence[int] = (),
             domid: Optional[int] = None) -> str:
    """Put ``target``/``vcpu`` (and ``vcpus``; ``domid`` for a Xen host dump's domain) first in
    one JSON Lines line.

    Splicing the text keeps the record as gdb wrote it and costs no JSON parse; only a record
    that already names a vCPU, domain or target (the header may) is parsed, so no key appears
    twice.
    """
    body = line.strip()
    tags = {"target": target, "vcpu": vcpu}
    if domid is not None:
        tags = {"target": target, "domid": domid, "vcpu": vcpu}
    if len(vcpus) > 1:
        tags["vcpus"] = list(vcpus)
    if '"vcpu' in body or '"target"' in body or '"domid"' in body:
        rec = json.loads(body)
        return _compact({**tags, **{k: v for k, v in rec.items() if k not in tags}})
    head = _compact(tags)[:-1]
    return head + ("," + body[1:] if body != "{}" else "}")


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def dumps(record: dict) -> str:
    """One JSON Lines line, compact like the extension's own records."""
    return _compact(record)


def error_record(target: str, vcpu: Optional[int], message: str,
                 domid: Optional[int] = None) -> dict:
    """The record written for a target (or one vCPU of it) that could not be read."""
    where = {"target": target} if domid is None else {"target": target, "domid": domid}
    return {"type": "error", **where, "vcpu": vcpu, "message": message}


def _rights(eff: dict) -> str:
    return (f"R{'W' if eff.get('write') else '-'}{'X' if eff.get('exec') else '-'} "
            f"{'U' if eff.get('user') else 'S'}")


def csv_row(rec: dict) -> Optional[dict]:
    """The CSV row of a mapping, anomaly, what-if change or error record (None for others).

    For a change, the verdict columns hold the verdicts *after* the scenario.
    """
    kind = rec.get("type")
    row = {k: rec.get(k) for k in ("type", "target", "domid", "vcpu", "va", "size", "pa",
                                   "level")}
    if kind == "mapping":
        repeat = rec.get("repeat") or {}
        row.update(copies=repeat.get("count", 1), stride=repeat.get("stride"))
        row.update(page_size=rec.get("page_size"), kind=rec.get("kind", "page"),
                   rights=_rights(rec.get("effective", {})), pkey=rec.get("pkey"),
                   xen_bits=" ".join(rec.get("xen_bits", ())),
                   flags=" ".join(rec.get("flags", ())))
        row.update({k: rec.get("verdicts", {}).get(k) for k in ACCESS_KEYS})
        row["fault_class"] = rec.get("fault_class")
    elif kind == "anomaly":
        row.update(rights=rec.get("rights"), category=rec.get("category"),
                   detail=rec.get("detail"))
        row.update({k: rec.get("verdicts", {}).get(k) for k in ACCESS_KEYS})
    elif kind == "change":  # --what-if: the scenario as the category, what changes as detail
        row.update(category=rec.get("scenario"), detail="; ".join(rec.get("what", ())))
        row.update({k: rec.get("after", {}).get("verdicts", {}).get(k) for k in ACCESS_KEYS})
    elif kind == "error":
        row["detail"] = rec.get("message")
    else:
        return None
    return row


class _Disallow:
    """PV disallow-mask violations of a mapping, asked of the engine's XenView.

    Why: ``xen-pte-walk --json`` records do not (yet) carry the walker's ``disallowed`` field,
    so the header's domain and Xen version are turned into the same engine query the walker
    makes. A record that has ``disallowed`` is taken at its word.
    """

    def __init__(self, header: dict):
        self.view = None
        domain = header.get("domain")
        if domain in ("pv64", "pv32"):
            from gdb_xenpte import xen
            from gdb_xenpte.session import NEWEST_XEN
            from gdb_xenpte.xenview import XenView
            xinfo = header.get("xen") or {}
            version = xinfo.get("version") or ".".join(map(str, NEWEST_XEN[:2]))
            self.view = XenView(xen.XenPolicy(version, domain, bool(xinfo.get("debug"))))
        self._memo: Dict[Tuple[int, str], bool] = {}

    def violates(self, rec: dict) -> bool:
        if "disallowed" in rec:
            return bool(rec["disallowed"])
        if self.view is None:
            return False
        for e in rec.get("entries", ()):
            # The masks look at flag bits only: key the memo on the entry without its frame.
            key = (int(e["raw"], 16) & ~0x000FFFFFFFFFF000, e["level"])
            hit = self._memo.get(key)
            if hit is None:
                hit = self._memo[key] = bool(self.view.disallowed(key[0], key[1]))
            if hit:
                return True
        return False


def is_faulting(rec: dict) -> bool:
    """Whether a mapping record counts as faulting: its ``fault_class`` is invalid or imposed
    (the extension's own rule, carried in the record); a record from before ``fault_class``
    existed faults when any access's verdict is not ``ok``."""
    if "fault_class" in rec:
        return rec["fault_class"] in FAULTING_CLASSES
    return any(v != "ok" for v in rec.get("verdicts", {}).values())


def is_pf_loop(rec: dict) -> bool:
    """The #PF-loop pattern: a guest-kernel access faults under SMEP or SMAP — and, when the
    record says whose choice its faults enforce (``fault_class``), one imposed on the guest
    (a guest's own SMEP/SMAP on its user pages is the protection working, not a loop)."""
    if "fault_class" in rec and rec["fault_class"] != "imposed":
        return False
    verdicts = rec.get("verdicts", {})
    return any("SMEP" in verdicts.get(k, "") or "SMAP" in verdicts.get(k, "")
               for k in ACCESS_KEYS if k.startswith("kernel_"))


class Tally:
    """Counts over one stream of records: ``counts[(what, name)] = [records, pages]``.

    ``what`` is one of ``verdict`` (``kernel_read=fault:SMAP``), ``Xen bit``, ``pkey``, ``W+X``,
    ``disallowed``, ``kernel SMEP/SMAP`` (:func:`is_pf_loop`), ``faulting`` (:func:`is_faulting`), ``fault class`` (the record's
    ``fault_class``), ``anomaly`` (xen-pte-check categories),
    ``what-if`` (``SCENARIO: changes|breaks|fixes``, from ``--what-if`` change records),
    ``mappings``, or ``record`` (record types other than the above).
    """

    def __init__(self):
        self.counts: Dict[Tuple[str, str], List[int]] = {}
        self.unreadable = 0
        self.budget_hit = False
        self._disallow: Optional[_Disallow] = None

    def _add(self, what: str, name: str, pages: int) -> None:
        slot = self.counts.setdefault((what, name), [0, 0])
        slot[0] += 1
        slot[1] += pages

    def add(self, rec: dict) -> None:
        """Count one record."""
        kind = rec.get("type")
        if kind == "header":
            self._disallow = _Disallow(rec)
        elif kind == "mapping":
            self._mapping(rec)
        elif kind == "anomaly":
            self._add("anomaly", rec.get("category", "?"), 1)
        elif kind == "what-if":  # the scenario's row exists even when nothing changes
            self.counts.setdefault(("what-if", f"{rec.get('scenario')}: changes"), [0, 0])
        elif kind == "change":
            pages = int(rec.get("count", 1))
            scenario = rec.get("scenario")
            self._add("what-if", f"{scenario}: changes", pages)
            for verb in ("breaks", "fixes"):
                if rec.get(verb):
                    self._add("what-if", f"{scenario}: {verb}", pages)
        elif kind == "summary":
            self.unreadable += len(rec.get("unreadable", ()))
            self.budget_hit |= bool(rec.get("budget_hit"))
        else:
            self._add("record", str(kind), 1)

    def _mapping(self, rec: dict) -> None:
        # A record with ``repeat`` stands for that many copies: counted once as a record (as the
        # walk's own summary counts mappings) and for every copy's pages.
        pages = int(rec.get("count", 1)) * int((rec.get("repeat") or {}).get("count", 1))
        self._add("mappings", "all", pages)
        verdicts = rec.get("verdicts", {})
        for key in ACCESS_KEYS:
            if key in verdicts:
                self._add("verdict", f"{key}={verdicts[key]}", pages)
        if is_faulting(rec):
            self._add("faulting", "any access", pages)
        if rec.get("fault_class") is not None:
            self._add("fault class", str(rec["fault_class"]), pages)
        if is_pf_loop(rec):
            self._add("kernel SMEP/SMAP", "kernel access faults", pages)
        for bit in rec.get("xen_bits", ()):
            self._add("Xen bit", bit, pages)
        if rec.get("pkey") is not None:
            self._add("pkey", str(rec["pkey"]), pages)
        eff = rec.get("effective", {})
        if rec.get("kind", "page") == "page" and eff.get("write") and eff.get("exec"):
            self._add("W+X", "writable and executable", pages)
        if (self._disallow or _Disallow({})).violates(rec):
            self._add("disallowed", "PV disallow-mask violation", pages)

    def merge(self, other: "Tally") -> None:
        """Add another tally's counts to this one (the fleet-wide total)."""
        for key, (n, pages) in other.counts.items():
            slot = self.counts.setdefault(key, [0, 0])
            slot[0] += n
            slot[1] += pages
        self.unreadable += other.unreadable
        self.budget_hit |= other.budget_hit

    def get(self, what: str, name: Optional[str] = None, but: Sequence[str] = (),
            suffix: str = "") -> int:
        """Records counted under ``what`` (and ``name``, else every name not in ``but`` that
        ends with ``suffix``)."""
        return sum(v[0] for (w, n), v in self.counts.items()
                   if w == what and (name is None or n == name) and n not in but
                   and n.endswith(suffix))

    def __getstate__(self):  # the memo and engine view stay in the worker
        return {"counts": self.counts, "unreadable": self.unreadable,
                "budget_hit": self.budget_hit, "_disallow": None}
