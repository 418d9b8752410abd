"""Structure-aware mutation of a real multifd capture (a main stream and its channels).

The seed is the capture decoded once: the main stream as strategies.fuzz decodes it, each
channel as wireformat.multifd reads it (the initial packet, RAM packets, SYNC packets,
device-state packets), every record with the bytes it had on the wire. A fuzz input is the
seed plus a short list of named edits drawn by hypothesis: packet counts that disagree with
the offsets, offsets outside the block or not page aligned, data lengths, packet numbers
reused or skipped, SYNC set or cleared, compression and device-state flags, magic and
version, unknown block names, packets dropped, duplicated, reordered or moved to another
channel, initial packets with another id or uuid, injected device-state packets, bytes
changed inside one named header field — and, composing with strategies.fuzz, every edit of
the main stream. An edited packet is rebuilt by wireformat (the header as given, nothing
recomputed), so a finding reads as decoded packets with the edit named.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import strategies as st

from strategies.fuzz import EDITS as MAIN_EDITS
from strategies.fuzz import INTERESTING_U32, Seed, State, Unit, decode_seed, _describe, _pick, _Raw
from wireformat.constants import MULTIFD_MAGIC, MULTIFD_VERSION
from wireformat.multifd import (
    LAYOUT_V72,
    MULTIFD_FLAG_DEVICE_STATE,
    MULTIFD_FLAG_SYNC,
    MULTIFD_FLAG_ZLIB,
    MULTIFD_FLAG_ZSTD,
    MULTIFD_PAGE_COUNT,
    MultifdChannelReader,
    MultifdDeviceStatePacket,
    MultifdInit,
    MultifdRamPacket,
    build_record,
)
from wireformat.records import RamRecord

# Byte ranges of the RAM packet header (both layouts agree but for offset 32), for edits
# of bytes inside one field: (name, offset, size).
RAM_HEADER_FIELDS = (("magic", 0, 4), ("version", 4, 4), ("flags", 8, 4), ("pages_alloc", 12, 4),
                     ("normal_pages", 16, 4), ("next_packet_size", 20, 4), ("packet_num", 24, 8),
                     ("zero_pages/unused", 32, 4), ("ramblock", 64, 256), ("offset[0]", 320, 8),
                     ("offset[1]", 328, 8))
INIT_FIELDS = (("magic", 0, 4), ("version", 4, 4), ("uuid", 8, 16), ("id", 24, 1), ("unused", 25, 39))
FLAG_CHOICES = (MULTIFD_FLAG_SYNC, MULTIFD_FLAG_ZLIB, MULTIFD_FLAG_ZSTD, 0x8, 0x10, 0x20, MULTIFD_FLAG_DEVICE_STATE,
                0x80, 0x100, 0x80000000)


@dataclass
class MUnit:
    record: Any  # MultifdInit / MultifdRamPacket / MultifdDeviceStatePacket / _Raw
    raw: bytes | None  # the bytes on the wire; None once edited (rebuilt by wireformat)

    def bytes(self) -> bytes:
        return self.raw if self.raw is not None else build_record(self.record)


@dataclass
class MultifdSeed:
    main: Seed
    channels: list[list[MUnit]]  # in channel-id order, each starting with its initial packet
    blocks: dict[str, int]  # RAM block name -> used_length (the main stream's MEM_SIZE record)
    layout: str | None  # "7.2" / "9.0" as the channel readers decided

    def __repr__(self) -> str:
        return f"MultifdSeed({self.main!r}, channels {[len(c) for c in self.channels]} records)"

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis's printer: not every field
        p.text(repr(self))


def decode_channel(data: bytes, name: str) -> tuple[list[MUnit], str | None]:
    """Units of one channel a real source wrote. ValueError when it does not decode."""
    reader = MultifdChannelReader(io.BytesIO(data), name, copy=True)
    recs = list(reader)
    if not recs or not isinstance(recs[0], MultifdInit) or recs[0].magic != MULTIFD_MAGIC:
        raise ValueError(f"{name}: not a multifd channel")
    ends = [r.offset for r in recs[1:]] + [len(data)]
    return [MUnit(r, data[r.offset:end]) for r, end in zip(recs, ends)], reader.layout


def decode_multifd_seed(main: bytes, channels: list[bytes], page_size: int = 4096) -> MultifdSeed:
    """channels: the channel files, any order; they are put in the order of their ids."""
    seed = decode_seed(main, page_size)
    decoded, layout = [], None
    for k, data in enumerate(channels):
        units, lay = decode_channel(data, f"multifd{k}")
        layout = layout or lay
        decoded.append(units)
    decoded.sort(key=lambda units: units[0].record.id)
    for units in decoded:  # records named by their channel id, as check names them
        name = f"multifd{units[0].record.id}"
        for u in units:
            u.record.channel = name
    blocks: dict[str, int] = {}
    for u in seed.units:
        if isinstance(u.record, RamRecord) and u.record.blocks:
            blocks.update({b.name: b.used_length for b in u.record.blocks})
            break
    return MultifdSeed(seed, decoded, blocks, layout)


# ------------------------------------------------------------------- the edits

@dataclass
class MState:
    seed: MultifdSeed
    main: State
    channels: list[list[MUnit]]
    applied: list[str] = field(default_factory=list)


def _where(s: MState, c: int, i: int) -> str:
    return f"{s.channels[c][0].record.channel if s.channels[c] else f'channel {c}'} #{i}"


def describe_packet(r: Any) -> str:
    if isinstance(r, MultifdInit):
        return f"init id={r.id} magic={r.magic:#x} v{r.version} uuid={r.uuid.hex()}"
    if isinstance(r, MultifdRamPacket):
        offs = ",".join(f"{o:#x}" for o in r.normal_offsets[:2]) + ("…" if len(r.normal_offsets) > 2 else "")
        zero = "" if r.zero_pages is None else f" zero={r.zero_pages}"
        return (f"ram packet num={r.packet_num} flags={r.flags:#x}{' SYNC' if r.is_sync else ''} alloc={r.pages_alloc} "
                f"normal={r.normal_pages}{zero} size={r.next_packet_size} block={r.ramblock!r} offsets=[{offs}]"
                + (f" magic={r.magic:#x} v{r.version}" if (r.magic, r.version) != (MULTIFD_MAGIC, MULTIFD_VERSION) else ""))
    if isinstance(r, MultifdDeviceStatePacket):
        return (f"device-state packet {r.idstr!r}/{r.instance_id} flags={r.flags:#x} size={r.next_packet_size} "
                f"payload={len(r.payload)} bytes")
    return getattr(r, "kind", type(r).__name__)


def _packets(s: MState, kind: type = MultifdRamPacket, pages: bool | None = None) -> list[tuple[int, int]]:
    return [(c, i) for c, ch in enumerate(s.channels) for i, u in enumerate(ch)
            if isinstance(u.record, kind) and (pages is None or bool(getattr(u.record, "normal_pages", 0)) == pages)]


def _replace(s: MState, c: int, i: int, **changes: Any) -> Any:
    """The record with `changes`, rebuilt; None (and nothing edited) when they change nothing."""
    old = s.channels[c][i].record
    rec = dataclasses.replace(old, **changes)
    if rec == old:
        return None
    s.channels[c][i] = MUnit(rec, None)
    return rec


def _u32(draw) -> int:
    return draw(st.sampled_from(INTERESTING_U32) | st.integers(0, 2**32 - 1))


def packet_counts(draw, s: MState):
    """normal_pages, zero_pages or pages_alloc at odds with the offsets and the data."""
    at = _pick(draw, _packets(s))
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    names = ["normal_pages", "pages_alloc"] + ([] if old.zero_pages is None else ["zero_pages"])
    name = draw(st.sampled_from(names))
    cur = getattr(old, name)
    v = draw(st.sampled_from([cur + 1, max(0, cur - 1), 0, MULTIFD_PAGE_COUNT, MULTIFD_PAGE_COUNT + 1,
                              0xFFFFFFFF]) | st.integers(0, 2 * MULTIFD_PAGE_COUNT)) % 2**32
    if _replace(s, *at, **{name: v}) is None:
        return None
    return f"{_where(s, *at)} {name} {cur} -> {v} ({describe_packet(old)})"


def packet_offset(draw, s: MState):
    """One page offset outside its block, at its very end, or not page aligned."""
    at = _pick(draw, [(c, i) for c, i in _packets(s) if s.channels[c][i].record.normal_offsets
                      or s.channels[c][i].record.zero_offsets])
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    which = "normal_offsets" if old.normal_offsets and (not old.zero_offsets or draw(st.booleans())) else "zero_offsets"
    offs = list(getattr(old, which))
    k = draw(st.integers(0, len(offs) - 1))
    size = s.seed.blocks.get(old.ramblock, 64 << 20)
    page = s.seed.main.page_size
    v = draw(st.sampled_from([size, size - page, size + page, offs[k] + 1, offs[k] + page // 2, 2**63, 2**64 - page,
                              2**64 - 1]) | st.integers(0, 2**64 - 1))
    was, offs[k] = offs[k], v
    if _replace(s, *at, **{which: offs}) is None:
        return None
    return f"{_where(s, *at)} {which}[{k}] {was:#x} -> {v:#x} (block {old.ramblock!r} of {size:#x} bytes)"


def packet_size(draw, s: MState):
    """next_packet_size, or the page data cut or grown by part of a page."""
    at = _pick(draw, _packets(s))
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    if draw(st.booleans()) or not old.normal_pages:
        v = _u32(draw)
        if _replace(s, *at, next_packet_size=v) is None:
            return None
        return f"{_where(s, *at)} next_packet_size {old.next_packet_size} -> {v}"
    data = bytes(old.data)
    delta = draw(st.sampled_from([-4096, -1, 1, 4096, -len(data)]))
    new = data[:len(data) + delta] if delta < 0 else data + bytes(delta)
    if _replace(s, *at, data=new) is None:
        return None
    return f"{_where(s, *at)} page data {len(data)} -> {len(new)} bytes"


def packet_num(draw, s: MState):
    at = _pick(draw, _packets(s))
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    others = [u.record.packet_num for c in s.channels for u in c if isinstance(u.record, MultifdRamPacket)]
    v = draw(st.sampled_from([_pick(draw, others), old.packet_num + 1, old.packet_num + 1000, max(0, old.packet_num - 1),
                              0, 2**64 - 1])) % 2**64  # an edit of an edited number wraps
    if _replace(s, *at, packet_num=v) is None:
        return None
    return f"{_where(s, *at)} packet_num {old.packet_num} -> {v}"


def packet_flags(draw, s: MState):
    """SYNC set or cleared, a compression method the destination does not use, device state."""
    at = _pick(draw, _packets(s))
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    bit = draw(st.sampled_from(FLAG_CHOICES))
    v = old.flags ^ bit
    if _replace(s, *at, flags=v) is None:
        return None
    return f"{_where(s, *at)} flags {old.flags:#x} -> {v:#x} ({'cleared' if old.flags & bit else 'set'} {bit:#x})"


def packet_magic(draw, s: MState):
    at = _pick(draw, _packets(s) + _packets(s, MultifdDeviceStatePacket))
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    if draw(st.booleans()):
        v = draw(st.sampled_from([0, MULTIFD_MAGIC + 1, 0x44332211]) | st.integers(0, 2**32 - 1))
        if _replace(s, *at, magic=v) is None:
            return None
        return f"{_where(s, *at)} magic -> {v:#x}"
    v = draw(st.sampled_from([0, 2, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1))
    if _replace(s, *at, version=v) is None:
        return None
    return f"{_where(s, *at)} version {old.version} -> {v}"


def packet_block(draw, s: MState):
    at = _pick(draw, _packets(s, pages=True)) or _pick(draw, _packets(s))
    if at is None:
        return None
    old = s.channels[at[0]][at[1]].record
    name = draw(st.sampled_from([*s.seed.blocks, "nope", "", "pc.ram\x00x", "x" * 255]))
    head, _, tail = name.partition("\x00")
    tail_bytes = (b"\x00" + tail.encode()).ljust(256 - len(head), b"\x00") if _ else b""
    if _replace(s, *at, ramblock=head, ramblock_tail=tail_bytes) is None:
        return None
    return f"{_where(s, *at)} block {old.ramblock!r} -> {name!r}"


def drop_packet(draw, s: MState):
    at = _pick(draw, _packets(s) + _packets(s, MultifdDeviceStatePacket))
    if at is None:
        return None
    old = s.channels[at[0]].pop(at[1])
    return f"dropped {_where(s, *at)} ({describe_packet(old.record)})"


def duplicate_packet(draw, s: MState):
    at = _pick(draw, _packets(s))
    if at is None:
        return None
    c, i = at
    u = s.channels[c][i]
    j = draw(st.integers(1, len(s.channels[c])))
    s.channels[c].insert(j, MUnit(u.record, u.raw))
    return f"duplicated {_where(s, c, i)} at #{j} ({describe_packet(u.record)})"


def move_packet(draw, s: MState):
    """A packet moved to another channel, or to another place in its own."""
    at = _pick(draw, _packets(s))
    if at is None:
        return None
    c, i = at
    u = s.channels[c].pop(i)
    d = draw(st.integers(0, len(s.channels) - 1))
    j = draw(st.integers(1, max(1, len(s.channels[d]))))
    rec = dataclasses.replace(u.record, channel=s.channels[d][0].record.channel) if s.channels[d] else u.record
    s.channels[d].insert(j, MUnit(rec, u.raw))
    return f"moved {_where(s, c, i)} to {_where(s, d, j)} ({describe_packet(u.record)})"


def init_packet(draw, s: MState):
    """A channel's initial packet: another id (a duplicate, out of range), uuid, magic, version."""
    c = draw(st.integers(0, len(s.channels) - 1))
    if not s.channels[c] or not isinstance(s.channels[c][0].record, MultifdInit):
        return None
    old = s.channels[c][0].record
    what = draw(st.sampled_from(["id", "uuid", "magic", "version"]))
    if what == "id":
        v = draw(st.sampled_from([(old.id + 1) % 256, len(s.channels), 255, 0]) | st.integers(0, 255))
        if _replace(s, c, 0, id=v) is None:
            return None
        return f"init of {old.channel}: id {old.id} -> {v}"
    if what == "uuid":
        v = draw(st.sampled_from([bytes(16), b"\xff" * 16]) | st.binary(min_size=16, max_size=16))
        if _replace(s, c, 0, uuid=v) is None:
            return None
        return f"init of {old.channel}: uuid -> {v.hex()}"
    if what == "magic":
        v = draw(st.sampled_from([0, MULTIFD_MAGIC ^ 1]) | st.integers(0, 2**32 - 1))
        if _replace(s, c, 0, magic=v) is None:
            return None
        return f"init of {old.channel}: magic -> {v:#x}"
    v = draw(st.sampled_from([0, 2, 0xFFFFFFFF]))
    if _replace(s, c, 0, version=v) is None:
        return None
    return f"init of {old.channel}: version -> {v}"


