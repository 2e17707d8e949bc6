"""Turn walk results into text (:mod:`.table`, :mod:`.reports`) and JSON Lines (:mod:`.jsonl`).

The only package that formats results. It takes the plain :mod:`gdb_xenpte.model` types and
returns strings or dicts; it never prints, so gdb's pager, a file or a test can take the output.
Colours are ANSI SGR sequences, emitted only when the caller says so (the gdb glue asks gdb's
``style enabled``, which batch mode turns off).

JSON records follow ``gdb_xenpte/data/xen-pte-walk.schema.json``: a ``header``, then ``mapping``
records, then a ``summary``. Addresses and raw entries are ``"0x..."`` strings; sizes are integers.

Failure modes: none of its own; a missing optional value renders as ``-`` (text) or ``null`` (JSON).
"""

from .common import FLAG_ORDER, Style, hexa, human_size
from .jsonl import (SCHEMA_VERSION, RecordCounter, anomaly_record, batch_lines,
                    check_summary_record, dumps, mapping_json, mapping_record, summary_record,
                    trace_record, what_if_records)
from .reports import check_text, cr4_text, what_if_text
from .table import (TableStream, bits_table, header_lines, mapping_table, repeat_text,
                    summary_text, trace_text)
from .verdict_text import LEGEND, verdict_summary

__all__ = [
    "FLAG_ORDER",
    "LEGEND",
    "RecordCounter",
    "SCHEMA_VERSION",
    "Style",
    "TableStream",
    "anomaly_record",
    "batch_lines",
    "bits_table",
    "check_summary_record",
    "check_text",
    "cr4_text",
    "dumps",
    "header_lines",
    "hexa",
    "human_size",
    "mapping_json",
    "mapping_record",
    "mapping_table",
    "repeat_text",
    "summary_record",
    "summary_text",
    "trace_record",
    "trace_text",
    "verdict_summary",
    "what_if_records",
    "what_if_text",
]
