"""Multifd together with postcopy: the two meanings discussed upstream, as a sans-IO model.

* "precopy-only" (what 10.1 does, and what 7.2 allowed without a flush): multifd carries
  RAM during precopy only; when postcopy starts, pages travel on the main / preempt channel
  and are placed atomically (userfaultfd) on demand. The rule: every multifd channel is
  flushed (its SYNC processed) before the destination listens, so no precopy page is still
  in a channel when postcopy may place a newer copy of it.
* "during-postcopy": channels go on carrying pages after postcopy started (what the 8.1
  refusal was about): a late precopy copy can overwrite the page postcopy placed.

A precopy page that lands after postcopy placed a newer copy is `stale-page` (silent loss).
Which QEMU versions permit the capability pair at all is data (conformance.rules.compat); the
model takes it as input (`pair_allowed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.rules.catalogue import Code, Violation
from conformance.rules.sink import ViolationSink


@dataclass(frozen=True)
class ChannelPage:
    channel: int
    page: int
    version: int  # increases each time the source sends the page again


@dataclass(frozen=True)
class ChannelSync:
    channel: int


@dataclass(frozen=True)
class MainFlush:
    """The main stream's sync point just before postcopy (the source's flush)."""


@dataclass(frozen=True)
class Listen:
    """POSTCOPY_LISTEN: from here pages are placed by postcopy."""


@dataclass(frozen=True)
class PostcopyPage:
    page: int
    version: int


Event = ChannelPage | ChannelSync | MainFlush | Listen | PostcopyPage


@dataclass
class PostcopyMultifdModel:
    channels: int
    meaning: str = "precopy-only"  # or "during-postcopy"
    pair_allowed: bool = True  # the destination version accepts postcopy-ram with multifd
    ram: dict[int, int] = field(default_factory=dict)  # page -> version in guest memory
    placed: dict[int, int] = field(default_factory=dict)  # pages postcopy placed, with their version
    listening: bool = False
    synced_since_page: list[bool] = field(default_factory=list)
    sink: ViolationSink = field(default_factory=ViolationSink)

    def __post_init__(self):
        if self.meaning not in ("precopy-only", "during-postcopy"):
            raise ValueError(f"unknown meaning {self.meaning!r}")
        self.synced_since_page = [True] * self.channels

    @property
    def violations(self) -> list[Violation]:
        return self.sink.violations

    def _v(self, code: Code, channel: str, message: str) -> None:
        self.sink.emit(code, channel, 0, message)

    def feed(self, ev: Event) -> list[Violation]:
        start = len(self.sink.violations)
        self._feed(ev)
        return self.sink.since(start)

    def close(self) -> list[Violation]:
        """Nothing is judged at the end of input: every violation is a delivery's."""
        return []

    def _feed(self, ev: Event) -> None:
        if isinstance(ev, ChannelPage):
            if self.listening and self.meaning == "precopy-only":
                self._v(Code.MULTIFD_PAGE_IN_POSTCOPY, f"multifd{ev.channel}",
                        f"page {ev.page} on a multifd channel after POSTCOPY_LISTEN: channels carry no data in postcopy")
            newer = self.placed.get(ev.page)
            if newer is not None and newer > ev.version:
                self._v(Code.STALE_PAGE, f"multifd{ev.channel}",
                        f"page {ev.page} version {ev.version} from multifd{ev.channel} lands after postcopy placed "
                        f"version {newer}: the guest gets the older contents")
            self.ram[ev.page] = ev.version  # a channel copies the page in: the last write wins
            self.synced_since_page[ev.channel] = False
        elif isinstance(ev, ChannelSync):
            self.synced_since_page[ev.channel] = True
        elif isinstance(ev, Listen):
            if not self.pair_allowed:
                self._v(Code.CAPABILITY_PAIR_REFUSED, "main",
                        "postcopy-ram with multifd: this destination version refuses the pair")
            dirty = [c for c, ok in enumerate(self.synced_since_page) if not ok]
            if dirty and self.meaning == "precopy-only":
                self._v(Code.POSTCOPY_LISTEN_BEFORE_FLUSH, "main",
                        f"POSTCOPY_LISTEN while {', '.join(f'multifd{c}' for c in dirty)} may still hold precopy pages")
            self.listening = True
        elif isinstance(ev, PostcopyPage):
            # placed atomically (the source discarded the page first if it was re-dirtied)
            self.placed[ev.page] = ev.version
            self.ram[ev.page] = ev.version

    def feed_all(self, events) -> list[Violation]:
        for ev in events:
            self._feed(ev)
        self.close()
        return self.violations


def source_events(pages_per_round: list[list[int]], channels: int, *, flush_before_postcopy: bool,
                  postcopy_pages: list[int], meaning: str = "precopy-only") -> list[list[Event]]:
    """Per-lane event lists a source emits: lane 0 the main stream, lane 1+c channel c.
    Precopy rounds put each dirtied page on a channel (round robin) and end with a SYNC on
    every channel; postcopy sends `postcopy_pages` (newest version) on the main stream.
    With meaning "during-postcopy" the last precopy round is sent after LISTEN."""
    lanes: list[list[Event]] = [[] for _ in range(channels + 1)]
    version: dict[int, int] = {}
    rounds = list(pages_per_round)
    late = rounds.pop() if meaning == "during-postcopy" and rounds else []
    k = 0
    for i, pages in enumerate(rounds):
        for p in pages:
            version[p] = version.get(p, -1) + 1
            lanes[1 + k % channels].append(ChannelPage(k % channels, p, version[p]))
            k += 1
        last = i == len(rounds) - 1
        if not last or flush_before_postcopy:
            for c in range(channels):
                lanes[1 + c].append(ChannelSync(c))
            lanes[0].append(MainFlush())
    lanes[0].append(Listen())
    late_versions = {}
    for p in late:
        version[p] = version.get(p, -1) + 1
        late_versions[p] = version[p]
    for p in postcopy_pages:
        lanes[0].append(PostcopyPage(p, version.get(p, 0) + 1))
    for p, v in late_versions.items():
        lanes[1 + k % channels].append(ChannelPage(k % channels, p, v))
        k += 1
    return lanes


def deliver(lanes: list[list[Event]], schedule: list[int], *, barrier: bool = True) -> list[Event]:
    """Interleave lanes by `schedule` (lane numbers; exhausted lanes skipped). With the
    barrier, the main stream does not pass a MainFlush until every channel delivered the
    SYNC of that flush, and a channel does not go past a SYNC until the main stream reached
    the flush: the sync semantics of multifd."""
    pos = [0] * len(lanes)
    flushes_done = 0
    syncs = [0] * (len(lanes) - 1)
    out: list[Event] = []

    def ready(lane: int) -> bool:
        if pos[lane] >= len(lanes[lane]):
            return False
        ev = lanes[lane][pos[lane]]
        if not barrier:
            return True
        if lane == 0 and isinstance(ev, MainFlush):
            return all(s > flushes_done for s in syncs)
        if lane > 0 and syncs[lane - 1] > flushes_done:
            return False  # past its SYNC: waits for the main stream
        return True

    def step(lane: int) -> None:
        nonlocal flushes_done
        ev = lanes[lane][pos[lane]]
        pos[lane] += 1
        if isinstance(ev, MainFlush):
            flushes_done += 1
        elif isinstance(ev, ChannelSync):
            syncs[ev.channel] += 1
        out.append(ev)

    for lane in schedule:
        if ready(lane):
            step(lane)
    while True:  # drain what is left in a fair order
        moved = False
        for lane in range(len(lanes)):
            while ready(lane):
                step(lane)
                moved = True
        if not moved:
            break
    return out
