"""Tab completion: option names, option choices, file paths after --core/--raw."""

from gdbrun import ROOT, run_gdb


def _complete(line):
    res = run_gdb(f"complete {line}")
    assert "Traceback" not in res.stderr, res.stderr
    return res.stdout.splitlines()


def test_options():
    assert _complete("xen-pte-walk --co") == ["xen-pte-walk --coalesce", "xen-pte-walk --core"]
    assert "xen-pte-walk --no-coalesce" in _complete("xen-pte-walk --no")


def test_choices():
    assert _complete("xen-pte-walk --domain pv") == ["xen-pte-walk --domain pv32",
                                                      "xen-pte-walk --domain pv64"]
    assert _complete("xen-pte-walk --smap h") == ["xen-pte-walk --smap hvm"]


def test_files_after_core_and_raw():
    base = ROOT / "gdb_xenpte"
    assert _complete(f"xen-pte-walk --core {base}/gdb_lo") == [
        f"xen-pte-walk --core {base}/gdb_load.py"]
    assert f"xen-pte-walk --raw {base}/data/" in _complete(f"xen-pte-walk --raw {base}/da")
    assert f"xen-pte-walk --json --core {ROOT}/pyproject.toml" in _complete(
        f"xen-pte-walk --json --core {ROOT}/pyp")


def test_addresses_complete_as_gdb_expressions(tmp_path):
    # A symbol file with one known symbol: ADDR arguments complete it like `print` does.
    import subprocess
    src = tmp_path / "s.c"
    src.write_text("int xen_pte_probe_symbol = 1;\n")
    obj = tmp_path / "s.o"
    subprocess.run(["cc", "-c", "-o", str(obj), str(src)], check=True)
    res = run_gdb(f"file {obj}", "complete xen-pte-walk xen_pte_probe_s",
                  "complete xen-pte-walk --json xen_pte_probe_s")
    assert res.stdout.splitlines() == ["xen-pte-walk xen_pte_probe_symbol",
                                       "xen-pte-walk --json xen_pte_probe_symbol"], res.stderr
