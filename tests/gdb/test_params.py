"""``set xen-pte …`` / ``show xen-pte …``: defaults, validation, restore on a bad value."""

from gdbrun import gdb_python, run_gdb


def test_show_all_lists_every_parameter():
    res = run_gdb("show xen-pte")
    assert res.returncode == 0, res.stderr
    for name in ("xen-version", "xen-debug", "domain", "smep", "smap", "maxphyaddr", "pkru",
                 "pkrs", "ac", "coalesce", "limit", "fast-path"):
        assert f"xen-pte {name}:" in res.stdout


def test_set_and_show_round_trip():
    res = run_gdb("set xen-pte xen-version 4.17", "show xen-pte xen-version",
                  "set xen-pte domain pv64", "show xen-pte domain",
                  "set xen-pte pkru 0x55555554", "show xen-pte pkru",
                  "set xen-pte limit 10", "show xen-pte limit")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "assumed: 4.17." in out and "walked: pv64." in out
    assert "verdicts: 0x55555554." in out and "prints: 10." in out


def test_bad_value_is_one_error_line_and_restores_the_old_value():
    res = run_gdb("set xen-pte xen-version 4.17", "set xen-pte xen-version four",
                  "show xen-pte xen-version", "set xen-pte maxphyaddr 99",
                  "show xen-pte maxphyaddr", "set xen-pte pkru banana", "show xen-pte pkru")
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert errors == [
        "set xen-pte xen-version: bad Xen version 'four': expected e.g. '4.17' or '3.0.3' (or auto)",
        "set xen-pte maxphyaddr: 99 is not 0 (auto) or 32..52",
        "set xen-pte pkru: 'banana' is not a number (or unknown)",
    ], res.stderr
    assert "assumed: 4.17." in res.stdout
    assert "width: 0." in res.stdout and "verdicts: unknown." in res.stdout


def test_enum_parameters_reject_other_values():
    res = run_gdb("set xen-pte domain pv128")
    assert "Undefined item" in res.stderr and "Traceback" not in res.stderr


def test_values_reach_the_glue_typed():
    got = gdb_python(r'''
import json, gdb
from gdb_xenpte.gdbcmd import params
gdb.execute("set xen-pte pkru 0x10")
gdb.execute("set xen-pte ac 1")
gdb.execute("set xen-pte coalesce off")
gdb.execute("set xen-pte limit unlimited")
got = [params.value(n) for n in ("pkru", "ac", "coalesce", "limit", "domain", "xen-version",
                                 "maxphyaddr")]
gdb.execute("set xen-pte limit 0")
print(json.dumps(got + [params.value("limit")]))
''')
    assert got == [16, 1, False, None, None, None, None, None]
