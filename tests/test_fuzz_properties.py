"""The fuzz-marked properties: the reference loader and the reader on structure-edited and
byte-edited streams. In the default run they are ordinary hypothesis tests (the profile's
example count); under HypoFuzz they run as long as it is left running:

    HYPOTHESIS_PROFILE=fuzz .venv/bin/hypothesis fuzz --no-dashboard -- -m fuzz tests/test_fuzz_properties.py

Their property is the tool's promise on hostile input: a verdict, or one of wireformat's typed
decode errors — never any other exception.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conformance.tools.fuzz.loader import ACCEPTED, REJECTED, LoaderTarget
from conformance.versions import VERSIONS
from strategies.fuzz import fuzz_inputs
from tests.test_fuzz import SEED
from wireformat.errors import DecodeError
from wireformat.reader import StreamReader

pytestmark = pytest.mark.fuzz

# streams are large examples and a load is slow by hypothesis's measure; nothing else is
# suppressed (HypoFuzz refuses tests that suppress every health check)
SLOW_AND_LARGE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

_LOADERS: dict[str, LoaderTarget] = {}


def tally(name: str) -> None:
    """One line per execution into $MIGCONFORM_FUZZ_TALLY, when set: how
    tests/test_hypofuzz.py sees that HypoFuzz ran these properties."""
    path = os.environ.get("MIGCONFORM_FUZZ_TALLY")
    if path:
        with open(path, "a") as f:
            f.write(name + "\n")


def loader(version: str) -> LoaderTarget:
    # one per version for the whole session: HypoFuzz calls the test body many thousand times
    if version not in _LOADERS:
        _LOADERS[version] = LoaderTarget(version)
    return _LOADERS[version]


@given(fi=fuzz_inputs(SEED, max_edits=4), version=st.sampled_from(VERSIONS))
@settings(deadline=None, suppress_health_check=SLOW_AND_LARGE)
def test_the_loader_judges_every_edited_stream(fi, version):
    tally("loader")
    verdict, first = loader(version).run(fi.data())
    assert verdict in (ACCEPTED, REJECTED)
    assert (first is None) == (verdict == ACCEPTED)


@st.composite
def byte_edits(draw, data: bytes) -> bytes:
    """The seed with a few bytes overwritten, a slice cut out or repeated, or cut short."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(out) - 1)))
        kind = draw(st.sampled_from(("set", "cut", "repeat", "truncate")))
        if kind == "set":
            out[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "cut":
            del out[at:at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            out[at:at] = out[at:at + draw(st.integers(1, 64))]
        else:
            del out[at:]
    return bytes(out)


@given(data=byte_edits(SEED.data))
@settings(deadline=None, suppress_health_check=SLOW_AND_LARGE)
def test_the_reader_frames_or_raises_a_decode_error(data):
    import io

    tally("reader")
    try:
        for _ in StreamReader(io.BytesIO(data)):
            pass
    except DecodeError:
        pass
