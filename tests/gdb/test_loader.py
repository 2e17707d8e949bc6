"""The documented install: a fresh venv, ``pip install``, then the one line gdb needs.

gdb embeds Debian's /usr/bin/python3, not the venv's interpreter: the line printed by the
``xen-pte-gdbinit`` console script must load the commands all the same.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from gdbrun import GDB, ROOT


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    path = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    # Dependencies come from the package index when it is reachable; offline, the test's own
    # site-packages provides them through a .pth file (what --system-site-packages would do).
    proc = subprocess.run(pip + [str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(pip + ["--no-deps", "--no-build-isolation", str(ROOT)], check=True)
        import tabulate
        site = next((path / "lib").glob("python3*/site-packages"))
        (site / "deps.pth").write_text(str(pathlib.Path(tabulate.__file__).parents[1]) + "\n")
    return path


def test_console_script_prints_the_source_line(venv):
    out = subprocess.run([str(venv / "bin" / "xen-pte-gdbinit")], capture_output=True,
                         text=True, check=True).stdout
    (line,) = out.splitlines()
    assert line.startswith("source ") and line.endswith("/site-packages/gdb_xenpte/gdb_load.py")
    assert str(venv) in line


def test_the_line_loads_the_commands_into_gdb(venv, tmp_path):
    line = subprocess.run([str(venv / "bin" / "xen-pte-gdbinit")], capture_output=True,
                          text=True, check=True).stdout.strip()
    gdbinit = tmp_path / "gdbinit"
    gdbinit.write_text(line + "\n")  # as a user would: xen-pte-gdbinit >> ~/.gdbinit
    res = subprocess.run([GDB, "-batch", "-nx", "-x", str(gdbinit), "-ex", "help xen-pte-walk",
                          "-ex", "python import gdb_xenpte; print(gdb_xenpte.__file__)",
                          "-ex", "show xen-pte limit"],
                         capture_output=True, text=True, cwd=tmp_path, env=dict(
                             os.environ, PYTHONPATH=""), stdin=subprocess.DEVNULL)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    out = res.stdout.splitlines()
    assert out[0] == "Walk the guest page tables and explain every entry."
    assert any(ln.startswith(str(venv)) and ln.endswith("gdb_xenpte/__init__.py") for ln in out)
    assert out[-1].endswith("unlimited.")


def test_missing_dependency_is_one_clear_line(tmp_path):
    # A copy of the package alone (no tabulate beside it): loading says what is missing.
    import shutil
    shutil.copytree(ROOT / "gdb_xenpte", tmp_path / "gdb_xenpte")
    res = subprocess.run([GDB, "-batch", "-nx", "-ex",
                          f"source {tmp_path}/gdb_xenpte/gdb_load.py"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, PYTHONPATH=""))
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if not errors:  # gdb's own Python has tabulate installed system-wide: nothing to report
        pytest.skip("gdb's Python already has tabulate")
    assert len(errors) == 1 and "'tabulate' is not importable" in errors[0], errors
