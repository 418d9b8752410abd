"""Hypothesis strategies for multi-round multifd transfers and the orders a destination can
receive them in (QEMU migration/multifd.c's syncs; model: conformance.rules.ram_model).

A *transfer* is what a conforming source emits over R rounds (sync epochs): in round r it
sends the pages dirtied in that round — non-zero pages in multifd packets of up to
`pages_per_packet` pages (one more when a 7.2 duplicate opens the packet), each packet on a
channel of its choice; zero pages either as ZERO
records on the main stream (7.2 … 8.2, legacy zero-page detection) or in the packets' zero
list (9.0+) — then a SYNC on every channel, then the main stream's sync point: a
MULTIFD_FLUSH record (mode "flush", with EOS records ending sections wherever, which are no
sync points) or the EOS ending the round's section (mode "per-section"). With
`duplicates` the source has QEMU 7.2's habit of opening a packet with the last page of the
previous one (same round, identical bytes, possibly another channel).

A *schedule* is a delivery order: a tuple naming, for each event, the lane it comes from
(`MAIN` or a channel number); each lane is FIFO. `permitted_schedules` draws orders the
protocol allows as processing orders (a channel blocks after its SYNC until the main stream
passes the matching sync point, which waits for every channel's SYNC);
`barrier_breaking_schedules` draws per-lane-FIFO orders that break that rule at least once.
The barrier rule is implemented here independently of the model, so "a permitted schedule
is processed without holding anything back" is a real cross-check.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterator

from hypothesis import reject, strategies as st

from conformance.rules.ram_model import (
    MAIN,
    MODES,
    ChannelPacket,
    ChannelSync,
    Content,
    Eos,
    Event,
    Flush,
    MainPage,
    PageKey,
    describe_event,
    is_sync_point,
    lane_name,
)

PAGE_SIZE = 4096
BLOCK = "pc.ram"
ZERO_ON = ("packet", "main")


def page_key(i: int) -> PageKey:
    return (BLOCK, i * PAGE_SIZE)


def page_bytes(i: int, r: int) -> bytes:
    """The (short) contents the source gives page i in round r: distinct per page and round."""
    return b"p%d.r%d" % (i, r)


@dataclass(frozen=True)
class Transfer:
    """A source's multifd transfer. `lanes[c]` are channel c's events and `lanes[MAIN]` (the
    last entry) the main stream's; `final_ram` is the source's RAM at the end (page → bytes,
    None for a zero page), `dirtied[r]` the page numbers sent in round r, in send order."""

    mode: str
    channels: int
    rounds: int
    pages_per_packet: int
    zero_pages_on: str
    duplicates: bool
    lanes: tuple[tuple[Event, ...], ...]
    dirtied: tuple[tuple[int, ...], ...]
    final_ram: dict[PageKey, Content] = field(compare=False)

    @property
    def main(self) -> tuple[Event, ...]:
        return self.lanes[MAIN]

    @property
    def lane_ids(self) -> list[int]:
        return [*range(self.channels), MAIN]

    def __len__(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    def events(self, schedule) -> Iterator[Event]:
        """The events in the order the schedule delivers them."""
        pos = [0] * (self.channels + 1)
        lanes = self.lanes
        for lane in schedule:
            i = pos[lane]
            yield lanes[lane][i]
            pos[lane] = i + 1

    def page_writes(self) -> int:
        return sum(len(e.pages) for lane in self.lanes for e in lane if type(e) is ChannelPacket) + \
            sum(1 for e in self.main if type(e) is MainPage)

    def describe(self) -> str:
        head = (f"mode={self.mode}, {self.channels} channel(s), {self.rounds} round(s), {self.pages_per_packet} page(s) "
                f"per packet, zero pages on {self.zero_pages_on}{', 7.2 duplicates' if self.duplicates else ''}; "
                f"dirtied per round: {list(map(list, self.dirtied))}")
        rows = [head]
        for lane in self.lane_ids:
            evs = " | ".join(describe_event(e).split(" ", 1)[1] for e in self.lanes[lane])
            rows.append(f"  {lane_name(lane):<9} {evs}")
        return "\n".join(rows)

    def describe_schedule(self, schedule) -> str:
        return "\n".join(f"  {i:>3}. {describe_event(e)}" for i, e in enumerate(self.events(schedule), 1))

    def without_sync(self, channel: int, k: int) -> "Transfer":
        """The same transfer with channel's k-th SYNC (0-based) dropped."""
        evs, seen = [], 0
        for e in self.lanes[channel]:
            if type(e) is ChannelSync:
                seen += 1
                if seen == k + 1:
                    continue
            evs.append(e)
        lanes = list(self.lanes)
        lanes[channel] = tuple(evs)
        return replace(self, lanes=tuple(lanes))

    def with_extra_sync(self, channel: int, at: int) -> "Transfer":
        """The same transfer with one more SYNC inserted before event `at` of the channel."""
        evs = list(self.lanes[channel])
        evs.insert(at, ChannelSync(channel))
        lanes = list(self.lanes)
        lanes[channel] = tuple(evs)
        return replace(self, lanes=tuple(lanes))


