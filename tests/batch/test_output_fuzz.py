"""Fuzzing the output = input class (issue 19): however an output is spelled — the input's own
path, ``./`` or ``dir/../`` detours, a symlink, a hard link, a glob that matched it, the summary
JSON instead of the records — a run never writes over an input; an output that is no input is
written whole, with nothing temporary left behind.

``XENPTE_OUTPUT_FUZZ_EXAMPLES`` examples (default 30; the tools run in this process, gdb only for
the runs that are allowed to go ahead)::

    XENPTE_OUTPUT_FUZZ_EXAMPLES=1500 python3 -m pytest -q tests/batch/test_output_fuzz.py
"""

import contextlib
import hashlib
import io
import os
import pathlib

from hypothesis import HealthCheck, given, settings, strategies as st

from batchrun import ROOT
from fleet import write_fleet

EXAMPLES = int(os.environ.get("XENPTE_OUTPUT_FUZZ_EXAMPLES", "30"))
NAMES = ("hvm-a.elf", "hvm-b.kdump", "pv64.xc")
SPELLINGS = ("same", "dot", "detour", "symlink", "hardlink", "fresh")


def _state(directory: pathlib.Path) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in directory.iterdir() if p.is_file() and not p.is_symlink()}


def _spell(how: str, target: pathlib.Path, work: pathlib.Path, n: int) -> str:
    """An output path that is ``target`` (or, ``fresh``, a new file) spelled some way."""
    if how == "same":
        return str(target)
    if how == "dot":
        return os.path.relpath(target, ROOT) if n % 2 else f"./{os.path.relpath(target, ROOT)}"
    if how == "detour":
        return f"{target.parent}/../{target.parent.name}/{target.name}"
    if how == "symlink":
        link = work / f"link{n}"
        link.symlink_to(target)
        return str(link)
    if how == "hardlink":
        link = work / f"hard{n}"
        os.link(target, link)
        return str(link)
    return str(work / f"fresh{n}.out")


def _run(module: str, argv) -> tuple:
    from scripts import xen_pte_diff, xen_pte_dump
    main = {"dump": xen_pte_dump.main, "diff": xen_pte_diff.main}[module]
    err, out = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)  # "dot" spellings are relative to the repository
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main([str(a) for a in argv])
    finally:
        os.chdir(cwd)
    return code, err.getvalue()


_COUNTER = [0]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tool=st.sampled_from(("dump", "diff")),
       inputs=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True),
       victim=st.integers(0, 2), how=st.sampled_from(SPELLINGS),
       glob=st.booleans(), summary_json=st.booleans())
def test_no_spelling_of_an_input_is_written_over(tmp_path_factory, tool, inputs, victim, how,
                                                  glob, summary_json):
    _COUNTER[0] += 1
    n = _COUNTER[0]
    base = tmp_path_factory.getbasetemp() / "output-fuzz"
    dumps = base / "dumps"
    if not dumps.exists():
        dumps.mkdir(parents=True)
        write_fleet(dumps)
        for name in ("corrupt.elf",):
            (dumps / name).unlink()
        walks = base / "walks"
        walks.mkdir()
        for name in NAMES:
            code, err = _run("dump", ["--core", dumps / name, "-o", walks / f"{name}.jsonl",
                                      "--quiet", "-j", "1"])
            assert code == 0, err
    walks = base / "walks"
    work = base / f"work{n}"
    work.mkdir()
    folder = dumps if tool == "dump" else walks
    files = [folder / (name if tool == "dump" else f"{name}.jsonl") for name in inputs]
    if tool == "diff":
        files = (files + files)[:2]  # A and B (A A when one file was drawn)
    target = files[victim % len(files)]  # an input, spelled some way (or a fresh file)
    output = _spell(how, target, work, n)
    before = _state(folder)

    if tool == "dump":
        cores = [f"{dumps}/hvm-*"] + [str(f) for f in files if "hvm-" not in f.name] \
            if glob else [str(f) for f in files]
        argv = ["--core", *cores, "-j", "1", "--quiet"]
        argv += ["--summary-json", output] if summary_json else ["-o", output]
        code, err = _run("dump", argv)
    else:
        a, b = files
        code, err = _run("diff", [a, b, "-o", output])
    refused = how != "fresh"
    assert "Traceback" not in err
    assert _state(folder) == before, (argv if tool == "dump" else (a, b, output))
    if refused:
        assert code == 2 and len(err.splitlines()) == 1 and "is an input" in err, err
    else:
        assert code in (0, 1), err
        assert os.path.isfile(output) and os.path.getsize(output) > 0
    for directory in (folder, work):
        assert not [p for p in os.listdir(directory) if p.endswith(".part")]
