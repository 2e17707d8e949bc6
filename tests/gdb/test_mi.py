"""``-xen-pte-walk``: the same records over MI (pygdbmi), strings only, errors as ^error."""

import pytest
from pygdbmi.gdbcontroller import GdbController

from gdbrun import DEPS, GDB, LOADER, ROOT, run_gdb


@pytest.fixture
def mi():
    g = GdbController([GDB, "--nx", "--quiet", "--interpreter=mi3"])
    paths = [str(ROOT), str(DEPS)]
    g.write(f'-interpreter-exec console "python import sys; sys.path[:0] = {paths!r}"',
            timeout_sec=30)
    g.write(f'-interpreter-exec console "source {LOADER}"', timeout_sec=30)
    yield g
    g.exit()


def _result(responses):
    (res,) = [r for r in responses if r["type"] == "result"]
    return res


def _stringify(value):
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def test_mi_records_equal_the_json_lines(mi, image):
    res = _result(mi.write(f"-xen-pte-walk {image}", timeout_sec=60))
    assert res["message"] == "done"
    cli = run_gdb(f"xen-pte-walk --json {image}").json_lines()
    assert res["payload"]["records"] == _stringify(cli)


def test_mi_trace_and_errors(mi, image):
    res = _result(mi.write(f"-xen-pte-walk {image} 0x401234", timeout_sec=60))
    assert [r["type"] for r in res["payload"]["records"]] == ["header", "trace", "mapping"]
    err = _result(mi.write("-xen-pte-walk --bogus", timeout_sec=30))
    assert err["message"] == "error"
    assert err["payload"]["msg"] == "xen-pte-walk: unrecognized arguments: --bogus"
