"""Multifd channels judged together with their main stream (QEMU migration/multifd.c; the
codes: docs/violations.md): a sans-IO model fed the records of every channel.

What a real destination does with bad multifd data matters for the severity: errors in a
channel's initial packet end the load; a damaged packet or a missing SYNC leaves the
destination hung (its main thread waits for a SYNC that never comes, QMP unanswered), which
counts as `reject`; data on a channel the destination never opens is lost silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from wireformat.budgets import BUDGETS
from wireformat.constants import MULTIFD_MAGIC, MULTIFD_VERSION
from wireformat.multifd import (
    MULTIFD_FLAG_COMPRESSION_MASK_V92,
    MULTIFD_PAGE_COUNT,
    MultifdDeviceStatePacket,
    MultifdInit,
    MultifdRamPacket,
)
from wireformat.records import Record

from conformance.rules.catalogue import Code, Violation
from conformance.rules.sink import ViolationSink
from conformance.rules.sync import SyncSummary


@dataclass
class _Channel:
    name: str
    init: MultifdInit | None = None
    syncs: int = 0
    packets: int = 0
    last_num: int = -1
    layout: str | None = None


@dataclass
class MultifdChecker:
    main: SyncSummary  # what the main stream says: sync points, RAM blocks
    page_size: int = 4096
    page_count: int = MULTIFD_PAGE_COUNT
    destination_channels: int | None = None  # the destination's multifd-channels, when known
    zero_pages_understood: bool = True  # the destination applies a packet's zero-page list (versions.py fact)
    channels: dict[str, _Channel] = field(default_factory=dict)
    sink: ViolationSink = field(default_factory=ViolationSink)
    packet_nums: list[int] = field(default_factory=list)
    pages: Counter = field(default_factory=Counter)
    ignored_zero: Counter = field(default_factory=Counter)  # zero-page lists not applied: packets, pages
    ignored_zero_at: tuple[str, int] | None = None  # the first such packet
    _closed: bool = field(default=False, init=False, repr=False)

    @property
    def violations(self) -> list[Violation]:
        return self.sink.violations

    def _v(self, code: Code, channel: str, offset: int, message: str) -> None:
        self.sink.emit(code, channel, offset, message)

    def feed(self, rec: Record) -> list[Violation]:
        start = len(self.sink.violations)
        self._feed(rec)
        return self.sink.since(start)

    def _feed(self, rec: Record) -> None:
        ch = self.channels.setdefault(rec.channel, _Channel(rec.channel))
        if isinstance(rec, MultifdInit):
            self._init(ch, rec)
        elif isinstance(rec, MultifdRamPacket):
            self._ram(ch, rec)
        elif isinstance(rec, MultifdDeviceStatePacket):
            ch.packets += 1
            if rec.flags & 0x1:
                self._v(Code.MULTIFD_PACKET, rec.channel, rec.offset, "multifd: received SYNC device state packet")

    def _init(self, ch: _Channel, p: MultifdInit) -> None:
        ch.init = p
        where = f"failed to receive packet via multifd channel {p.id}"
        if p.magic != MULTIFD_MAGIC:
            self._v(Code.MULTIFD_INIT, p.channel, p.offset,
                    f"{where}: multifd: received packet magic {p.magic:x} expected {MULTIFD_MAGIC:x}")
        elif p.version != MULTIFD_VERSION:
            self._v(Code.MULTIFD_INIT, p.channel, p.offset,
                    f"{where}: multifd: received packet version {p.version} expected {MULTIFD_VERSION}")

    def _ram(self, ch: _Channel, p: MultifdRamPacket) -> None:
        ch.packets += 1
        ch.layout = p.layout
        ch_name, off = p.channel, p.offset
        if p.magic != MULTIFD_MAGIC or p.version != MULTIFD_VERSION:
            self._v(Code.MULTIFD_PACKET, ch_name, off,
                    f"multifd: received packet magic {p.magic:x}, expected {MULTIFD_MAGIC:x} (version {p.version}): "
                    "the destination hangs")
            return
        if p.flags & MULTIFD_FLAG_COMPRESSION_MASK_V92 and (p.normal_pages or p.zero_pages):
            # captures are judged for an uncompressed destination: the bits must match its method
            # (QEMU looks at them only in a packet with pages: a SYNC carrying them loads)
            self._v(Code.MULTIFD_PACKET, ch_name, off,
                    f"multifd {ch.init.id if ch.init else '?'}: flags received {p.flags:x} flags expected 0: the destination hangs")
        if p.is_sync:
            ch.syncs += 1
        if p.packet_num < ch.last_num:
            self._v(Code.MULTIFD_PACKET_ORDER, ch_name, off, f"packet_num {p.packet_num} after {ch.last_num} on the same channel")
        ch.last_num = p.packet_num
        self.packet_nums.append(p.packet_num)
        if p.normal_pages == 0 and not p.zero_pages:
            return  # 7.2 SYNC packets carry stale block name and sizes: not looked at
        if p.pages_alloc > self.page_count:
            self._v(Code.MULTIFD_PACKET, ch_name, off,
                    f"multifd: received packet with {p.pages_alloc} pages, expected {self.page_count}: the destination hangs")
            return
        if p.normal_pages > p.pages_alloc:
            self._v(Code.MULTIFD_PACKET, ch_name, off,
                    f"multifd: received packet with {p.normal_pages} non-zero pages, which exceeds maximum expected pages "
                    f"{p.pages_alloc}: the destination hangs")
            return
        if p.zero_pages and p.zero_pages > p.pages_alloc - p.normal_pages:
            self._v(Code.MULTIFD_PACKET, ch_name, off,
                    f"multifd: received packet with {p.zero_pages} zero pages, expected maximum "
                    f"{p.pages_alloc - p.normal_pages}: the destination hangs")
            return
        length = self.main.blocks.get(p.ramblock)
        if length is None:
            self._v(Code.MULTIFD_PACKET, ch_name, off, f"multifd: unknown ram block {p.ramblock}: the destination hangs")
            return
        limit = length - self.page_size
        if max(p.normal_offsets, default=0) > limit or max(p.zero_offsets, default=0) > limit:
            o = next(o for o in (*p.normal_offsets, *p.zero_offsets) if o > limit)  # the first, for the message
            self._v(Code.MULTIFD_PACKET, ch_name, off,
                    f"multifd: offset too long {o} (max {limit:x}): the destination hangs")
            return
        if p.normal_pages and p.next_packet_size != p.normal_pages * self.page_size:
            self._v(Code.MULTIFD_PACKET_SIZE, ch_name, off,
                    f"next_packet_size {p.next_packet_size} for {p.normal_pages} pages (the destination reads the pages)")
        self.pages[p.ramblock] += p.normal_pages + (p.zero_pages or 0)
        if p.zero_pages and not self.zero_pages_understood:
            self.ignored_zero.update(packets=1, pages=p.zero_pages)
            self.ignored_zero_at = self.ignored_zero_at or (ch_name, off)

    def order_channels(self, names: list[str]) -> None:
        """Judge the channels at close() in this order (the others after them, as first fed):
        the order of their files, when they were fed interleaved."""
        first = {n: self.channels[n] for n in names if n in self.channels}
        self.channels = {**first, **{n: c for n, c in self.channels.items() if n not in first}}

    def close(self) -> list[Violation]:
        """Judgements that need every channel: ids, uuids, SYNC counts, numbering."""
        if self._closed:
            return []
        self._closed = True
        start = len(self.sink.violations)
        inits = [c.init for c in self.channels.values() if c.init is not None]
        n = self.destination_channels if self.destination_channels is not None else len(inits)
        if self.destination_channels is not None and len(inits) > n:
            # the destination accepts only n channel connections: the others are never read
            # (seen with real destinations: the load completes, their pages are missing)
            extra = sorted(inits, key=lambda i: i.id)[n:]
            self._v(Code.MULTIFD_CHANNELS, "multifd", 0,
                    f"{len(inits)} channels for a destination set for {n}: the pages of "
                    f"{', '.join(i.channel for i in extra)} are never loaded")
            inits = [i for i in inits if i not in extra]
        elif self.destination_channels is not None and len(inits) < n:
            # the destination starts loading only once all n are connected (VERIFIED 7.2, 10.0)
            self._v(Code.MULTIFD_CHANNELS_MISSING, "multifd", 0,
                    f"{len(inits)} channels for a destination set for {n}: it waits in 'setup' for the others and "
                    f"hangs (it loads with --dest-parameter multifd-channels={len(inits)})")
        if self.ignored_zero_at is not None:
            ch, off = self.ignored_zero_at
            self._v(Code.MULTIFD_ZERO_PAGES_IGNORED, ch, off,
                    f"{self.ignored_zero['pages']} zero pages in {self.ignored_zero['packets']} multifd packets (zero-page-detection=multifd): "
                    "this destination version ignores the list, the pages keep what it had (it loads with "
                    "--source-parameter zero-page-detection=legacy)")
        ids = Counter(i.id for i in inits)
        for i in inits:
            if i.id > n:
                self._v(Code.MULTIFD_INIT, i.channel, i.offset,
                        f"multifd: received channel id {i.id} is greater than number of channels {n}")
            elif i.id == n or ids[i.id] > 1:  # QEMU's range check lets id == n through, then fails here
                self._v(Code.MULTIFD_INIT, i.channel, i.offset, f"multifd: received id '{i.id}' already setup'")
        if len({i.uuid for i in inits}) > 1:
            self._v(Code.MULTIFD_INIT, inits[-1].channel, inits[-1].offset,
                    "multifd channels carry different uuids: the destination expects its own on every channel")
        want = self.main.sync_points
        for c in self.channels.values():
            if c.syncs < want:
                self._v(Code.MULTIFD_SYNC_COUNT, c.name, 0,
                        f"{c.syncs} SYNC packets, the main stream has {want} sync points ({self.main.mode} mode): "
                        "the destination waits for a SYNC that never comes")
            elif c.syncs > want:
                self._v(Code.MULTIFD_SYNC_EXTRA, c.name, 0,
                        f"{c.syncs} SYNC packets for {want} sync points ({self.main.mode} mode): the channel waits "
                        "on a sync the main stream never releases, until the load ends")
        # 9.0+ numbers every packet from one counter shared by the channels: a gap is a lost packet
        if self.packet_nums and all(c.layout == "9.0" for c in self.channels.values() if c.packets):
            missing, listed = missing_numbers(self.packet_nums, BUDGETS.missing_packets_listed)
            if missing:
                more = f" and {missing - len(listed)} more" if missing > len(listed) else ""
                self._v(Code.MULTIFD_PACKET_MISSING, "multifd", 0,
                        f"packet numbers {listed}{more} are on no channel: a packet was lost")
        return self.sink.since(start)


def missing_numbers(nums, listed: int) -> tuple[int, list[int]]:
    """(how many numbers between the lowest and the highest of `nums` are absent, the first
    `listed` of them): walks the gaps of the sorted numbers, never the range itself (a
    packet number near 2**64 is one splice away)."""
    have = sorted(set(nums))
    count, first = 0, []
    for lo, hi in zip(have, have[1:]):
        gap = hi - lo - 1
        if gap > 0:
            count += gap
            first.extend(range(lo + 1, lo + 1 + min(gap, listed - len(first))))
    return count, first
