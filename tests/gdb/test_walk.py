"""xen-pte-walk under the real gdb on a raw image built from known page tables.

Checks the text table, the trace, the filters, JSON Lines against the JSON Schema, the numpy and
struct engines giving the same records, styling, and Ctrl-C stopping a walk with a summary.
"""


import pytest

from gdbrun import ROOT, gdb_python, run_gdb, validators



WALK_SCHEMA = validators()[0]


def _validate(records):
    for r in records:
        WALK_SCHEMA.validate(r)


def test_table(image):
    out = run_gdb(f"xen-pte-walk {image}").ok().stdout
    lines = out.splitlines()
    assert lines[0].startswith("4-level paging, CR3 0x100000, CR4 0x3006a0, domain native; raw image")
    assert all(ln.startswith("note: ") for ln in lines[1:lines.index(next(
        ln for ln in lines if ln.startswith("VA range")))])
    head = next(ln for ln in lines if ln.startswith("VA range"))
    assert head.split() == ["VA", "range", "PA", "size", "page", "rights", "pkey", "Xen", "bits",
                            "verdicts"]
    rows = [ln for ln in lines if ln.startswith("0x")]
    assert len(rows) == 4
    assert rows[0].split()[:6] == ["0x0000000000400000-0x0000000000401fff", "0x200000-0x201fff",
                                   "8K", "4K", "RWX", "U"]
    # Grouped, abbreviated reasons; '?' marks a verdict that depends on an unknown (AC).
    assert rows[0].split()[-2:] == ["kr,kw:SMAP?", "kx:SMEP"]
    # Kernel rows: a user access to a supervisor page is the page's own rights, not a finding.
    assert rows[2].split()[-1] == "-"
    assert lines[-1] == ("4 mappings; 5 pages; 2064K mapped; 0 faulting beyond the guest's own "
                         "choices (imposed or reserved bits); 2 where the guest's own "
                         "SMEP/SMAP/keys fault an access.")


def test_no_coalesce_and_limit(image):
    out = run_gdb(f"xen-pte-walk --no-coalesce {image}").ok().stdout
    assert len([ln for ln in out.splitlines() if ln.startswith("0x")]) == 5
    out = run_gdb(f"xen-pte-walk --limit 1 {image}").ok().stdout
    assert len([ln for ln in out.splitlines() if ln.startswith("0x")]) == 1
    assert "stopped at --limit" in out.splitlines()[-1]


def test_range(image):
    out = run_gdb(f"xen-pte-walk {image} 0x7f0000000000 0x7f0000001000").ok().stdout
    rows = [ln for ln in out.splitlines() if ln.startswith("0x")]
    assert len(rows) == 1 and rows[0].startswith("0x00007f0000000000")
    # END 0 is the top of the address space (a 64-bit END cannot say 2**64).
    out = run_gdb(f"xen-pte-walk {image} 0xffff800000000000 0").ok().stdout
    rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith("0x")]
    assert [r.split("-")[0] for r in rows] == ["0xffff800000000000", "0xffffffff80000000"]


@pytest.mark.parametrize("flt, first_vas", [
    ("--user", ["0x400000", "0x7f0000000000"]),
    ("--kernel", ["0xffff800000000000", "0xffffffff80000000"]),
    ("--wx", ["0x400000", "0xffff800000000000"]),
    ("--writable --user", ["0x400000", "0x7f0000000000"]),
    ("--exec --kernel", ["0xffff800000000000", "0xffffffff80000000"]),
    ("--pkey 5", ["0x7f0000000000"]),
    ("--verdict kernel-exec=fault:SMEP", ["0x400000", "0x7f0000000000"]),
    ("--verdict user-exec=fault:NX --verdict kernel-read=fault", ["0x7f0000000000"]),
    ("--verdict kernel-write=ok", ["0xffff800000000000"]),
    # The guest's own SMEP/SMAP fault its user pages: not beyond its choices (issue 14)...
    ("--faults", []),
    # ...but --faults=all lists them; never mere U/S, RO or NX faults.
    ("--faults=all", ["0x400000", "0x7f0000000000"]),
    ("--faults=all --kernel", []),
    ("--verdict kx=fault:SMEP --verdict kr=fault:SMAP", ["0x400000", "0x7f0000000000"]),
])
def test_filters(image, flt, first_vas):
    recs = run_gdb(f"xen-pte-walk --json {flt} {image}").ok().json_lines()
    assert [r["va"] for r in recs if r["type"] == "mapping"] == first_vas


