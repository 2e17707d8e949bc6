"""Shared test setup: import the working tree's gdb_xenpte and the helpers beside this file."""

import pathlib
import sys

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

    settings.register_profile("xenpte", database=DirectoryBasedExampleDatabase(
        str(cache_root("hypothesis"))))
    settings.load_profile("xenpte")
except ImportError:  # hypothesis is a test extra; tests that need it import it themselves
    pass
