"""Run the real gdb in batch mode with the working tree's extension loaded.

gdb embeds its own Python, which need not see the test interpreter's packages: the directory
holding tabulate (for the test interpreter) goes on gdb's sys.path next to the working tree, then
the loader file is sourced exactly as a user would.
"""

import json
import os
import pathlib
import shutil
import subprocess
from typing import Sequence

import jsonschema
import pytest
import tabulate
from referencing import Registry, Resource

from tests.targets.gdb import GdbResult

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOADER = ROOT / "gdb_xenpte" / "gdb_load.py"
DEPS = pathlib.Path(tabulate.__file__).resolve().parent.parent
GDB = shutil.which("gdb")
DATA = ROOT / "gdb_xenpte" / "data"


def validators():
    """(walk, check) JSON Schema validators, the check schema resolving its $ref to the walk's:
    the one place the tests load the schemas."""
    walk = json.loads((DATA / "xen-pte-walk.schema.json").read_text())
    check = json.loads((DATA / "xen-pte-check.schema.json").read_text())
    registry = Registry().with_resources([
        ("gdb_xenpte/xen-pte-walk.schema.json", Resource.from_contents(walk)),
        ("gdb_xenpte/xen-pte-check.schema.json", Resource.from_contents(check))])
    return (jsonschema.Draft202012Validator(walk, registry=registry),
            jsonschema.Draft202012Validator(check, registry=registry))


def run_gdb(*commands: str, pre: Sequence[str] = (), numpy: bool = True, timeout: int = 120,
            load: bool = True) -> GdbResult:
    """Run ``gdb -batch -nx`` with the extension loaded, then each command via -ex.

    :param pre: python statements run before loading (e.g. to hide numpy).
    :param numpy: False makes numpy unimportable in gdb's Python (the engine's struct path).
    """
    if GDB is None:
        pytest.fail("gdb is not installed (Debian package 'gdb'; .ci/run installs it)")
    paths = [str(ROOT), str(DEPS)]
    setup = f"import sys; sys.path[:0] = {paths!r}"
    if not numpy:
        setup += "; sys.modules['numpy'] = None"
    argv = [GDB, "-batch", "-nx", "-iex", f"python {setup}"]
    for stmt in pre:
        argv += ["-iex", f"python {stmt}"]
    if load:
        argv += ["-ex", f"source {LOADER}"]
    for c in commands:
        argv += ["-ex", c]
    env = dict(os.environ, TERM="dumb", COLUMNS="200")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    return GdbResult(argv, proc.returncode, proc.stdout, proc.stderr)


def gdb_python(script: str, **kw) -> object:
    """Run a Python snippet inside gdb (after loading); it must print one JSON value last."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    try:
        res = run_gdb(f"source {f.name}", **kw)
    finally:
        os.unlink(f.name)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, res.stderr
    return json.loads(lines[-1])