def device_state_packet(draw, s: MState):
    """A device-state packet injected (10.0+ destinations read flag 0x40 as one): for a device
    of the stream, for RAM, or for no one."""
    if s.seed.layout == LAYOUT_V72:  # no device-state packets before 10.0 (9.0+ header)
        return None
    c = draw(st.integers(0, len(s.channels) - 1))
    j = draw(st.integers(1, max(1, len(s.channels[c]))))
    names = sorted({u.record.idstr for u in s.main.units if getattr(u.record, "is_full", False)})
    idstr = draw(st.sampled_from([*names[:8], "ram", "nope", ""]))
    payload = draw(st.binary(max_size=64))
    size = draw(st.sampled_from([len(payload), len(payload) + 1, 0]))
    flags = MULTIFD_FLAG_DEVICE_STATE | draw(st.sampled_from([0, MULTIFD_FLAG_SYNC]))
    rec = MultifdDeviceStatePacket(offset=0, channel=s.channels[c][0].record.channel if s.channels[c] else "",
                                   flags=flags, idstr=idstr, instance_id=draw(st.sampled_from([0, 1, 0xFFFFFFFF])),
                                   next_packet_size=size, payload=payload)
    s.channels[c].insert(j, MUnit(rec, None))
    return f"injected at {_where(s, c, j)}: {describe_packet(rec)}"


