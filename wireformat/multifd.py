"""Multifd channels: the initial packet, RAM packets and device-state packets (QEMU
migration/multifd.h, migration/multifd.c).

A multifd channel is its own TCP connection: a 64-byte initial packet, then packets until
the connection closes. Every packet starts with the same 12 bytes (magic, version,
flags); integers are big-endian.

* RAM packet: a fixed-size header of 320 + 8 × page_count bytes (page_count = 512 KiB /
  target page size = 128 on x86, so 1344 bytes), then the page data. The header has two
  revisions: `MultifdPacketV72` (7.2 … 8.2: 32 reserved bytes at offset 32) and
  `MultifdPacketV90` (9.0+: `zero_pages` at offset 32, then 28 reserved bytes). The
  offsets array holds `normal_pages` entries, then (9.0+) `zero_pages` entries, then
  whatever else the sender left there (zero, or stale entries of an earlier packet).
* Device-state packet (10.0+, flag MULTIFD_FLAG_DEVICE_STATE): the 12 common bytes, a
  256-byte NUL-padded idstr, be32 instance_id, be32 next_packet_size, then that many
  payload bytes (for VFIO: a VFIODeviceStatePacket, see wireformat.vfio).

How much data follows a RAM packet header (the rule a destination applies):
  normal_pages == 0               → none, whatever next_packet_size says (7.2 leaves a stale
                                     next_packet_size in packets that carry no pages)
  compression bits of flags == 0  → normal_pages × page_size (next_packet_size is not read)
  otherwise (zlib, zstd, …)        → next_packet_size bytes
A device-state packet carries next_packet_size payload bytes.

The codec describes bytes, it does not judge them: a wrong version, a wrong page count or
an unknown block name all decode. What cannot be framed raises a wireformat.errors
DecodeError: a stream that ends inside a packet (Truncated), a packet whose magic is not
MULTIFD_MAGIC (BadPacketMagic: the packet boundary is lost, a destination fails there too),
and a data length above `max_data` (HostileLength; nothing is allocated for it).
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable, Iterator


from .budgets import BUDGETS
from .constants import MULTIFD_MAGIC, MULTIFD_VERSION, TARGET_PAGE_SIZE
from .errors import BadPacketMagic, DecodeError, HostileLength, Truncated
from .records import Record
from .window import Window

# --- flags (migration/multifd.h), QEMU's names ------------------------------------------

MULTIFD_FLAG_SYNC = 0x1
MULTIFD_FLAG_NOCOMP = 0 << 1
MULTIFD_FLAG_ZLIB = 1 << 1
MULTIFD_FLAG_ZSTD = 2 << 1
MULTIFD_FLAG_QPL = 4 << 1  # 9.1+
MULTIFD_FLAG_UADK = 8 << 1  # 9.1+
MULTIFD_FLAG_QATZIP = 16 << 1  # 9.2+
MULTIFD_FLAG_DEVICE_STATE = 0x40  # 10.0+

# The compression field grew over time; the receiver compares flags & mask with its method.
MULTIFD_FLAG_COMPRESSION_MASK_V72 = 0x0E  # 7.2 … 9.0: none, zlib, zstd
MULTIFD_FLAG_COMPRESSION_MASK_V91 = 0x1E  # 9.1: + QPL, UADK
MULTIFD_FLAG_COMPRESSION_MASK_V92 = 0x3E  # 9.2+: + QATzip
MULTIFD_FLAG_COMPRESSION_MASK = MULTIFD_FLAG_COMPRESSION_MASK_V92

# --- sizes --------------------------------------------------------------------------------

MULTIFD_PACKET_SIZE = 512 * 1024  # bytes of pages one RAM packet can describe
MULTIFD_PAGE_COUNT = MULTIFD_PACKET_SIZE // TARGET_PAGE_SIZE  # 128 on x86
MULTIFD_INIT_PACKET_SIZE = 64
MULTIFD_PACKET_COMMON_SIZE = 12
MULTIFD_RAMBLOCK_NAME_SIZE = 256
MULTIFD_RAM_HEADER_FIXED = 320  # everything before the offsets array
MULTIFD_DEVICE_STATE_IDSTR_SIZE = 256
MULTIFD_DEVICE_STATE_HEADER_SIZE = MULTIFD_PACKET_COMMON_SIZE + MULTIFD_DEVICE_STATE_IDSTR_SIZE + 8  # 276

# Largest data length the reader frames. Real packets carry at most 512 KiB of pages
# (compressed data is smaller); the cap only stops a hostile length from being honoured.
MAX_PACKET_DATA = BUDGETS.packet_data

LAYOUT_V72 = "7.2"  # 7.2 … 8.2
LAYOUT_V90 = "9.0"  # 9.0+
LAYOUTS = (LAYOUT_V72, LAYOUT_V90)


def ram_packet_header_size(page_count: int = MULTIFD_PAGE_COUNT) -> int:
    """Bytes of a RAM packet header: 320 + 8 × page_count (1344 on x86)."""
    return MULTIFD_RAM_HEADER_FIXED + 8 * page_count


def compression_mask_for(layout: str) -> int:
    """The compression bits a destination of that header revision compares. For "9.0"
    this is the 9.2+ mask; a 9.0 or 9.1 receiver compares fewer bits (pass the mask of
    that version to the reader when it matters: bits outside it are not compression)."""
    return MULTIFD_FLAG_COMPRESSION_MASK_V72 if layout == LAYOUT_V72 else MULTIFD_FLAG_COMPRESSION_MASK


# --- construct definitions: wireformat.multifd_layouts, loaded on first use ---------------

_LAYOUTS = frozenset({'MultifdPacketV90', 'MultifdPacketHeader', 'MultifdPacketDeviceState', 'MultifdPacketDeviceStateHeader', 'MultifdInitPacket', 'MultifdPacketV72'})


def __getattr__(name: str):
    if name in _LAYOUTS:
        from . import multifd_layouts

        return getattr(multifd_layouts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- records ------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class MultifdInit(Record):
    """The 64-byte packet that opens every multifd channel."""

    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION
    uuid: bytes = bytes(16)
    id: int = 0
    unused1: bytes = bytes(7)  # reserved, offset 25
    unused2: bytes = bytes(32)  # reserved, offset 32


@dataclass(slots=True, kw_only=True)
class MultifdRamPacket(Record):
    """A RAM packet: header and the page data that follows it.

    `zero_pages` is None for the 7.2 … 8.2 layout (offset 32 is reserved there).
    `ramblock` is the name up to its first NUL; `ramblock_tail` keeps the bytes from that
    NUL on when any of them is non-zero (b"" means plain NUL padding). Of the offsets
    array, `normal_offsets` are the first min(normal_pages, page_count) entries,
    `zero_offsets` the next zero_pages entries (as many as fit), and `unused_offsets` the
    rest up to its last non-zero entry (trailing zero padding is dropped; build adds it).
    `data` is the page data (a memoryview into the reader's buffer, valid until the next
    record, unless the reader was asked to copy).
    """

    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION
    flags: int = 0
    pages_alloc: int = 0
    normal_pages: int = 0
    next_packet_size: int = 0
    packet_num: int = 0
    zero_pages: int | None = 0
    unused: bytes = bytes(28)  # 32 bytes in the 7.2 layout
    ramblock: str = ""
    ramblock_tail: bytes = b""
    normal_offsets: list[int] = field(default_factory=list)
    zero_offsets: list[int] = field(default_factory=list)
    unused_offsets: list[int] = field(default_factory=list)
    data: Any = b""

    @property
    def layout(self) -> str:
        return LAYOUT_V72 if self.zero_pages is None else LAYOUT_V90

    @property
    def is_sync(self) -> bool:
        return bool(self.flags & MULTIFD_FLAG_SYNC)


@dataclass(slots=True, kw_only=True)
class MultifdDeviceStatePacket(Record):
    """A device-state packet (10.0+): a buffer for one SaveStateEntry's load_state_buffer."""

    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION
    flags: int = MULTIFD_FLAG_DEVICE_STATE
    idstr: str = ""
    idstr_tail: bytes = b""  # as MultifdRamPacket.ramblock_tail
    instance_id: int = 0
    next_packet_size: int = 0
    payload: Any = b""

    @property
    def is_sync(self) -> bool:
        return bool(self.flags & MULTIFD_FLAG_SYNC)


