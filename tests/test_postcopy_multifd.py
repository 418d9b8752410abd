"""Multifd + postcopy, both meanings: with a flush before LISTEN no schedule loses a page;
without it, or with channels still sending in postcopy, hypothesis finds a stale page and
shrinks it to the smallest case."""

import pytest
from hypothesis import find, given, settings, strategies as st

from conformance.rules import compat
from conformance.rules.postcopy_multifd import (
    ChannelPage,
    PostcopyMultifdModel,
    PostcopyPage,
    deliver,
    source_events,
)


@st.composite
def transfers(draw):
    channels = draw(st.integers(1, 3))
    pages = st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True)
    rounds = draw(st.lists(pages, min_size=1, max_size=3))
    post = draw(st.lists(st.integers(0, 3), max_size=4, unique=True))
    return channels, rounds, post


def final_versions(lanes):
    """What the source last sent of each page (its final guest RAM, as versions)."""
    last = {}
    for lane in lanes:
        for ev in lane:
            if isinstance(ev, (ChannelPage, PostcopyPage)):
                last[ev.page] = max(ev.version, last.get(ev.page, -1))
    return last


def run(channels, rounds, post, schedule, *, flush=True, meaning="precopy-only", barrier=True):
    lanes = source_events(rounds, channels, flush_before_postcopy=flush, postcopy_pages=post, meaning=meaning)
    model = PostcopyMultifdModel(channels, meaning)
    model.feed_all(deliver(lanes, schedule, barrier=barrier))
    return model, lanes


@given(transfers(), st.lists(st.integers(0, 3), max_size=60))
def test_flush_before_listen_keeps_every_page(t, schedule):
    channels, rounds, post = t
    schedule = [s % (channels + 1) for s in schedule]
    model, lanes = run(channels, rounds, post, schedule)
    assert model.violations == []
    assert model.ram == final_versions(lanes)


def _stale(meaning, flush):
    def bad(case):
        (channels, rounds, post), schedule = case
        model, _ = run(channels, rounds, post, [s % (channels + 1) for s in schedule], flush=flush, meaning=meaning)
        return any(v.code == "stale-page" for v in model.violations)
    return bad


@pytest.mark.parametrize("meaning, flush", [("precopy-only", False), ("during-postcopy", True)])
def test_hypothesis_finds_and_shrinks_the_stale_page(meaning, flush):
    (channels, rounds, post), schedule = find(
        st.tuples(transfers(), st.lists(st.integers(0, 3), max_size=60)), _stale(meaning, flush),
        settings=settings(max_examples=2000, database=None))
    # the smallest case: one channel, one page sent once in precopy and once by postcopy
    assert channels == 1 and sum(len(r) for r in rounds) == 1 and post == [rounds[-1][0]]
    model, _ = run(channels, rounds, post, [s % 2 for s in schedule], flush=flush, meaning=meaning)
    v = [v for v in model.violations if v.code == "stale-page"][0]
    assert v.severity.value == "silent-loss" and "lands after postcopy placed" in v.message
    if meaning == "precopy-only":  # and a channel delivered data after LISTEN, which it must not
        assert any(x.code == "multifd-page-in-postcopy" for x in model.violations)


def test_pair_permission_comes_from_the_compatibility_data():
    allowed = {v: not compat.capability_errors(v, ["postcopy-ram", "multifd"]) for v in ("7.2", "8.1", "10.0", "10.1")}
    assert allowed == {"7.2": True, "8.1": False, "10.0": False, "10.1": True}
    model = PostcopyMultifdModel(1, pair_allowed=allowed["10.0"])
    model.feed_all(deliver(source_events([[0]], 1, flush_before_postcopy=True, postcopy_pages=[]), []))
    assert [v.code for v in model.violations] == ["capability-pair-refused"]