def field_bytes(draw, s: MState):
    """Bytes changed inside one named field of a packet header (the rest as it was)."""
    at = _pick(draw, [(c, i) for c, ch in enumerate(s.channels) for i, u in enumerate(ch)
                      if isinstance(u.record, (MultifdInit, MultifdRamPacket))])
    if at is None:
        return None
    c, i = at
    u = s.channels[c][i]
    fields = INIT_FIELDS if isinstance(u.record, MultifdInit) else RAM_HEADER_FIELDS
    name, off, size = draw(st.sampled_from(fields))
    raw = bytearray(u.bytes())
    k = off + draw(st.integers(0, size - 1))
    op = draw(st.sampled_from(["flip", "set"]))
    old = raw[k]
    if op == "flip":
        raw[k] ^= 1 << draw(st.integers(0, 7))
    else:
        raw[k] = draw(st.sampled_from([0, 0xFF, 0x80, 0x7F, 0x01]))
    if raw[k] == old:
        return None
    s.channels[c][i] = MUnit(_Raw(f"{describe_packet(u.record)}, {name} byte {k - off} {old:#04x}->{raw[k]:#04x}"),
                             bytes(raw))
    return f"{_where(s, c, i)} {name} byte {k - off}: {old:#04x} -> {raw[k]:#04x} ({op})"