def _value(draw, v):
    return draw(v) if isinstance(v, st.SearchStrategy) else v


def _first(pz):
    return pz[0]


@lru_cache(maxsize=None)
def _one_round(npages: int, channels: int) -> st.SearchStrategy:
    """The choices of one round: the pages dirtied, in send order, each with (number, zero?,
    the channel of the packet it opens, 7.2 duplicates: whether the packet boundary after
    it repeats it); and whether a section ends inside the round (flush mode). Every choice
    belongs to a page, so deleting a page leaves the others' choices alone."""
    page = st.tuples(st.integers(0, npages - 1), st.booleans(), st.integers(0, channels - 1), st.booleans())
    return st.tuples(st.lists(page, unique_by=_first, max_size=npages), st.booleans())


@st.composite
def transfers(draw, mode=None, channels=st.integers(1, 4), rounds: int | tuple[int, int] = (1, 4),
              pages=st.integers(1, 6), pages_per_packet=st.integers(1, 4), zero_pages_on=None,
              duplicates=None) -> Transfer:
    """A conforming source's transfer. `channels`, `pages` (the number of distinct guest
    pages it may touch), `pages_per_packet` are values or strategies; `mode` defaults to
    either sync mode, `zero_pages_on` to "packet" or "main", `duplicates` to either.
    `rounds` is a number or (min, max); the rounds are drawn as a list, so that shrinking
    deletes whole rounds."""
    mode = draw(st.sampled_from(MODES)) if mode is None else _value(draw, mode)
    n = _value(draw, channels)
    npages = _value(draw, pages)
    ppp = _value(draw, pages_per_packet)
    zero_on = draw(st.sampled_from(ZERO_ON)) if zero_pages_on is None else _value(draw, zero_pages_on)
    dup = draw(st.booleans()) if duplicates is None else _value(draw, duplicates)
    min_r, max_r = (rounds, rounds) if isinstance(rounds, int) else rounds
    plan = draw(st.lists(_one_round(npages, n), min_size=min_r, max_size=max_r))

    main: list[Event] = []
    chans: list[list[Event]] = [[] for _ in range(n)]
    final: dict[PageKey, Content] = {}
    dirtied = []
    for r, (dirty, eos_inside) in enumerate(plan):
        dirtied.append(tuple(i for i, *_ in dirty))
        buf: list[tuple[str, int, Content]] = []
        carry = None
        channel = 0

        def send():
            chans[channel].append(ChannelPacket(channel, tuple(buf), round=r))

        for i, zero, c, repeat in dirty:
            data = None if zero else page_bytes(i, r)
            key = page_key(i)
            final[key] = data
            if data is None and zero_on == "main":
                main.append(MainPage(BLOCK, key[1], None, round=r))
                continue
            if not buf:
                channel = c
                if carry is not None:
                    buf.append(carry)  # 7.2: this packet opens with the last page of the previous one
                    carry = None
            buf.append((BLOCK, key[1], data))
            if len(buf) >= ppp:
                send()
                carry = buf[-1] if dup and repeat else None
                buf = []
        if buf:
            send()
        for c in range(n):
            chans[c].append(ChannelSync(c))
        if mode == "flush":
            if eos_inside:
                main.append(Eos())  # a section ends inside the round: no sync point in this mode
            main.append(Flush())
        else:
            main.append(Eos())
    if mode == "flush":
        main.append(Eos())  # the END section's EOS after its FLUSH
    return Transfer(mode=mode, channels=n, rounds=len(plan), pages_per_packet=ppp, zero_pages_on=zero_on,
                    duplicates=dup, lanes=(*map(tuple, chans), tuple(main)), dirtied=tuple(dirtied), final_ram=final)


