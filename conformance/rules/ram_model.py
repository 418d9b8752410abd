"""Reference model of a destination's guest RAM under multifd sync semantics (QEMU
migration/multifd.c), sans-IO: events in, RAM state and violations out.

Lanes. The destination reads the main stream and N multifd channels, each in order (FIFO);
between lanes nothing is ordered except by the sync barrier:

* a channel that has processed its k-th SYNC blocks until the main stream has passed its
  k-th sync point;
* the main stream's k-th sync point (a MULTIFD_FLUSH record; or, in mode "per-section",
  the EOS ending a ram section) is passed only once every channel has processed its k-th
  SYNC.

So a page sent in sync epoch ("round") r — on a channel: after that channel's r-th SYNC;
on the main stream: after its r-th sync point — is written to guest RAM before any page of
round r+1 of the same page on any lane. The model records, per page, the round and the lane
that wrote it, and reports

  stale-page     (silent-loss) a page of round r is written after the same page of a later
                 round: the guest ends with old contents. Impossible while the barrier holds.
  page-race      (silent-loss) two lanes write different contents to the same page in the
                 same round: nothing orders them, the result depends on the schedule. (QEMU
                 7.2 sends some pages twice in a round on two channels, with identical bytes:
                 that is no race and no violation.)
  sync-deadlock  (reject) the main stream waits at a sync point for a SYNC that never comes:
                 the destination hangs (VERIFIED on 10.0 by dropping a SYNC).
  sync-unreleased (silent-loss) a channel processed more SYNCs than the main stream has sync
                 points and has packets queued behind the extra one: they are never loaded.

Delivery. `feed` takes events in *delivery* order: the order the destination receives them.
With `barrier=True` (a conforming destination) an event the barrier does not yet let through
is held back in its lane (as the bytes would wait in the socket) and processed as soon as
the barrier allows; `deferred` counts such events, so a schedule the protocol allows as a
processing order is exactly one with `deferred == 0`. With `barrier=False` (a broken
destination, or a source whose SYNCs do not mean what they say) every event is processed on
delivery: the schedule is the processing order, whatever it is.

Rounds. Events may carry the source's round (the sync epoch it sent them in); when they do
the model judges against it, so a SYNC the source put in the wrong place shows up as a page
processed in another epoch than it was sent in. Without it (real captures) the round is the
lane's own epoch: a channel's SYNC count, the main stream's sync points passed.

Events: MainPage (a ZERO or PAGE record of the main stream), Eos, Flush, ChannelPacket (the
pages of one multifd RAM packet, normal and zero), ChannelSync. `main_events` and
`channel_events` turn wireformat records into them.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

from wireformat.multifd import MultifdInit, MultifdRamPacket
from wireformat.records import RamRecord, RamRun, Record

from conformance.rules.catalogue import Code, Violation
from conformance.rules.sink import MAX_VIOLATIONS, ViolationSink

MAIN = -1  # lane id of the main stream; multifd channels are 0 … N-1
MODES = ("flush", "per-section")

PageKey = tuple[str, int]  # (RAMBlock name, byte offset of the page)
Content = Union[bytes, None]  # None: a zero page


class Digest(bytes):
    """Page contents already reduced to the digest a RamModel with hash_pages keeps."""

    __slots__ = ()


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MainPage:
    """A ZERO (data None) or PAGE record of the main stream."""

    block: str
    offset: int
    data: Content = None
    round: int | None = None  # the source's sync epoch, when known
    at: int = 0  # byte offset in the main stream (for violations)


@dataclass(frozen=True, slots=True)
class Eos:
    """RAM_SAVE_FLAG_EOS: end of a ram section. A sync point in mode "per-section"."""

    at: int = 0


@dataclass(frozen=True, slots=True)
class Flush:
    """RAM_SAVE_FLAG_MULTIFD_FLUSH: always a sync point (8.0+ destinations sync on it)."""

    at: int = 0


@dataclass(frozen=True, slots=True)
class ChannelPacket:
    """The pages of one multifd RAM packet: (block, offset, data or None for a zero page)."""

    channel: int
    pages: tuple[tuple[str, int, Content], ...]
    round: int | None = None
    num: int | None = None  # packet_num, informative
    at: int = 0


@dataclass(frozen=True, slots=True)
class ChannelSync:
    """A SYNC on a channel (the flag of a 7.2 packet, after its pages; an empty packet 9.0+)."""

    channel: int
    at: int = 0


Event = Union[MainPage, Eos, Flush, ChannelPacket, ChannelSync]


def lane_of(ev: Event) -> int:
    t = type(ev)
    return ev.channel if t is ChannelPacket or t is ChannelSync else MAIN


def lane_name(lane: int) -> str:
    return "main" if lane == MAIN else f"multifd{lane}"


def is_sync_point(ev: Event, mode: str) -> bool:
    t = type(ev)
    return t is Flush or (t is Eos and mode == "per-section")



# --- page state, compactly -------------------------------------------------------------------------

PAGE = 4096  # page granule of the compact store (other offsets go to its overflow dict)
MAX_PAGES = 1 << 26  # pages per block held in arrays (256 GiB of guest RAM); beyond: the overflow dict
_UNWRITTEN, _ZERO, _DATA = 0, 1, 2
DIGEST = 16


class _Block:
    """One RAMBlock's pages as parallel arrays indexed by page number: kind (unwritten, zero,
    data), round, lane, and the content digest (hash mode) — 23 bytes a page instead of a
    dict entry and three Python objects, so a 4 GiB guest costs ~25 MB."""

    __slots__ = ("kind", "rounds", "lanes", "digests", "contents")

    def __init__(self, hashed: bool):
        self.kind = bytearray()
        self.rounds = array("I")
        self.lanes = array("h")
        self.digests = bytearray() if hashed else None
        self.contents: dict[int, bytes] | None = None if hashed else {}  # page -> bytes (plain mode)

    def grow(self, n: int) -> None:
        have = len(self.kind)
        if n <= have:
            return
        n = max(n, min(MAX_PAGES, have * 2), 256)  # amortised doubling
        more = n - have
        self.kind.extend(bytes(more))
        self.rounds.extend(array("I", bytes(4 * more)))
        self.lanes.extend(array("h", bytes(2 * more)))
        if self.digests is not None:
            self.digests.extend(bytes(DIGEST * more))


class PageStore(Mapping):
    """PageKey -> (round, lane, content) for every page written: `RamModel.ram`. Pages at
    page-aligned offsets live in per-block arrays; anything else (odd offsets, beyond
    MAX_PAGES, rounds that do not fit 32 bits) in a plain dict."""

    def __init__(self, hashed: bool):
        self.hashed = hashed
        self.blocks: dict[str, _Block] = {}
        self.other: dict[PageKey, tuple[int, int, Content]] = {}
        self.count = 0

    def _slot(self, key: PageKey, grow: bool) -> tuple[_Block, int] | None:
        block, offset = key
        i, rest = divmod(offset, PAGE)
        if rest or not 0 <= i < MAX_PAGES:
            return None
        blk = self.blocks.get(block)
        if blk is None:
            if not grow:
                return None
            blk = self.blocks[block] = _Block(self.hashed)
        if i >= len(blk.kind):
            if not grow:
                return None
            blk.grow(i + 1)
        return blk, i

    def get(self, key: PageKey, default=None):
        slot = self._slot(key, False)
        if slot is None:
            return self.other.get(key, default)
        blk, i = slot
        k = blk.kind[i]
        if k == _UNWRITTEN:
            return self.other.get(key, default) if self.other else default
        if k == _ZERO:
            content = None
        elif blk.digests is not None:
            content = bytes(blk.digests[i * DIGEST : (i + 1) * DIGEST])
        else:
            content = blk.contents[i]
        return blk.rounds[i], blk.lanes[i], content

    def __getitem__(self, key: PageKey):
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def put(self, key: PageKey, r: int, lane: int, content: Content) -> None:
        fits = 0 <= r < 1 << 32
        slot = self._slot(key, fits)
        if slot is not None and not fits:  # a round too large for the array: the page moves out
            blk, i = slot
            if blk.kind[i] != _UNWRITTEN:
                blk.kind[i] = _UNWRITTEN
                self.count -= 1
            slot = None
        if slot is None:
            if key not in self.other:
                self.count += 1
            self.other[key] = (r, lane, content)
            return
        if self.other and self.other.pop(key, None) is not None:
            self.count -= 1  # back into the array from the overflow dict
        blk, i = slot
        if blk.kind[i] == _UNWRITTEN:
            self.count += 1
        blk.rounds[i] = r
        blk.lanes[i] = lane
        if content is None:
            blk.kind[i] = _ZERO
            if blk.contents is not None:
                blk.contents.pop(i, None)
        else:
            blk.kind[i] = _DATA
            if blk.digests is not None:
                blk.digests[i * DIGEST : (i + 1) * DIGEST] = content
            else:
                blk.contents[i] = content

    def __iter__(self) -> Iterator[PageKey]:
        for name, blk in self.blocks.items():
            for i, k in enumerate(blk.kind):
                if k != _UNWRITTEN:
                    yield (name, i * PAGE)
        yield from self.other

    def __len__(self) -> int:
        return self.count

    def nbytes(self) -> int:
        """Bytes the arrays hold (what the model's state costs, beside the overflow dict)."""
        return sum(len(b.kind) * (1 + 4 + 2 + (DIGEST if b.digests is not None else 0)) for b in self.blocks.values())


# --- the model ----------------------------------------------------------------------------------


class RamModel:
    """Guest RAM of a destination with `channels` multifd channels in sync `mode`.

    `ram` maps a page to (round, lane, content); content is the page bytes (or their
    BLAKE2b digest with `hash_pages=True`), None for a zero page. It is a PageStore: arrays
    per RAMBlock, not Python objects per page, so memory is ~23 bytes a page of guest RAM
    with `hash_pages` (the digests) and grows with the highest page written.
    """

    __slots__ = ("channels", "mode", "barrier", "hash_pages", "sink", "ram", "violations",
                 "main_epoch", "syncs", "deferred", "processed", "_queues", "_queued", "_ready", "_closed")

    def __init__(self, channels: int, mode: str = "flush", *, barrier: bool = True, hash_pages: bool = False,
                 max_violations: int = MAX_VIOLATIONS):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if channels < 1:
            raise ValueError("a multifd destination has at least one channel")
        self.channels = channels
        self.mode = mode
        self.barrier = barrier
        self.hash_pages = hash_pages
        self.sink = ViolationSink(cap=max_violations)
        self.ram = PageStore(hash_pages)
        self.violations: list[Violation] = self.sink.violations
        self.main_epoch = 0  # sync points the main stream has passed
        self.syncs = [0] * channels  # SYNCs each channel has processed
        self.deferred = 0  # events the barrier held back on delivery
        self.processed = 0
        self._queues: dict[int, deque] = {}
        self._queued = 0
        self._ready = 0  # channels whose SYNC for the main stream's next sync point is in
        self._closed = False

    # -- input

    def feed(self, ev: Event) -> list[Violation]:
        start = len(self.violations)
        self._feed(ev)
        return self.sink.since(start)

    def _feed(self, ev: Event) -> None:
        lane = lane_of(ev)
        if lane != MAIN and not 0 <= lane < self.channels:
            raise ValueError(f"event on channel {lane} of a destination with {self.channels} channels")
        if not self.barrier:
            self._process(lane, ev)
            return
        q = self._queues.get(lane)
        if q or not self._runnable(lane, ev):
            if q is None:
                q = self._queues[lane] = deque()
            q.append(ev)
            self._queued += 1
            self.deferred += 1
            return
        self._process(lane, ev)
        if self._queued:
            self._pump()

    def feed_all(self, events: Iterable[Event]) -> list[Violation]:
        feed = self._feed
        for ev in events:
            feed(ev)
        self.close()
        return self.violations

    def close(self) -> list[Violation]:
        """End of input: what is still held back says whether the destination hangs."""
        if self._closed:
            return []
        self._closed = True
        start = len(self.violations)
        mq = self._queues.get(MAIN)
        if mq:
            missing = [c for c in range(self.channels) if self.syncs[c] <= self.main_epoch]
            self._v(Code.SYNC_DEADLOCK, MAIN, mq[0].at,
                    f"the main stream waits at sync point {self.main_epoch + 1} for the SYNC of "
                    f"{', '.join(lane_name(c) for c in missing)} (SYNCs processed: "
                    f"{', '.join(f'{lane_name(c)} {self.syncs[c]}' for c in range(self.channels))}), which never "
                    f"comes: the destination hangs ({self._queued} events never processed)")
        else:
            for c in range(self.channels):
                q = self._queues.get(c)
                if q:
                    pages = sum(len(e.pages) for e in q if type(e) is ChannelPacket)
                    self._v(Code.SYNC_UNRELEASED, c, q[0].at,
                            f"{lane_name(c)} processed SYNC {self.syncs[c]} but the main stream has only "
                            f"{self.main_epoch} sync points: {len(q)} events ({pages} pages) after it are never loaded")
        return self.sink.since(start)

    # -- results

    def image(self) -> dict[PageKey, Content]:
        """Page → content (None: zero) for every page written."""
        return {k: v[2] for k, v in self.ram.items()}

    def content(self, data: Content) -> Content:
        """How the model stores page bytes (to compare with `image()` under hash_pages)."""
        if data is None or not self.hash_pages:
            return data
        return hashlib.blake2b(data, digest_size=DIGEST).digest()

    @property
    def codes(self) -> list[str]:
        return [v.code for v in self.violations]

    def stats(self) -> dict:
        return {"pages": len(self.ram), "processed": self.processed, "deferred": self.deferred,
                "sync_points": self.main_epoch, "syncs": list(self.syncs), "held": self._queued}

    # -- internals

    def _v(self, code: Code, lane: int, offset: int, message: str) -> None:
        self.sink.emit(code, lane_name(lane), offset, message)

    def _runnable(self, lane: int, ev: Event) -> bool:
        if lane == MAIN:
            return not is_sync_point(ev, self.mode) or self._ready == self.channels
        return self.syncs[lane] <= self.main_epoch

    def _pump(self) -> None:
        progress = True
        queues = self._queues
        while progress and self._queued:
            progress = False
            for lane, q in queues.items():
                while q and self._runnable(lane, q[0]):
                    self._queued -= 1
                    self._process(lane, q.popleft())
                    progress = True

    def _process(self, lane: int, ev: Event) -> None:
        self.processed += 1
        t = type(ev)
        if t is ChannelPacket:
            r = ev.round if ev.round is not None else self.syncs[lane]
            write = self._write
            for block, offset, data in ev.pages:
                write((block, offset), r, lane, data, ev.at)
        elif t is ChannelSync:
            n = self.syncs[lane] = self.syncs[lane] + 1
            if n == self.main_epoch + 1:
                self._ready += 1
        elif t is MainPage:
            self._write((ev.block, ev.offset), ev.round if ev.round is not None else self.main_epoch, MAIN, ev.data, ev.at)
        elif is_sync_point(ev, self.mode):
            e = self.main_epoch = self.main_epoch + 1
            self._ready = sum(1 for s in self.syncs if s > e)
        # an EOS in mode "flush" is no sync point: nothing to do

    def _write(self, key: PageKey, r: int, lane: int, data: Content, at: int) -> None:
        if data is not None and self.hash_pages and type(data) is not Digest:
            data = hashlib.blake2b(data, digest_size=DIGEST).digest()
        ram = self.ram
        prev = ram.get(key)
        if prev is not None:
            pr, pl, pc = prev
            if pr > r:
                self._v(Code.STALE_PAGE, lane, at,
                        f"page {key[0]}@{key[1]:#x} of round {r} from {lane_name(lane)} written after the same page of "
                        f"round {pr} from {lane_name(pl)}: the guest keeps the older contents")
            elif pr == r and pl != lane and pc != data:
                self._v(Code.PAGE_RACE, lane, at,
                        f"page {key[0]}@{key[1]:#x} sent in round {r} by {lane_name(pl)} and {lane_name(lane)} with "
                        "different contents: nothing orders the two writes")
        ram.put(key, r, lane, data)


# --- records → events ------------------------------------------------------------------------------


def main_events(records: Iterable[Record], *, copy: bool = True) -> Iterator[Event]:
    """The RAM events of a main stream's records (wireformat.reader.StreamReader): ZERO and
    PAGE records (RamRun expanded), EOS and MULTIFD_FLUSH. A ZERO record with a non-zero
    fill byte (7.2 accepts it) becomes a page of that byte. Pages are copied to bytes unless
    `copy=False` (memoryviews are valid only until the reader moves on)."""
    events = MainEvents(copy=copy)
    for rec in records:
        yield from events(rec)


class MainEvents:
    """main_events one record at a time: `events(rec)` -> the RAM events of that record
    (it remembers the block a CONTINUE record goes on in). With `digest`, page bytes become
    `Digest`s, as a RamModel with hash_pages stores them: what a caller keeps a whole
    stream's events in (conformance.check.pipeline holds the main stream's this way)."""

    __slots__ = ("copy", "digest", "last", "page_size")

    def __init__(self, *, copy: bool = True, digest: bool = False):
        self.copy, self.digest = copy, digest
        self.last: str | None = None
        self.page_size = 4096

    def __call__(self, rec: Record) -> Iterator[Event]:
        if isinstance(rec, RamRun):
            self.page_size = rec.page_size
            recs: Iterable[RamRecord] = rec.records()
        elif isinstance(rec, RamRecord):
            recs = (rec,)
        else:
            return
        for r in recs:
            kind = r.flags & ~0x20
            if kind == 0x10:
                yield Eos(at=r.offset)
            elif kind == 0x200:
                yield Flush(at=r.offset)
            elif kind in (0x2, 0x8):
                if r.block is not None and not r.flags & 0x20:
                    self.last = r.block
                blk = r.block if r.block is not None else self.last
                if blk is None:
                    continue  # CONTINUE with no block: the Loader reports it; no page to place
                if kind == 0x2:
                    data = None if not r.fill else bytes([r.fill]) * self.page_size
                else:
                    data = bytes(r.data) if self.copy or self.digest else r.data
                if data is not None and self.digest:
                    data = Digest(hashlib.blake2b(data, digest_size=DIGEST).digest())
                yield MainPage(blk, r.addr, data, at=r.offset)


def channel_events(records: Iterable[Record], channel: int | None = None, *, page_size: int = 4096,
                   copy: bool = True) -> Iterator[Event]:
    """The events of one multifd channel's records (wireformat.multifd.MultifdChannelReader):
    a ChannelPacket for the normal and zero pages of every RAM packet (stale fields of 7.2
    packets without pages, and offsets past normal_pages, are ignored, as the destination
    ignores them), then a ChannelSync when the packet has the SYNC flag. The channel number
    is `channel`, or the id of the channel's initial packet."""
    cid = channel
    for rec in records:
        if isinstance(rec, MultifdInit):
            if cid is None:
                cid = rec.id
            continue
        if not isinstance(rec, MultifdRamPacket):
            continue
        if cid is None:
            raise ValueError("the channel number is unknown: no initial packet and no `channel` given")
        pages: list[tuple[str, int, Content]] = []
        if rec.normal_pages:
            data = rec.data
            for i, off in enumerate(rec.normal_offsets):
                chunk = data[i * page_size : (i + 1) * page_size]
                pages.append((rec.ramblock, off, bytes(chunk) if copy else chunk))
        if rec.zero_pages:
            pages.extend((rec.ramblock, off, None) for off in rec.zero_offsets)
        if pages:
            yield ChannelPacket(cid, tuple(pages), num=rec.packet_num, at=rec.offset)
        if rec.is_sync:
            yield ChannelSync(cid, at=rec.offset)


def run_schedule(lanes, schedule: Iterable[int], model: RamModel) -> RamModel:
    """Deliver the lanes' events to `model` in the order `schedule` names lanes (MAIN or a
    channel number, one entry per event) and close it. `lanes[c]` are channel c's events,
    `lanes[MAIN]` the main stream's (a dict, or a sequence with the main stream last).
    Returns the model."""
    pos: dict[int, int] = {}
    feed = model.feed
    for lane in schedule:
        i = pos.get(lane, 0)
        feed(lanes[lane][i])
        pos[lane] = i + 1
    model.close()
    return model


def describe_event(ev: Event) -> str:
    """One line for an event, e.g. `multifd1 pages [pc.ram@0x0 r1]` or `main FLUSH`."""
    t = type(ev)

    def page(block, offset, data, r):
        return f"{block}@{offset:#x}" + ("=0" if data is None else "") + ("" if r is None else f" r{r}")

    if t is ChannelPacket:
        return f"{lane_name(ev.channel)} pages [" + ", ".join(page(b, o, d, ev.round) for b, o, d in ev.pages) + "]"
    if t is ChannelSync:
        return f"{lane_name(ev.channel)} SYNC"
    if t is MainPage:
        return f"main page {page(ev.block, ev.offset, ev.data, ev.round)}"
    return f"main {'FLUSH' if t is Flush else 'EOS'}"
