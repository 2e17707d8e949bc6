"""Shared test setup: import the working tree's gdb_xenpte and the helpers beside this file."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# hypothesis keeps its example database outside the checkout (tests/targets/cachedir.py), so a
# test run leaves the work tree as it found it.
try:
    from hypothesis import settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    from targets.cachedir import cache_root

    from hypothesis.configuration import set_hypothesis_home_dir

    # Its home (constants cache, failure patches) too, not only the example database.
    set_hypothesis_home_dir(str(cache_root("hypothesis")))
    settings.register_profile("xenpte", database=DirectoryBasedExampleDatabase(
        str(cache_root("hypothesis"))))
    settings.load_profile("xenpte")
except ImportError:  # hypothesis is a test extra; tests that need it import it themselves
    pass


@pytest.fixture(scope="session")
def xen_crash():
    """A genuine Xen 4.17 kexec crash dump and what Xen's tools said before it, as a dict.

    The manifest of tests/targets/xen_crash.py (paths of vmcore.elf, vmcore.kdump, xen-syms; the
    domains with their xenctx CR3s and marker pages; the crashed pCPU ...). Made once per set of
    inputs (~100 s here, plus the shared Xen build) and cached; later sessions only read it.
    """
    from targets import xen_crash as target

    return target.load(target.artefacts())