# --- schedules --------------------------------------------------------------------------------------


class _Barrier:
    """The protocol's rule over delivery positions (independent of the model)."""

    def __init__(self, t: Transfer):
        self.t = t
        self.pos = {lane: 0 for lane in t.lane_ids}
        self.syncs = [0] * t.channels
        self.epoch = 0

    def left(self, lane: int) -> int:
        return len(self.t.lanes[lane]) - self.pos[lane]

    def run_length(self, lane: int) -> int:
        """How many events at the head of `lane` may be processed one after the other now."""
        evs, i = self.t.lanes[lane], self.pos[lane]
        k = 0
        if lane == MAIN:
            e = self.epoch
            while i < len(evs):
                if is_sync_point(evs[i], self.t.mode):
                    if not all(s > e for s in self.syncs):
                        break
                    e += 1
                k += 1
                i += 1
            return k
        if self.syncs[lane] > self.epoch:
            return 0
        while i < len(evs):
            k += 1
            if type(evs[i]) is ChannelSync:
                break
            i += 1
        return k

    def take(self, lane: int) -> None:
        ev = self.t.lanes[lane][self.pos[lane]]
        self.pos[lane] += 1
        if lane == MAIN:
            if is_sync_point(ev, self.t.mode):
                self.epoch += 1
        elif type(ev) is ChannelSync:
            self.syncs[lane] += 1


# How schedules are drawn so that they shrink well: a schedule is drawn as a *plan*, a list
# of steps (lane number, burst) whose choices do not depend on the transfer's shape, and is
# read against the transfer: a step takes events of the drawn lane — or, when that lane
# cannot go on, of the next one that can — burst 0 meaning "all it can now" (the shrink
# target), otherwise at most that many. When the plan runs out the schedule is completed in
# the canonical way: the first lane (channels by number, then the main stream) that can go
# on, all it can. When the transfer shrinks under a plan, the plan keeps its meaning.
MAX_BURST = 16
MAX_STEPS = 64
_steps = st.lists(st.tuples(st.integers(0, 4), st.integers(0, MAX_BURST)), max_size=MAX_STEPS)


def _pick(ids: list[int], i: int, among) -> int:
    """The lane of `among` that step lane number i names: ids[i % len] or the next in `among`."""
    for j in range(len(ids)):
        lane = ids[(i + j) % len(ids)]
        if lane in among:
            return lane
    raise AssertionError("no lane to pick")


def _burst(b: int, available: int) -> int:
    return available if b == 0 else min(b, available)


def _permitted_run(b: _Barrier, ids: list[int], steps, out: list[int]) -> None:
    """Permitted steps from `steps` (an iterator), then canonical ones, until nothing can run."""
    while runs := _runs(b, ids):
        _step(b, ids, runs, steps, out)


def _runs(b: _Barrier, ids: list[int]) -> dict[int, int]:
    """Lane -> how many of its next events the barrier lets through now."""
    return {lane: k for lane in ids if (k := b.run_length(lane))}


