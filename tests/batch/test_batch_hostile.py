"""Hostile and accidental input to the batch tools (issue 19), one test per class: an output that
is an input, a full disk, diff input that is not ours, a file name with a newline, a closed port.

Every case ends in one line on stderr naming what and where, exit status 2 (usage, unreadable
input) or 1 (a target failed), no traceback, and the input files byte for byte as they were.
"""

import hashlib
import os
import pathlib
import time

import pytest

from batchrun import read_jsonl, run_tool
from fleet import write_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return write_fleet(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def walk(fleet, tmp_path_factory):
    out = tmp_path_factory.mktemp("walk") / "a.jsonl"
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "-o", out, "--quiet")
    assert res.returncode == 0, res.stderr
    return out


def _digest(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _one_line_error(res, prog, code=2):
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith(prog + ": ")
    return res.stderr.strip()


def _no_temporaries(directory):
    assert not [p for p in os.listdir(directory) if p.endswith(".part")]


def test_output_that_is_an_input_is_refused_before_anything_is_read(fleet, walk, tmp_path):
    directory = fleet["hvm-a.elf"].parent
    before = {p: _digest(p) for p in directory.iterdir()}
    # Through a glob, the same path, and a symlink (same inode, another name).
    link = tmp_path / "link.kdump"
    link.symlink_to(fleet["hvm-b.kdump"])
    for args, output in (((f"{directory}/hvm-*",), fleet["hvm-a.elf"]),
                         ((fleet["pv64.xc"],), fleet["pv64.xc"]),
                         ((fleet["hvm-b.kdump"],), link)):
        res = run_tool("xen_pte_dump", "--core", *args, "-o", output)
        line = _one_line_error(res, "xen-pte-dump")
        assert f"-o {output}: is an input" in line
    # --raw FILE@BASE and --summary-json too.
    res = run_tool("xen_pte_dump", "--raw", f"{fleet['pv64.xc']}@0", "--cr3", "0x1000",
                   "--summary-json", fleet["pv64.xc"])
    assert "--summary-json" in _one_line_error(res, "xen-pte-dump")
    # Two outputs on one file: refused too (the second rename would silently win).
    same = tmp_path / "both.json"
    res = run_tool("xen_pte_dump", "--core", fleet["pv64.xc"], "-o", same, "--summary-json",
                   same)
    assert "the records go there too" in _one_line_error(res, "xen-pte-dump")
    assert not same.exists()
    assert {p: _digest(p) for p in directory.iterdir()} == before
    _no_temporaries(directory)
    # xen-pte-diff A A -o A, and B as the output.
    copy = tmp_path / "b.jsonl"
    copy.write_bytes(walk.read_bytes())
    walk_digest = _digest(walk)
    for args in ((walk, walk, "-o", walk), (walk, copy, "-o", copy)):
        line = _one_line_error(run_tool("xen_pte_diff", *args), "xen-pte-diff")
        assert "is an input; refusing to overwrite it" in line
    assert _digest(walk) == walk_digest and _digest(copy) == walk_digest


def test_output_is_replaced_whole_or_left_as_it_was(tmp_path):
    """An output is written as a temporary file renamed at the end: a run that fails half-way
    leaves the old file untouched, a new file keeps the mode a plain open would give."""
    from scripts.output import AtomicFile
    old = tmp_path / "out.jsonl"
    old.write_text("old\n")
    old.chmod(0o640)
    with pytest.raises(RuntimeError):
        with AtomicFile(str(old)) as fh:
            fh.write("new, half written\n")
            raise RuntimeError("the run failed")
    assert old.read_text() == "old\n"
    _no_temporaries(tmp_path)
    with AtomicFile(str(old)) as fh:
        fh.write("new\n")
        assert old.read_text() == "old\n"  # nothing visible before the end
    assert old.read_text() == "new\n" and (old.stat().st_mode & 0o777) == 0o640
    fresh = tmp_path / "fresh.jsonl"
    with AtomicFile(str(fresh)) as fh:
        fh.write("x\n")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    _no_temporaries(tmp_path)


def test_full_disk_is_one_line(fleet, walk):
    """/dev/full: every write (or the close that flushes it) fails with ENOSPC."""
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "-o", "/dev/full")
    assert "/dev/full: No space left on device" in _one_line_error(res, "xen-pte-dump")
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "--summary",
                   "--summary-json", "/dev/full")
    assert "/dev/full: No space left on device" in res.stderr and "Traceback" not in res.stderr
    res = run_tool("xen_pte_diff", walk, walk, "-o", "/dev/full")
    assert "/dev/full: No space left on device" in _one_line_error(res, "xen-pte-diff")