# --- helpers shared by the codec and the reader ---------------------------------------------


def _split_name(raw: bytes) -> tuple[str, bytes]:
    i = raw.find(b"\0")
    if i < 0:
        return raw.decode("latin-1"), b""  # not terminated: all 256 bytes are the name
    tail = raw[i:]
    return raw[:i].decode("latin-1"), (bytes(tail) if tail.count(0) != len(tail) else b"")


def _join_name(name: str, tail: bytes, size: int) -> bytes:
    raw = name.encode("latin-1")
    raw = raw + tail if tail else raw.ljust(size, b"\0")
    if len(raw) != size:
        raise ValueError(f"name {name!r} with {len(tail)} tail bytes does not fill {size} bytes")
    return raw


def _split_offsets(arr, normal: int, zero: int | None) -> tuple[list[int], list[int], list[int]]:
    n = min(normal, len(arr))
    z = 0 if zero is None else min(zero, len(arr) - n)
    if isinstance(arr, array):  # the reader's: trailing zero entries found in C
        used = len(arr[n + z :].tobytes().rstrip(b"\0"))
        rest = list(arr[n + z : n + z + (used + arr.itemsize - 1) // arr.itemsize])
    else:
        rest = list(arr[n + z :])
        while rest and not rest[-1]:
            rest.pop()
    return list(arr[:n]), list(arr[n : n + z]), rest


def _join_offsets(rec: MultifdRamPacket, page_count: int) -> list[int]:
    arr = [*rec.normal_offsets, *rec.zero_offsets, *rec.unused_offsets]
    if len(arr) > page_count:
        raise ValueError(f"{len(arr)} offsets do not fit an array of {page_count}")
    return arr + [0] * (page_count - len(arr))


def ram_data_length(flags: int, normal_pages: int, next_packet_size: int, *, page_size: int = TARGET_PAGE_SIZE,
                    compression_mask: int = MULTIFD_FLAG_COMPRESSION_MASK) -> int:
    """Bytes of page data after a RAM packet header (the framing rule in the module doc)."""
    if normal_pages == 0:
        return 0
    if flags & compression_mask == MULTIFD_FLAG_NOCOMP:
        return normal_pages * page_size
    return next_packet_size


def _ram_record(h: dict, raw_name: bytes, arr, data, *, offset: int, channel: str) -> MultifdRamPacket:
    name, tail = _split_name(raw_name)
    normal, zero, rest = _split_offsets(arr, h["normal_pages"], h.get("zero_pages"))
    return MultifdRamPacket(
        offset=offset, channel=channel, magic=h["magic"], version=h["version"], flags=h["flags"],
        pages_alloc=h["pages_alloc"], normal_pages=h["normal_pages"], next_packet_size=h["next_packet_size"],
        packet_num=h["packet_num"], zero_pages=h.get("zero_pages"), unused=bytes(h["unused"]), ramblock=name,
        ramblock_tail=tail, normal_offsets=normal, zero_offsets=zero, unused_offsets=rest, data=data,
    )


# --- parse / build of single records ---------------------------------------------------------


def _decode_error(e: Exception, what: str, channel: str, offset: int) -> DecodeError:
    return Truncated(f"{what} does not decode: {str(e).splitlines()[-1]}", channel=channel, offset=offset)


def parse_init(data: bytes, *, offset: int = 0, channel: str = "multifd0") -> MultifdInit:
    from construct import ConstructError

    from .multifd_layouts import MultifdInitPacket

    try:
        c = MultifdInitPacket.parse(data)
    except ConstructError as e:
        raise _decode_error(e, "multifd initial packet", channel, offset) from None
    return MultifdInit(offset=offset, channel=channel, magic=c.magic, version=c.version, uuid=c.uuid, id=c.id,
                       unused1=c.unused1, unused2=c.unused2)


def build_init(rec: MultifdInit) -> bytes:
    from .multifd_layouts import MultifdInitPacket

    return MultifdInitPacket.build({"magic": rec.magic, "version": rec.version, "uuid": rec.uuid, "id": rec.id,
                                    "unused1": rec.unused1, "unused2": rec.unused2})


def parse_ram_packet(data: bytes, *, layout: str = LAYOUT_V90, page_count: int = MULTIFD_PAGE_COUNT,
                     page_size: int = TARGET_PAGE_SIZE, compression_mask: int | None = None,
                     max_data: int = MAX_PACKET_DATA, offset: int = 0, channel: str = "multifd0") -> tuple[MultifdRamPacket, int]:
    """One RAM packet (header and data) from the start of `data`: (record, bytes used)."""
    from construct import ConstructError

    from .multifd_layouts import MultifdPacketV72, MultifdPacketV90

    codec = MultifdPacketV72 if layout == LAYOUT_V72 else MultifdPacketV90
    mask = compression_mask_for(layout) if compression_mask is None else compression_mask
    try:
        c = codec.parse(data, page_count=page_count)
    except ConstructError as e:
        raise _decode_error(e, "multifd RAM packet header", channel, offset) from None
    hsize = ram_packet_header_size(page_count)
    n = ram_data_length(c.flags, c.normal_pages, c.next_packet_size, page_size=page_size, compression_mask=mask)
    if n > max_data:
        raise HostileLength(f"packet data length {n} exceeds {max_data}", channel=channel, offset=offset)
    if len(data) < hsize + n:
        raise Truncated(f"packet data truncated: {len(data) - hsize} of {n} bytes", channel=channel, offset=offset)
    return _ram_record(c, c.ramblock, c.offset, bytes(data[hsize : hsize + n]), offset=offset, channel=channel), hsize + n


def build_ram_packet(rec: MultifdRamPacket, *, page_count: int = MULTIFD_PAGE_COUNT) -> bytes:
    """Header (layout chosen by rec.zero_pages being None or not) followed by rec.data.
    Fields are written as given: nothing is recomputed from the offsets or the data."""
    from .multifd_layouts import MultifdPacketV72, MultifdPacketV90

    obj = {
        "magic": rec.magic, "version": rec.version, "flags": rec.flags, "pages_alloc": rec.pages_alloc,
        "normal_pages": rec.normal_pages, "next_packet_size": rec.next_packet_size, "packet_num": rec.packet_num,
        "unused": rec.unused, "ramblock": _join_name(rec.ramblock, rec.ramblock_tail, MULTIFD_RAMBLOCK_NAME_SIZE),
        "offset": _join_offsets(rec, page_count),
    }
    if rec.zero_pages is None:
        codec, reserved = MultifdPacketV72, 32
    else:
        codec, reserved = MultifdPacketV90, 28
        obj["zero_pages"] = rec.zero_pages
    if len(rec.unused) != reserved:
        raise ValueError(f"the {rec.layout} layout has {reserved} reserved bytes, the record has {len(rec.unused)}")
    return codec.build(obj, page_count=page_count) + bytes(rec.data)


def parse_device_state_packet(data: bytes, *, max_data: int = MAX_PACKET_DATA, offset: int = 0,
                              channel: str = "multifd0") -> tuple[MultifdDeviceStatePacket, int]:
    from construct import ConstructError

    from .multifd_layouts import MultifdPacketDeviceState, MultifdPacketDeviceStateHeader

    try:
        h = MultifdPacketDeviceStateHeader.parse(data)
    except ConstructError as e:
        raise _decode_error(e, "multifd device-state packet header", channel, offset) from None
    if h.next_packet_size > max_data:
        raise HostileLength(f"device-state payload length {h.next_packet_size} exceeds {max_data}", channel=channel,
                            offset=offset)
    try:
        c = MultifdPacketDeviceState.parse(data)
    except ConstructError as e:
        raise _decode_error(e, "multifd device-state packet", channel, offset) from None
    name, tail = _split_name(c.idstr)
    rec = MultifdDeviceStatePacket(offset=offset, channel=channel, magic=c.magic, version=c.version, flags=c.flags,
                                   idstr=name, idstr_tail=tail, instance_id=c.instance_id,
                                   next_packet_size=c.next_packet_size, payload=c.payload)
    return rec, MULTIFD_DEVICE_STATE_HEADER_SIZE + c.next_packet_size


def build_device_state_packet(rec: MultifdDeviceStatePacket) -> bytes:
    """Header then payload; next_packet_size is written as given (it may lie)."""
    from .multifd_layouts import MultifdPacketDeviceStateHeader

    head = MultifdPacketDeviceStateHeader.build({
        "magic": rec.magic, "version": rec.version, "flags": rec.flags,
        "idstr": _join_name(rec.idstr, rec.idstr_tail, MULTIFD_DEVICE_STATE_IDSTR_SIZE),
        "instance_id": rec.instance_id, "next_packet_size": rec.next_packet_size,
    })
    return head + bytes(rec.payload)


def build_record(rec: Record, *, page_count: int = MULTIFD_PAGE_COUNT) -> bytes:
    if isinstance(rec, MultifdInit):
        return build_init(rec)
    if isinstance(rec, MultifdRamPacket):
        return build_ram_packet(rec, page_count=page_count)
    if isinstance(rec, MultifdDeviceStatePacket):
        return build_device_state_packet(rec)
    raise TypeError(f"not a multifd record: {type(rec).__name__}")


def build_channel(records: Iterable[Record], *, page_count: int = MULTIFD_PAGE_COUNT) -> bytes:
    """The bytes of a whole channel: the initial packet, then every packet, in order."""
    return b"".join(build_record(r, page_count=page_count) for r in records)


# --- layout detection -------------------------------------------------------------------------


def layout_evidence(flags: int, pages_alloc: int, normal_pages: int, next_packet_size: int, word32: int,
                    has_name: bool) -> str | None:
    """What one RAM packet header says about its layout; None when it fits both.

    7.2 … 8.2 (offset 32 reserved, always written as 0):
      * SYNC on a packet that carries pages (9.0+ sends SYNC as a separate empty packet);
      * SYNC, no pages, pages_alloc ≠ 0 (a 9.0+ SYNC packet has pages_alloc 0);
      * no normal pages, word 32 zero, but a next_packet_size or a block name: fields left
        over from the channel's previous packet, which a 9.0+ source never sends.
    9.0+:
      * SYNC with pages_alloc 0;
      * word 32 non-zero and ≤ pages_alloc − normal_pages: a plausible zero_pages count.
    """
    sync = flags & MULTIFD_FLAG_SYNC
    if sync and normal_pages:
        return LAYOUT_V72
    if not normal_pages and not word32:
        if sync and pages_alloc:
            return LAYOUT_V72
        if next_packet_size or has_name:
            return LAYOUT_V72
    if sync and not pages_alloc:
        return LAYOUT_V90
    if word32 and normal_pages <= pages_alloc and word32 <= pages_alloc - normal_pages:
        return LAYOUT_V90
    return None


# --- streaming reader ---------------------------------------------------------------------------

_INIT = struct.Struct(">II16sB7s32s")
_COMMON = struct.Struct(">III")
_RAM_FRONT_S = struct.Struct(">IIIIIIQI")  # … packet_num, word at offset 32
_DEV_TAIL = struct.Struct(">II")
_LITTLE = sys.byteorder == "little"


class _Window(Window):
    """The shared read window, plus copies that name what was cut short."""

    def take(self, n: int, copy: bool, what: str, start: int) -> Any:
        """n bytes: a memoryview into the window when they fit (and copy is False)."""
        if n <= self.size:
            if not self.fill(n):
                raise Truncated(f"{what}: {self.end - self.pos} of {n} bytes", offset=start)
            out = self.mv[self.pos : self.pos + n]
            self.pos += n
            return bytes(out) if copy else out
        parts, left = [], n
        while left:
            if not self.fill(1):
                raise Truncated(f"{what}: {n - left} of {n} bytes", offset=start)
            k = min(left, self.end - self.pos)
            parts.append(bytes(self.mv[self.pos : self.pos + k]))
            self.pos += k
            left -= k
        return b"".join(parts)


class MultifdChannelReader:
    """Iterate the records of one captured multifd channel: MultifdInit, then
    MultifdRamPacket / MultifdDeviceStatePacket records until the stream ends.

    layout: "7.2" (7.2 … 8.2 header), "9.0" (9.0+ header, zero_pages) or "auto". Pass the
      layout when the sender's version is known. "auto" decides once per channel, from the
      first packet that gives evidence (see `layout_evidence`; with real sources the first
      packet is always a SYNC that decides it). Until then packets are decoded with the 9.0
      layout — the two agree on every byte when word 32 is 0, and a non-zero plausible word
      32 is itself 9.0 evidence. `self.layout` tells the decision (None: undecided).
    device_state: whether flag 0x40 makes a packet a device-state packet (10.0+). Default:
      yes unless the layout is 7.2 (7.2 … 9.2 receivers ignore the bit on a RAM packet).
    compression_mask: the compression bits of flags (default by layout, see
      `compression_mask_for`); they decide how much data follows a RAM packet header.
    copy: return data/payload as bytes instead of memoryviews into the window (which are
      valid only until the next record is read).

    A bad initial-packet magic ends the iteration after the MultifdInit record (the bytes
    are not a multifd channel); a bad packet magic raises BadPacketMagic.
    """

    def __init__(self, src: BinaryIO, channel: str = "multifd0", *, layout: str = "auto",
                 page_count: int = MULTIFD_PAGE_COUNT, page_size: int = TARGET_PAGE_SIZE,
                 device_state: bool | None = None, compression_mask: int | None = None,
                 max_data: int = MAX_PACKET_DATA, window: int = 4 << 20, copy: bool = False):
        if layout not in (*LAYOUTS, "auto"):
            raise ValueError(f"layout must be one of {LAYOUTS} or 'auto', not {layout!r}")
        if page_count < 1 or page_size < 1:
            raise ValueError("page_count and page_size must be positive")
        self.channel = channel
        self.page_count = page_count
        self.page_size = page_size
        self.header_size = ram_packet_header_size(page_count)
        self.layout: str | None = None if layout == "auto" else layout
        self._device_state = device_state
        self._mask = compression_mask
        self.max_data = max_data
        self.copy = copy
        self.w = _Window(src, max(window, self.header_size + page_count * page_size, 1 << 16))
        self.init: MultifdInit | None = None
        self.packets_read = 0

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from self._records()
        except Truncated as t:  # raised here without the channel: placed now
            raise Truncated(f"channel ends in the middle of a packet ({t.message})", channel=self.channel,
                            offset=t.offset) from None

    def _records(self) -> Iterator[Record]:
        w = self.w
        if not w.fill(MULTIFD_INIT_PACKET_SIZE):
            raise Truncated(f"initial packet: {w.end - w.pos} of {MULTIFD_INIT_PACKET_SIZE} bytes", offset=0)
        magic, version, uuid, cid, u1, u2 = _INIT.unpack_from(w.buf, w.pos)
        self.init = MultifdInit(offset=0, channel=self.channel, magic=magic, version=version, uuid=uuid, id=cid,
                                unused1=u1, unused2=u2)
        w.pos += MULTIFD_INIT_PACKET_SIZE
        yield self.init
        if magic != MULTIFD_MAGIC:
            return
        while w.fill(1):
            off = w.offset()
            if not w.fill(MULTIFD_PACKET_COMMON_SIZE):
                raise Truncated("packet header", offset=off)
            magic, version, flags = _COMMON.unpack_from(w.buf, w.pos)
            if magic != MULTIFD_MAGIC:
                raise BadPacketMagic(f"packet magic {magic:#x}, expected {MULTIFD_MAGIC:#x}: packet framing is lost",
                                     channel=self.channel, offset=off)
            if flags & MULTIFD_FLAG_DEVICE_STATE and self._device_state_applies():
                if self.layout is None:
                    self.layout = LAYOUT_V90  # device state exists from 10.0 on
                yield self._device_packet(off)
            else:
                yield self._ram_packet(off)
            self.packets_read += 1

    def _device_state_applies(self) -> bool:
        if self._device_state is not None:
            return self._device_state
        return self.layout != LAYOUT_V72

    def _device_packet(self, off: int) -> MultifdDeviceStatePacket:
        w = self.w
        if not w.fill(MULTIFD_DEVICE_STATE_HEADER_SIZE):
            raise Truncated("device-state packet header", offset=off)
        p = w.pos
        magic, version, flags = _COMMON.unpack_from(w.buf, p)
        name, tail = _split_name(bytes(w.mv[p + 12 : p + 268]))
        instance_id, size = _DEV_TAIL.unpack_from(w.buf, p + 268)
        if size > self.max_data:
            raise HostileLength(f"device-state payload length {size} exceeds {self.max_data}", channel=self.channel,
                                offset=off)
        w.pos += MULTIFD_DEVICE_STATE_HEADER_SIZE
        payload = w.take(size, self.copy, "device-state payload", off)
        return MultifdDeviceStatePacket(offset=off, channel=self.channel, magic=magic, version=version, flags=flags,
                                        idstr=name, idstr_tail=tail, instance_id=instance_id,
                                        next_packet_size=size, payload=payload)

    def _ram_packet(self, off: int) -> MultifdRamPacket:
        w = self.w
        hs = self.header_size
        if not w.fill(hs):
            raise Truncated(f"RAM packet header: {w.end - w.pos} of {hs} bytes", offset=off)
        p = w.pos
        magic, version, flags, alloc, normal, nps, pnum, word32 = _RAM_FRONT_S.unpack_from(w.buf, p)
        raw_name = bytes(w.mv[p + 64 : p + 320])
        if self.layout is None:
            self.layout = layout_evidence(flags, alloc, normal, nps, word32, raw_name[0] != 0)
        layout = self.layout or LAYOUT_V90
        arr = array("Q")
        arr.frombytes(w.mv[p + 320 : p + hs])
        if _LITTLE:
            arr.byteswap()
        h = {"magic": magic, "version": version, "flags": flags, "pages_alloc": alloc, "normal_pages": normal,
             "next_packet_size": nps, "packet_num": pnum}
        if layout == LAYOUT_V72:
            h["unused"] = bytes(w.mv[p + 32 : p + 64])
        else:
            h["zero_pages"] = word32
            h["unused"] = bytes(w.mv[p + 36 : p + 64])
        mask = compression_mask_for(layout) if self._mask is None else self._mask
        n = ram_data_length(flags, normal, nps, page_size=self.page_size, compression_mask=mask)
        if n > self.max_data:
            raise HostileLength(f"packet data length {n} exceeds {self.max_data} (normal_pages {normal}, "
                                f"next_packet_size {nps})", channel=self.channel, offset=off)
        w.pos += hs
        data = w.take(n, self.copy, "RAM packet data", off)
        return _ram_record(h, raw_name, arr, data, offset=off, channel=self.channel)