def _step(b: _Barrier, ids: list[int], runs: dict[int, int], steps, out: list[int]) -> None:
    """Deliver one burst of the lane the next plan step picks."""
    i, burst = next(steps, (0, 0))
    lane = _pick(ids, i, runs)
    for _ in range(_burst(burst, runs[lane])):
        b.take(lane)
        out.append(lane)


@st.composite
def permitted_schedules(draw, transfer: Transfer) -> tuple[int, ...]:
    """A delivery order the protocol allows as a processing order: per-lane FIFO, any
    interleaving, with the sync barrier respected. If the transfer cannot complete (a SYNC
    is missing), what can never be processed is delivered last, lane by lane."""
    b = _Barrier(transfer)
    ids = transfer.lane_ids
    out: list[int] = []
    _permitted_run(b, ids, iter(draw(_steps)), out)
    for lane in ids:
        out.extend([lane] * b.left(lane))
    return tuple(out)


def _walk_to_chance(transfer: Transfer, plan, stop: int | None):
    """Walk the permitted schedule `plan` makes; count the chances to break the barrier (a
    state where some lane with events left is held). Returns (barrier, delivered, held lanes,
    rest of the plan) at chance number `stop`, or the number of chances when stop is None."""
    b = _Barrier(transfer)
    ids = transfer.lane_ids
    steps = iter(plan)
    out: list[int] = []
    chances = 0
    while True:
        runs = _runs(b, ids)
        held = [lane for lane in ids if b.left(lane) and lane not in runs]
        if held:
            if chances == stop:
                return b, out, held, steps
            chances += 1
        if not runs:
            return chances
        _step(b, ids, runs, steps, out)


@st.composite
def barrier_breaking_schedules(draw, transfer: Transfer) -> tuple[int, ...]:
    """A per-lane-FIFO delivery order that breaks the sync barrier at least once: a permitted
    prefix, then one event of a lane the barrier holds (a channel past its SYNC before the
    main stream's sync point, or a sync point before every channel's SYNC) — at the drawn
    chance (`skip` modulo the chances there are; shrinks to the first) — then any
    interleaving. Transfers without any chance (no lane is ever held) are rejected."""
    ids = transfer.lane_ids
    skip = draw(st.integers(0, 255))
    held_pick = draw(st.integers(0, 4))
    plan = draw(_steps)
    chances = _walk_to_chance(transfer, plan, None)
    if not chances:
        reject()  # no lane is ever held: the barrier cannot be broken
    b, out, held, steps = _walk_to_chance(transfer, plan, skip % chances)
    lane = _pick(ids, held_pick, held)
    left = {ln: b.left(ln) for ln in ids}
    out.append(lane)
    left[lane] -= 1
    for i, burst in steps:
        open_ = [ln for ln in ids if left[ln]]
        if not open_:
            break
        lane = _pick(ids, i, open_)
        k = _burst(burst, left[lane])
        out.extend([lane] * k)
        left[lane] -= k
    for lane in ids:
        out.extend([lane] * left[lane])
    return tuple(out)


def breaks_barrier(transfer: Transfer, schedule) -> bool:
    """Whether a delivery order breaks the barrier somewhere (by the protocol rule)."""
    b = _Barrier(transfer)
    for lane in schedule:
        if not b.run_length(lane):
            return True
        b.take(lane)
    return False


@st.composite
def transfers_with_schedules(draw, permitted: bool = True, **transfer_kw) -> tuple[Transfer, tuple[int, ...]]:
    """(transfer, schedule): a permitted schedule, or with permitted=False a barrier-breaking one."""
    t = draw(transfers(**transfer_kw))
    return t, draw(permitted_schedules(t) if permitted else barrier_breaking_schedules(t))


@st.composite
def transfers_missing_a_sync(draw, **transfer_kw) -> tuple[Transfer, int, int]:
    """(transfer with one SYNC of one channel dropped, the channel, which SYNC)."""
    t = draw(transfers(**transfer_kw))
    c = draw(st.integers(0, t.channels - 1))
    k = draw(st.integers(0, t.rounds - 1))
    return t.without_sync(c, k), c, k