def test_json_walk_validates_and_is_ordered(image):
    recs = run_gdb(f"xen-pte-walk --json {image}").ok().json_lines()
    _validate(recs)
    assert [r["type"] for r in recs] == ["header"] + ["mapping"] * 4 + ["summary"]
    head, first, summary = recs[0], recs[1], recs[-1]
    assert head["cr3"] == "0x100000" and head["efer"] == "0xd01" and head["mode"] == "4-level"
    assert head["xen"] is None and head["kernel_cpl"] == 0 and head["vcpu"] is None
    assert first["va"] == "0x400000" and first["size"] == 8192 and first["count"] == 2
    assert [e["level"] for e in first["entries"]] == ["pml4", "pdpt", "pd", "pt"]
    assert first["flags"] == ["P", "RW", "US"]
    assert first["verdicts"]["kernel_exec"] == "fault:SMEP"
    assert summary["counts"] == {"mappings": 4, "pages": 5, "bytes": 0x204000, "faulting": 0,
                                 "fault_classes": {"invalid": 0, "imposed": 0, "guest": 2,
                                                   "conditional": 0, "none": 2}}
    assert [r["fault_class"] for r in recs[1:-1]] == ["guest", "guest", "none", "none"]
    assert summary["budget_hit"] is False and summary["unreadable"] == []


def test_json_trace_validates(image):
    recs = run_gdb(f"xen-pte-walk --json {image} 0x401234").ok().json_lines()
    _validate(recs)
    assert [r["type"] for r in recs] == ["header", "trace", "mapping"]
    assert [s["level"] for s in recs[1]["steps"]] == ["pml4", "pdpt", "pd", "pt"]
    assert recs[1]["stop"] == "leaf" and recs[2]["pa"] == "0x201000"


def test_trace_text_and_expressions(image):
    # gdb expressions are addresses: convenience variables and arithmetic
    out = run_gdb("set $va = 0x401000", f"xen-pte-walk {image} $va+0x234").ok().stdout
    assert "VA 0x401234" in out and "maps 4K page: VA 0x401234 -> PA 0x201234" in out
    out = run_gdb(f"xen-pte-walk {image} 0x500000").ok().stdout
    assert "stop: not present" in out


def test_xen_pv64_bits(image):
    recs = run_gdb(f"xen-pte-walk --json --domain pv64 --xen 4.17 --xen-bits {image}").ok()\
        .json_lines()
    _validate(recs)
    maps = [r for r in recs if r["type"] == "mapping"]
    assert [m["va"] for m in maps] == ["0xffffffff80000000"]
    assert maps[0]["xen_bits"] == ["_PAGE_GUEST_KERNEL"]
    assert recs[0]["domain"] == "pv64" and recs[0]["xen"] == {"version": "4.17", "debug": False}


def test_numpy_and_struct_engines_agree(image):
    with_np = run_gdb(f"xen-pte-walk --json --no-coalesce {image}").ok().json_lines()
    without = run_gdb(f"xen-pte-walk --json --no-coalesce {image}", numpy=False).ok().json_lines()
    strip = lambda recs: [r for r in recs if r["type"] != "summary"]
    assert strip(with_np) == strip(without)


def _on_a_terminal(*commands):
    """Run gdb with a pseudo-terminal as stdout (gdb styles only for terminals); return output."""
    import os, pty, subprocess
    from gdbrun import DEPS, GDB, LOADER
    master, slave = pty.openpty()
    argv = [GDB, "-batch", "-nx", "-iex", f"python import sys; sys.path[:0] = "
            f"{[str(ROOT), str(DEPS)]!r}", "-ex", f"source {LOADER}"]
    for c in commands:
        argv += ["-ex", c]
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, TERM="xterm"))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode()