def truncate_channel(draw, s: MState):
    c = draw(st.integers(0, len(s.channels) - 1))
    ch = s.channels[c]
    if len(ch) < 2:
        return None
    i = draw(st.integers(1, len(ch) - 1))
    name = _where(s, c, i)
    if draw(st.booleans()):  # inside the packet: its header (or data) cut short
        raw = ch[i].bytes()
        cut = draw(st.integers(0, len(raw) - 1))
        ch[i] = MUnit(_Raw(f"first {cut} bytes of {describe_packet(ch[i].record)}"), raw[:cut])
        del ch[i + 1:]
        return f"{name}: channel ends {cut} bytes into it"
    del ch[i:]
    return f"channel cut before {name}"


MULTIFD_EDITS: dict[str, Callable] = {
    "packet-counts": packet_counts,
    "packet-offset": packet_offset,
    "packet-size": packet_size,
    "packet-num": packet_num,
    "packet-flags": packet_flags,
    "packet-magic": packet_magic,
    "packet-block": packet_block,
    "drop-packet": drop_packet,
    "duplicate-packet": duplicate_packet,
    "move-packet": move_packet,
    "init-packet": init_packet,
    "device-state-packet": device_state_packet,
    "field-bytes": field_bytes,
    "truncate-channel": truncate_channel,
}


