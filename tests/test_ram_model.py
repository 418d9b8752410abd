"""The multifd RAM reference model (conformance/rules/ram_model.py) under generated transfers and
delivery schedules (strategies/transfers.py), and on the real 7.2 / 10.0 captures.

What the properties say: every schedule the protocol permits ends with the source's RAM and
no violation; the barrier is what makes that true — a destination that enforces it ends
right under *any* delivery order, and one that does not is caught by hypothesis with a
stale page, shrunk to the smallest case (2 rounds, 1 page, 2 lanes), in both sync modes;
a missing SYNC hangs the destination.
"""

from __future__ import annotations

import io
import lzma
import random
import time
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, find, given, settings, strategies as st

from conformance.rules.ram_model import (
    MAIN,
    ChannelPacket,
    ChannelSync,
    Eos,
    Flush,
    MainPage,
    RamModel,
    channel_events,
    lane_of,
    main_events,
    run_schedule,
)
from strategies.transfers import (
    Transfer,
    breaks_barrier,
    permitted_schedules,
    transfers_missing_a_sync,
    transfers_with_schedules,
)
from wireformat.multifd import MultifdChannelReader
from wireformat.reader import StreamReader

DATA = Path(__file__).parent / "data" / "multifd"
PAGE = 4096
MODES = ["flush", "per-section"]


def run(t: Transfer, schedule, *, barrier: bool = True) -> RamModel:
    return run_schedule(t.lanes, schedule, RamModel(t.channels, t.mode, barrier=barrier))


def lanes_used(t: Transfer) -> set[int]:
    return {lane_of(e) for lane in t.lanes for e in lane if type(e) in (ChannelPacket, MainPage)}


# --- examples ----------------------------------------------------------------------------------


P = ("pc.ram", 0)


def _two_rounds(mode: str) -> Transfer:
    """Page P sent in round 0 on channel 0 and in round 1 on channel 1."""
    sync_point = Flush() if mode == "flush" else Eos()
    return Transfer(mode=mode, channels=2, rounds=2, pages_per_packet=1, zero_pages_on="packet", duplicates=False,
                    lanes=((ChannelPacket(0, (("pc.ram", 0, b"r0"),), round=0), ChannelSync(0), ChannelSync(0)),
                           (ChannelSync(1), ChannelPacket(1, (("pc.ram", 0, b"r1"),), round=1), ChannelSync(1)),
                           (sync_point, sync_point)),
                    dirtied=((0,), (0,)), final_ram={P: b"r1"})