def test_output_goes_through_gdb_and_styles_follow_gdb(image):
    # Batch mode turns gdb's styling off: no escapes even on a terminal...
    assert "\x1b[" not in _on_a_terminal(f"xen-pte-walk {image}")
    # ...until the user turns it on; never into a pipe (MI front ends, scripts).
    assert "\x1b[" in _on_a_terminal("set style enabled on", f"xen-pte-walk {image}")
    piped = run_gdb("set style enabled on", f"xen-pte-walk {image}").stdout
    assert "\x1b[" not in piped and "RWX U" in piped
    # All output goes through gdb's own stream (so its pager and to_string see it).
    got = gdb_python(f'import gdb, json\nprint(json.dumps(len(gdb.execute('
                     f'"xen-pte-walk {image}", to_string=True).splitlines())))')
    assert got == 9  # header, note (AC unknown), table head + rule, 4 rows, summary


def test_ctrl_c_stops_the_walk_with_a_summary(image):
    # A Ctrl-C reaches Python as KeyboardInterrupt at the next bytecode; raise it from inside
    # the walk (the 5th table read) to stop it at a known point.
    res = run_gdb(f"xen-pte-walk --json {image}", pre=[
        "from gdb_xenpte.sources import raw as R; _r = R.RawSource.read; n = [0]",
        "exec('def _read(self, a, s):\\n n[0] += 1\\n if n[0] == 5: raise KeyboardInterrupt\\n"
        " return _r(self, a, s)'); R.RawSource.read = _read"])
    assert "Traceback" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == ["xen-pte-walk: interrupted"]
    recs = res.json_lines()
    assert recs[0]["type"] == "header" and recs[-1]["type"] == "summary"
    assert recs[-1]["interrupted"] is True
    _validate(recs)


def test_entries_the_walk_cannot_follow(tmp_path):
    """A PML4E with PS=1 (#PF RSVD) and one whose table lies outside the image are records of
    their own kind, in the table and in JSON, and map nothing."""
    from builder import P, RW, US, Builder
    b = Builder("4level")
    b.map(0x400000, 0x200000, flags=P | RW | US)
    b.set(0x8000000000, "pml4", 0x83)
    b.set(0x10000000000, "pml4", 0x7FFF000 | 0x27)
    img = bytearray(0x800000)
    for addr, page in b.image().items():
        img[addr:addr + 4096] = page
    path = tmp_path / "odd.raw"
    path.write_bytes(bytes(img))
    regs = f"--raw {path}@0 --cr3 0x100000 --cr4 0x3006a0 --efer 0xd01"
    out = run_gdb(f"xen-pte-walk {regs}").ok().stdout
    assert "(#PF RSVD)" in out and "(table unreadable)" in out
    assert out.splitlines()[-1].startswith("3 mappings; 1 pages; 4K mapped; ")
    recs = run_gdb(f"xen-pte-walk --json {regs}").ok().json_lines()
    _validate(recs)
    assert [r.get("kind") for r in recs[1:-1]] == ["page", "rsvd", "unreadable"]
    assert recs[2]["verdicts"]["user_read"] == "fault:RSVD" and recs[2]["pa"] is None
    assert recs[-1]["counts"]["bytes"] == 4096 and len(recs[-1]["unreadable"]) == 1


@pytest.mark.parametrize("at", [1, 5])
def test_a_source_error_mid_walk_ends_the_json_with_a_summary(image, at):
    """Issue 19: a source that fails during the walk (a target gone, a file cut short) still
    ends the --json stream with the header and a summary: on the top-level table the walk
    cannot go on (the summary names the error, then the one error line); below it, the table
    is an unreadable record and the walk goes on."""
    res = run_gdb(f"xen-pte-walk --json {image}", pre=[
        "from gdb_xenpte.sources import raw as R; from gdb_xenpte.errors import SourceError; "
        "_r = R.RawSource.read; n = [0]",
        f"exec('def _read(self, a, s):\\n n[0] += 1\\n if n[0] == {at}: raise SourceError("
        f"\"guest.raw\", \"gone\")\\n return _r(self, a, s)'); R.RawSource.read = _read"])
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    recs = res.json_lines()
    assert recs[0]["type"] == "header" and recs[-1]["type"] == "summary"
    _validate(recs)
    if at == 1:
        assert len(errors) == 1 and errors[0].endswith("gone"), errors
        assert errors[0] == "xen-pte-walk: " + recs[-1]["error"]
    else:
        assert not errors and "error" not in recs[-1]
        assert [u["reason"] for u in recs[-1]["unreadable"]] == ["guest.raw: gone"]