def _main_edit(name: str) -> Callable:
    def edit(draw, s: MState):
        return MAIN_EDITS[name](draw, s.main)
    return edit


# the main stream's edits compose: "main:drop-section", ...
EDITS: dict[str, Callable] = {**MULTIFD_EDITS, **{f"main:{k}": _main_edit(k) for k in MAIN_EDITS}}


@dataclass
class MultifdFuzzInput:
    seed: MultifdSeed
    edits: list[str]
    main_units: list[Unit]
    channels: list[list[MUnit]]

    def __repr__(self) -> str:
        return f"MultifdFuzzInput({self.edits!r})"

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis's printer: not every field
        p.text(repr(self))

    def data(self) -> dict[str, bytes]:
        """The capture as files: main.bin and multifdK.bin (K: the channel's place in the seed)."""
        ps = self.seed.main.page_size
        out = {"main.bin": b"".join(u.bytes(ps) for u in self.main_units)}
        for k, ch in enumerate(self.channels):
            out[f"multifd{k}.bin"] = b"".join(u.bytes() for u in ch)
        return out

    def changed(self) -> list[str]:
        """The records that differ from the seed (edited or injected), decoded."""
        out = [f"main unit {k}: {_describe(u.record)}" for k, u in enumerate(self.main_units)
               if u.raw is None or isinstance(u.record, _Raw)]
        for c, ch in enumerate(self.channels):
            out += [f"multifd{c} #{k}: {describe_packet(u.record)}" for k, u in enumerate(ch)
                    if u.raw is None or isinstance(u.record, _Raw)]
        return out


@st.composite
def multifd_inputs(draw, seed: MultifdSeed, max_edits: int = 3, names: tuple[str, ...] | None = None) -> MultifdFuzzInput:
    main = State(seed.main, list(seed.main.units))
    s = MState(seed, main, [list(ch) for ch in seed.channels])
    # multifd edits first in the list: hypothesis shrinks a choice towards the first ones
    choices = [n for n in (names or EDITS) if n in MULTIFD_EDITS] + sorted(n for n in (names or EDITS)
                                                                            if n not in MULTIFD_EDITS)
    for _ in range(draw(st.integers(1, max_edits))):
        name = draw(st.sampled_from(choices))
        what = EDITS[name](draw, s)
        if what is not None:
            s.applied.append(f"{name}: {what}")
    return MultifdFuzzInput(seed, s.applied, main.units, s.channels)


__all__ = ["EDITS", "MULTIFD_EDITS", "MUnit", "MultifdFuzzInput", "MultifdSeed", "decode_multifd_seed",
           "describe_packet", "multifd_inputs"]
