"""Bad options, bad values and bad files: exactly one clear error line, never a traceback."""

import pytest

from gdbrun import run_gdb


def _errors(res):
    assert "Traceback" not in res.stderr and "Python Exception" not in res.stderr, res.stderr
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


@pytest.mark.parametrize("command, expected", [
    ("xen-pte-walk --bogus", "xen-pte-walk: unrecognized arguments: --bogus"),
    ("xen-pte-walk --cor", "xen-pte-walk: unrecognized arguments: --cor"),  # no abbreviations
    ("xen-pte-walk --pkey 16", "xen-pte-walk: argument --pkey: 16 is not in 0..15"),
    ("xen-pte-walk --domain pv16",
     "xen-pte-walk: argument --domain: 'pv16' is not one of native, hvm, pv64, pv32"),
    ("xen-pte-walk --raw mem.bin@zz", "xen-pte-walk: --raw mem.bin@zz: base address 'zz' is not "
                                      "a number (expected FILE@BASE, e.g. guest.ram@0x0)"),
    ("xen-pte-walk --raw /nonexistent@0", "xen-pte-walk: /nonexistent: cannot open: No such file "
                                          "or directory"),
    ("xen-pte-walk --core /nonexistent", "xen-pte-walk: /nonexistent: cannot open: No such file "
                                         "or directory"),
    ("xen-pte-walk --core /etc/hostname --raw x@0", "xen-pte-walk: give --core or --raw, not "
                                                    "both"),
    ("xen-pte-walk --verdict kernel-jump=ok",
     "xen-pte-walk: argument --verdict: 'kernel-jump=ok' is not KIND=ok|fault[:REASON]: "
     "'kernel-jump' is not an access: one of kr/kernel-read, kw/kernel-write, kx/kernel-exec, "
     "ur/user-read, uw/user-write, ux/user-exec"),
    ("xen-pte-walk 1 2 3", "xen-pte-walk: give one ADDR or START END, not more"),
    ("xen-pte-walk 0x10 0x5", "xen-pte-walk: empty range: END 0x5 is not above START 0x10 (the "
                              "range is [START, END); END 0 means the top)"),
    ("xen-pte-walk", "xen-pte-walk: no live target: connect with 'target remote HOST:PORT', "
                     "or give --core FILE / --raw FILE@BASE"),
])
def test_one_line_per_error(command, expected):
    assert _errors(run_gdb(command)) == [expected]


def test_bad_expression_names_the_option():
    (line,) = _errors(run_gdb("xen-pte-walk --cr3 no_such_symbol"))
    assert line.startswith("xen-pte-walk: argument --cr3: 'no_such_symbol' is not an address")


def test_error_stops_a_gdb_script(tmp_path):
    # gdb sees a failed command (pwndbg swallowed these): a sourced script stops at the error.
    script = tmp_path / "cmds.gdb"
    script.write_text("xen-pte-walk --bogus\necho not-reached\\n\n")
    res = run_gdb(f"source {script}")
    assert "not-reached" not in res.stdout
    assert _errors(res)[-1].endswith("xen-pte-walk: unrecognized arguments: --bogus")
    assert res.returncode != 0


@pytest.mark.parametrize("content", [b"garbage" * 100, b"\x7fELF\x02\x01\x01" + b"\0" * 9,
                                     b"KDUMP   " + b"\0" * 8, b""])
def test_bad_dump_files_are_one_line(tmp_path, content):
    path = tmp_path / "bad.dump"
    path.write_bytes(content)
    (line,) = _errors(run_gdb(f"xen-pte-walk --core {path}"))
    assert line.startswith("xen-pte-walk: ") and "bad.dump" in line, line