def test_diff_input_that_is_not_ours_is_one_line(fleet, walk, tmp_path):
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(walk.read_bytes().splitlines(True)[0] + "caf\xe9\n".encode("latin-1"))
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 200_000 + "\n")
    cases = ((fleet["hvm-a.elf"], "not UTF-8 text"),  # a binary file: a dump given by mistake
             (latin, f"{latin}:2: not UTF-8 text"),
             (deep, f"{deep}:1: not a record (JSON nested too deeply)"))
    for bad, text in cases:
        for args in ((bad, walk), (walk, bad)):
            line = _one_line_error(run_tool("xen_pte_diff", *args), "xen-pte-diff")
            assert text in line, (args, line)


def test_file_name_with_a_newline_and_quotes(fleet, tmp_path):
    """The name reaches gdb inside an MI c-string and a shell-quoted argument: a newline, quotes
    and '$' must survive both, and the records name the file as it is."""
    odd = tmp_path / "guest\nb 'q\" $HOME.kdump"
    odd.write_bytes(fleet["hvm-b.kdump"].read_bytes())
    out = tmp_path / "odd.jsonl"
    res = run_tool("xen_pte_dump", "--core", odd, "-o", out, "--summary")
    assert res.returncode == 0, res.stderr
    recs = read_jsonl(out)
    assert {r["target"] for r in recs} == {str(odd)}
    plain = tmp_path / "plain.jsonl"
    assert run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "-o", plain,
                    "--quiet").returncode == 0
    # The same walk as the plainly named copy's (the header names the file: left out).
    strip = lambda rs: [{k: v for k, v in r.items() if k != "target"}  # noqa: E731
                        for r in rs if r["type"] != "header"]
    assert strip(recs) == strip(read_jsonl(plain)) and len(recs) > 3
    assert recs[0]["type"] == "header" and str(odd.name) in recs[0]["source"]
    # The summary names it on one line (the newline shown as \n).
    assert "guest\\nb 'q\" $HOME.kdump vCPU 0" in res.stdout
    # A failure naming it is one stderr line too.
    broken = tmp_path / "bad\nname.elf"
    broken.write_bytes(fleet["corrupt.elf"].read_bytes())
    res = run_tool("xen_pte_dump", "--core", broken, "-o", tmp_path / "bad.jsonl")
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "bad\\nname.elf" in res.stderr


def test_closed_port_fails_fast_and_names_the_target_once(tmp_path):
    import sys
    from batchrun import ROOT
    sys.path.insert(0, str(ROOT))
    from tests.targets.qemu import free_tcp_port
    spec = f"127.0.0.1:{free_tcp_port()}"
    out = tmp_path / "closed.jsonl"
    start = time.monotonic()
    res = run_tool("xen_pte_dump", "--remote", spec, "-o", out)
    took = time.monotonic() - start
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert took < 8, took  # gdb's own retry loop would take 15 s
    (line,) = res.stderr.splitlines()
    assert line.count(spec) == 1 and "Connection refused" in line, line
    (rec,) = read_jsonl(out)
    assert rec["type"] == "error" and rec["target"] == spec and spec not in rec["message"]