# channel 1 goes first, right through its SYNC, then the main stream, then channel 0
_LATE_CHANNEL0 = (1, 1, 1, MAIN, MAIN, 0, 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_the_barrier_holds_back_what_comes_early(mode):
    t = _two_rounds(mode)
    assert breaks_barrier(t, _LATE_CHANNEL0)
    m = run(t, _LATE_CHANNEL0)
    assert m.violations == [] and m.image() == t.final_ram
    assert m.ram[P] == (1, 1, b"r1")  # round 1, channel 1
    assert m.deferred > 0 and m.stats()["held"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_without_the_barrier_the_old_page_wins(mode):
    m = run(_two_rounds(mode), _LATE_CHANNEL0, barrier=False)
    assert m.codes == ["stale-page"]
    v = m.violations[0]
    assert (v.severity.value, v.channel) == ("silent-loss", "multifd0")
    assert "page pc.ram@0x0 of round 0 from multifd0 written after the same page of round 1 from multifd1" in v.message
    assert m.image()[P] == b"r0"


def test_same_round_duplicates_with_identical_bytes_are_no_violation():
    """QEMU 7.2 opens a packet with the last page of the previous one, on another channel,
    between the same sync points; the bytes are the same, so the order does not matter."""
    lanes = {0: [ChannelPacket(0, (("pc.ram", 0, b"x"), ("pc.ram", PAGE, b"y"))), ChannelSync(0)],
             1: [ChannelPacket(1, (("pc.ram", PAGE, b"y"),)), ChannelSync(1)], MAIN: [Eos()]}
    for schedule in [(0, 0, 1, 1, MAIN), (1, 1, 0, 0, MAIN)]:
        m = run_schedule(lanes, schedule, RamModel(2, "per-section"))
        assert m.violations == [] and m.image() == {("pc.ram", 0): b"x", ("pc.ram", PAGE): b"y"}


def test_same_round_different_bytes_on_two_lanes_is_a_race():
    lanes = {0: [ChannelPacket(0, (("pc.ram", 0, b"x"),)), ChannelSync(0)],
             1: [ChannelPacket(1, (("pc.ram", 0, b"z"),)), ChannelSync(1)], MAIN: [Flush()]}
    m = run_schedule(lanes, (0, 1, 0, 1, MAIN), RamModel(2, "flush"))
    assert m.codes == ["page-race"]
    assert m.violations[0].severity.value == "silent-loss"


def test_eos_is_a_sync_point_only_per_section():
    # flush mode: the EOS ending a section does not wait for SYNCs, a FLUSH does
    m = RamModel(1, "flush")
    m.feed(Eos())
    m.feed(Flush())
    assert m.main_epoch == 0 and m.deferred == 1  # the FLUSH waits for channel 0's SYNC
    m.feed(ChannelSync(0))
    assert m.main_epoch == 1 and m.close() == []
    m = RamModel(1, "per-section")
    m.feed(Eos())
    assert m.main_epoch == 0 and m.close()[0].code == "sync-deadlock"


def test_a_missing_sync_hangs_the_destination():
    t = _two_rounds("flush").without_sync(1, 1)
    m = run(t, (0, 0, 0, 1, 1, MAIN, MAIN))
    assert m.codes == ["sync-deadlock"]
    v = m.violations[0]
    assert (v.severity.value, v.channel) == ("reject", "main")
    assert "waits at sync point 2 for the SYNC of multifd1" in v.message


def test_an_extra_sync_leaves_the_packets_after_it_unloaded():
    lanes = {0: [ChannelSync(0), ChannelSync(0), ChannelPacket(0, (("pc.ram", 0, b"x"),))], MAIN: [Flush()]}
    m = run_schedule(lanes, (0, 0, 0, MAIN), RamModel(1, "flush"))
    assert m.codes == ["sync-unreleased"]
    assert "1 pages" in m.violations[0].message and m.image() == {}


def test_a_misplaced_sync_defeats_the_barrier():
    """A source that sends one SYNC too early on channel 0 lets that channel's round-0 page
    run in epoch 1, beside channel 1's round-1 page: the barrier holds, yet the page is stale
    — the model judges by the round the source sent it in."""
    t = _two_rounds("flush").with_extra_sync(0, 0)
    m = run(t, (1, 0, MAIN, 1, 0, 0, 0, 1, MAIN))
    assert m.codes == ["stale-page"]


def test_channel_out_of_range_is_a_usage_error():
    with pytest.raises(ValueError):
        RamModel(2).feed(ChannelSync(2))


# --- properties ------------------------------------------------------------------------------------


@given(transfers_with_schedules(permitted=True))
def test_every_permitted_schedule_ends_with_the_source_ram(ts):
    t, schedule = ts
    assert not breaks_barrier(t, schedule)
    m = run(t, schedule)
    assert m.violations == [], (t.describe(), [v.message for v in m.violations])
    assert m.image() == t.final_ram
    assert m.deferred == 0  # the protocol's order is the destination's order: nothing held back
    # every page holds the write of the last round that dirtied it
    last_round = {("pc.ram", i * PAGE): r for r, pages in enumerate(t.dirtied) for i in pages}
    assert {k: v[0] for k, v in m.ram.items()} == last_round


@given(transfers_with_schedules(permitted=True))
def test_a_permitted_schedule_needs_no_barrier(ts):
    """Processing in a permitted order is correct even by a destination without the barrier."""
    t, schedule = ts
    m = run(t, schedule, barrier=False)
    assert m.violations == [] and m.image() == t.final_ram


@given(transfers_with_schedules(permitted=False))
def test_the_barrier_makes_any_delivery_order_safe(ts):
    t, schedule = ts
    assert breaks_barrier(t, schedule)
    m = run(t, schedule)
    assert m.violations == [], (t.describe(), [v.message for v in m.violations])
    assert m.image() == t.final_ram
    assert m.deferred > 0
    without = run(t, schedule, barrier=False)
    event("the same order without the barrier: " + (",".join(sorted(set(without.codes))) or "no violation"))


@given(transfers_missing_a_sync(), st.data())
def test_a_missing_sync_always_deadlocks(tcs, data):
    t, channel, k = tcs
    m = run(t, data.draw(permitted_schedules(t)))
    deadlocks = [v for v in m.violations if v.code == "sync-deadlock"]
    assert len(deadlocks) == 1 and f"multifd{channel}" in deadlocks[0].message
    # a SYNC missing before the last round also lets that channel's next round run one epoch
    # early: the model may report stale pages too; nothing else
    assert set(m.codes) <= {"sync-deadlock", "stale-page"}


def _stale_without_barrier(ts) -> bool:
    t, schedule = ts
    return "stale-page" in run(t, schedule, barrier=False).codes


FIND_SETTINGS = settings(max_examples=5000, database=None, deadline=None, phases=[Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("mode", MODES)
def test_hypothesis_finds_and_shrinks_a_stale_page_without_the_barrier(mode, capsys):
    t, schedule = find(transfers_with_schedules(permitted=False, mode=mode), _stale_without_barrier,
                       settings=FIND_SETTINGS, random=random.Random(0))
    m = run(t, schedule, barrier=False)
    with capsys.disabled():
        print(f"\nshrunk stale-page counterexample, mode {mode}:\n{t.describe()}\nschedule (barrier off):\n"
              f"{t.describe_schedule(schedule)}\n  -> {m.violations[0].message}")
    # minimal: two rounds, one page sent once per round, on two lanes; nothing else
    assert t.rounds == 2
    assert [len(d) for d in t.dirtied] == [1, 1] and len({p for d in t.dirtied for p in d}) == 1
    assert t.page_writes() == 2 and len(lanes_used(t)) == 2
    assert t.channels <= 2 and t.pages_per_packet == 1
    assert m.codes == ["stale-page"]
    # and the same transfer and delivery order with the barrier: correct
    ok = run(t, schedule)
    assert ok.violations == [] and ok.image() == t.final_ram


# --- real captures -----------------------------------------------------------------------------------

CAPTURES = {"qemu72-i440fx-7.2": "per-section", "qemu100-i440fx-10.0": "flush", "qemu100-i440fx-7.2": "per-section"}


def _load(name: str, part: str) -> bytes:
    return lzma.decompress((DATA / f"{name}.{part}.bin.xz").read_bytes())


@lru_cache(maxsize=None)
def capture_transfer(name: str) -> Transfer:
    """A capture's events as a Transfer (lanes only; rounds are the lanes' own epochs)."""
    main = tuple(main_events(StreamReader(io.BytesIO(_load(name, "main")))))
    chans = {}
    for part in ("multifd0", "multifd1"):
        evs = tuple(channel_events(MultifdChannelReader(io.BytesIO(_load(name, part)), part, copy=True)))
        chans[lane_of(evs[0])] = evs
    return Transfer(mode=CAPTURES[name], channels=2, rounds=sum(type(e) is ChannelSync for e in chans[0]),
                    pages_per_packet=128, zero_pages_on="main" if any(type(e) is MainPage for e in main) else "packet",
                    duplicates=name.startswith("qemu72"), lanes=(chans[0], chans[1], main), dirtied=(), final_ram={})


@lru_cache(maxsize=None)
def expected_pc_ram() -> dict[int, bytes]:
    """The guest RAM file of the captures (index.json "ram_file"): pages 0 … 511 non-zero,
    drawn in page order from random.Random(1234); page i % 64 == 7 random, the others a
    16-byte pattern (be32 i, b'migconf!', 4 random bytes) 256 times; the rest zero."""
    rnd = random.Random(1234)
    pages = {}
    for i in range(512):
        if i % 64 == 7:
            pages[i] = rnd.randbytes(PAGE)
        else:
            pages[i] = (i.to_bytes(4, "big") + b"migconf!" + rnd.randbytes(4)) * (PAGE // 16)
    return pages


def assert_pc_ram(m: RamModel) -> None:
    exp = expected_pc_ram()
    img = {o // PAGE: d for (b, o), d in m.image().items() if b == "pc.ram"}
    assert set(img) == set(range((32 << 20) // PAGE))  # every page was sent, as data or as zero
    wrong = [i for i, d in img.items() if d != (m.content(exp[i]) if i in exp else None)
             and not (i not in exp and d == m.content(bytes(PAGE)))]
    assert wrong == []


def _some_schedules(t: Transfer):
    yield "main first", tuple([MAIN] * len(t.main) + [0] * len(t.lanes[0]) + [1] * len(t.lanes[1]))
    yield "channels first", tuple([1] * len(t.lanes[1]) + [0] * len(t.lanes[0]) + [MAIN] * len(t.main))
    rnd = random.Random(7)
    left = {lane: len(t.lanes[lane]) for lane in (0, 1, MAIN)}
    order = []
    while any(left.values()):
        lane = rnd.choice([ln for ln in left if left[ln]])
        k = min(left[lane], rnd.randint(1, 40))
        order += [lane] * k
        left[lane] -= k
    yield "random interleaving", tuple(order)


@pytest.mark.parametrize("name", CAPTURES)
def test_real_capture_loads_the_guest_ram(name):
    t = capture_transfer(name)
    for label, schedule in _some_schedules(t):
        m = run_schedule(t.lanes, schedule, RamModel(2, t.mode, hash_pages=True))
        assert m.violations == [], (label, [v.one_line() for v in m.violations])
        assert m.main_epoch == 3 and m.syncs == [3, 3], label
        assert_pc_ram(m)


@pytest.mark.parametrize("name", CAPTURES)
@settings(max_examples=5)
@given(data=st.data())
def test_real_capture_under_permitted_schedules(name, data):
    t = capture_transfer(name)
    m = run_schedule(t.lanes, data.draw(permitted_schedules(t)), RamModel(2, t.mode, hash_pages=True))
    assert m.violations == [] and m.deferred == 0
    assert_pc_ram(m)


def test_real_72_duplicates_are_same_round_and_harmless():
    """The 7.2 capture sends some pages twice between two sync points on the two channels:
    the model sees them in the same round with identical bytes and says nothing."""
    t = capture_transfer("qemu72-i440fx-7.2")
    seen: dict = {}
    dups = 0
    for c in (0, 1):
        r = 0
        for e in t.lanes[c]:
            if type(e) is ChannelSync:
                r += 1
                continue
            for b, o, d in e.pages:
                if (b, o) in seen:
                    dups += 1
                    assert seen[(b, o)][0] == r and seen[(b, o)][1] != c and seen[(b, o)][2] == d
                seen[(b, o)] = (r, c, d)
    assert dups >= 1
    for label, schedule in _some_schedules(t):
        m = run_schedule(t.lanes, schedule, RamModel(2, t.mode, barrier=False, hash_pages=True))
        assert m.violations == [], label  # not even without the barrier: each page is sent in one round only


def test_real_capture_missing_sync_deadlocks():
    t = capture_transfer("qemu100-i440fx-10.0").without_sync(1, 2)
    m = run_schedule(t.lanes, next(_some_schedules(t))[1], RamModel(2, t.mode, hash_pages=True))
    assert m.codes == ["sync-deadlock"]


# --- speed -----------------------------------------------------------------------------------------------


@pytest.mark.bench
def test_bench_schedules_per_second(benchmark):
    """Schedules/s of the model on generated transfers (delivery + close), and hypothesis
    examples/s of the main property (generation + model)."""
    cases = []

    @settings(max_examples=300, database=None, phases=[Phase.generate])
    @given(transfers_with_schedules(permitted=True))
    def collect(ts):
        cases.append(ts)

    t0 = time.perf_counter()
    collect()
    gen = time.perf_counter() - t0

    def all_cases():
        for t, s in cases:
            run(t, s)

    benchmark(all_cases)
    per_s = len(cases) / benchmark.stats.stats.mean
    events = sum(len(t) for t, _ in cases) / len(cases)
    benchmark.extra_info.update(schedules_per_s=round(per_s), events_per_schedule=round(events, 1),
                                hypothesis_examples_per_s=round(len(cases) / gen))
    print(f"\nRAM model: {per_s:,.0f} schedules/s ({events:.1f} events each); hypothesis generation + model: "
          f"{len(cases) / gen:,.0f} examples/s")


@pytest.mark.bench
@pytest.mark.parametrize("name", ["qemu72-i440fx-7.2", "qemu100-i440fx-10.0"])
def test_bench_real_capture_schedule(benchmark, name):
    """One real capture (every page of a 32 MiB guest) through the model, random interleaving."""
    t = capture_transfer(name)
    schedule = list(_some_schedules(t))[2][1]
    m = benchmark(lambda: run_schedule(t.lanes, schedule, RamModel(2, t.mode)))
    assert m.violations == []
    mean = benchmark.stats.stats.mean
    writes = sum(len(e.pages) if type(e) is ChannelPacket else type(e) is MainPage for lane in t.lanes for e in lane)
    benchmark.extra_info.update(events=len(schedule), page_writes=writes, schedules_per_s=round(1 / mean, 1))
    print(f"\n{name}: {len(schedule)} events, {writes} page writes: {1 / mean:,.1f} schedules/s, "
          f"{len(schedule) / mean:,.0f} events/s, {writes / mean:,.0f} page writes/s")
