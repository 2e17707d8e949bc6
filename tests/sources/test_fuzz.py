"""Hypothesis fuzzing of every dump parser: mutated images may only raise our own errors.

Each format gets ``XENPTE_FUZZ_EXAMPLES`` examples (default 200, which keeps this file to a few
seconds). For a long run, e.g. before a release::

    XENPTE_FUZZ_EXAMPLES=20000 python3 -m pytest -q tests/sources/test_fuzz.py

Mutations are biased towards the structural parts of each image (headers, tables, notes): a byte
flip inside page data only changes the data, which tells us nothing about the parser.
"""

import os
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import cases, exercise

EXAMPLES = int(os.environ.get("XENPTE_FUZZ_EXAMPLES", "200"))
CASES = {c.name: c for c in cases()}
_WORKDIR = tempfile.TemporaryDirectory(prefix="xenpte-fuzz-")
_IMAGES = {}


def _image(name):
    """The valid image and its interesting offsets, written once per format."""
    if name not in _IMAGES:
        path = pathlib.Path(_WORKDIR.name) / f"{name}.orig"
        layout = CASES[name].write(path)
        image = path.read_bytes()
        hot = sorted({o for o in layout.offsets.values() if o < len(image)} | {0})
        _IMAGES[name] = (image, hot)
    return _IMAGES[name]


mutation = st.tuples(
    st.sampled_from(["hot", "anywhere"]),
    st.integers(min_value=0, max_value=1 << 20),   # position (reduced modulo the area)
    st.sampled_from(["byte", "zero", "ones", "word"]),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
)


def _mutate(image, hot, mutations, cut):
    data = bytearray(image)
    for where, pos, kind, value in mutations:
        if where == "hot":
            base = hot[pos % len(hot)]
            at = base + (pos >> 8) % 512
        else:
            at = pos % len(data)
        at = min(at, len(data) - 1)
        if kind == "byte":
            data[at] = value & 0xFF
        elif kind == "zero":
            data[at:at + 8] = bytes(len(data[at:at + 8]))
        elif kind == "ones":
            data[at:at + 8] = b"\xff" * len(data[at:at + 8])
        else:
            chunk = value.to_bytes(8, "little")
            data[at:at + 8] = chunk[:len(data[at:at + 8])]
    if cut is not None:
        del data[cut % (len(data) + 1):]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzz_parser(name):
    case = CASES[name]
    image, hot = _image(name)
    target = pathlib.Path(_WORKDIR.name) / f"{name}.dump"

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutations=st.lists(mutation, min_size=1, max_size=6),
           cut=st.one_of(st.none(), st.integers(min_value=0, max_value=len(image))),
           forced=st.booleans())
    def run(mutations, cut, forced):
        target.write_bytes(_mutate(image, hot, mutations, cut))
        outcome = exercise(target, case, case.fmt if forced else None)
        if outcome != "ok":
            assert target.name in outcome

    run()
