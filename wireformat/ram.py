"""The `ram` section payload: RAM_SAVE_FLAG_* records (QEMU migration/ram.c).

Parse parameters (keyword arguments of `RamRecordStruct.parse`/`build`):
  page_size          target page size (4096 on x86)
  ignore_shared      capability x-ignore-shared (MEM_SIZE entries carry mr_addr)
  mapped_ram         capability mapped-ram (MEM_SIZE entries carry a mapped-ram header)
  postcopy_advised   a 16-byte POSTCOPY_ADVISE was seen: huge-page blocks carry page_size
"""

from __future__ import annotations

from construct import (
    Bytes,
    Construct,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    GreedyBytes,
    Struct,
    Switch,
    Pass,
    If,
    Error,
    StreamError,
)

from .constants import MAPPED_RAM_HEADER_SIZE, RamSaveFlag as F
from .primitives import CountedString, RamWord
from .records import RamBlockInfo, RamRecord

CONTINUE = int(F.RAM_SAVE_FLAG_CONTINUE)

# Record kinds (flags without CONTINUE) that address a page and so name a block unless
# CONTINUE says "same block as the previous record on this channel".
PAGE_KINDS = frozenset(
    int(f) for f in (F.RAM_SAVE_FLAG_ZERO, F.RAM_SAVE_FLAG_PAGE, F.RAM_SAVE_FLAG_XBZRLE, F.RAM_SAVE_FLAG_COMPRESS_PAGE)
)
# Every kind a destination can act on; anything else is an unknown combination.
KNOWN_KINDS = PAGE_KINDS | {
    int(F.RAM_SAVE_FLAG_MEM_SIZE),
    int(F.RAM_SAVE_FLAG_EOS),
    int(F.RAM_SAVE_FLAG_HOOK),
    int(F.RAM_SAVE_FLAG_MULTIFD_FLUSH),
}

MappedRamHeader = Struct(
    "version" / Int32ub,
    "page_size" / Int64ub,
    "bitmap_offset" / Int64ub,
    "pages_offset" / Int64ub,
)


def _peek(stream, n):
    pos = stream.tell()
    data = stream.read(n)
    stream.seek(pos)
    return data


def _is_page_size(raw: bytes) -> bool:
    if len(raw) != 8:
        return False
    v = int.from_bytes(raw, "big")
    return 4096 <= v <= 1 << 40 and v & (v - 1) == 0


class _MemSizeBlocks(Construct):
    """MEM_SIZE block list: entries until their used_length add up to the record's total."""

    def _parse(self, stream, context, path):
        params = context._params
        total = context._.word["addr"]
        blocks, seen = [], 0
        while seen < total:
            name = CountedString._parsereport(stream, context, path)
            used = Int64ub._parsereport(stream, context, path)
            if used == 0 or seen + used > total:
                raise StreamError(f"MEM_SIZE block {name!r} length {used:#x} overruns total {total:#x}", path=path)
            info = RamBlockInfo(name=name, used_length=used)
            if params.get("postcopy_advised"):
                # QEMU adds a be64 page size for blocks whose page size differs from the
                # host's. The destination knows which from its own blocks (pass their
                # names as huge_page_blocks); from the bytes alone it is recognisable as a
                # power of two, where a block name starts with a non-zero length and a
                # record word always has flag bits set — unless x-ignore-shared puts a
                # power-of-two mr_addr in the same place.
                huge = params.get("huge_page_blocks")
                if name in huge if huge is not None else _is_page_size(_peek(stream, 8)):
                    info.page_size = Int64ub._parsereport(stream, context, path)
            if params.get("ignore_shared"):
                info.mr_addr = Int64ub._parsereport(stream, context, path)
            if params.get("mapped_ram"):
                # only the header: in a file the next block follows the block's page region,
                # which the streaming reader skips (wireformat.reader)
                hdr = MappedRamHeader._parsereport(stream, context, path)
                info.mapped_ram = {k: hdr[k] for k in ("version", "page_size", "bitmap_offset", "pages_offset")}
            blocks.append(info)
            seen += used
        return blocks

    def _build(self, obj, stream, context, path):
        for b in obj:
            CountedString._build(b.name, stream, context, path)
            Int64ub._build(b.used_length, stream, context, path)
            if b.page_size is not None:
                Int64ub._build(b.page_size, stream, context, path)
            if b.mr_addr is not None:
                Int64ub._build(b.mr_addr, stream, context, path)
            if b.mapped_ram is not None:
                MappedRamHeader._build({k: b.mapped_ram[k] for k in ("version", "page_size", "bitmap_offset", "pages_offset")},
                                       stream, context, path)
        return obj


def _kind(ctx):
    return ctx.word["flags"] & ~CONTINUE


def _names_block(ctx):
    return _kind(ctx) in PAGE_KINDS and not ctx.word["flags"] & CONTINUE


# The definition of a RAM record. The reader has a hand-written fast path for PAGE and
# ZERO records; tests/test_reader.py proves the two agree.
RamRecordStruct = Struct(
    "word" / RamWord,
    "block" / If(_names_block, CountedString),
    "body"
    / Switch(
        _kind,
        {
            int(F.RAM_SAVE_FLAG_ZERO): Struct("fill" / Int8ub),
            int(F.RAM_SAVE_FLAG_PAGE): Struct("data" / Bytes(lambda c: c._params.page_size)),
            int(F.RAM_SAVE_FLAG_XBZRLE): Struct("encoding" / Int8ub, "data" / Prefixed(Int16ub, GreedyBytes)),
            int(F.RAM_SAVE_FLAG_COMPRESS_PAGE): Struct("data" / Prefixed(Int32ub, GreedyBytes)),
            int(F.RAM_SAVE_FLAG_MEM_SIZE): Struct("blocks" / _MemSizeBlocks()),
            int(F.RAM_SAVE_FLAG_EOS): Pass,
            int(F.RAM_SAVE_FLAG_HOOK): Pass,
            int(F.RAM_SAVE_FLAG_MULTIFD_FLUSH): Pass,
        },
        default=Error,
    ),
)

DEFAULT_PARAMS = {"page_size": 4096, "ignore_shared": False, "mapped_ram": False, "postcopy_advised": False}


def record_from_container(c, offset=0, channel="main", depth=0) -> RamRecord:
    rec = RamRecord(offset=offset, channel=channel, depth=depth, addr=c.word["addr"], flags=c.word["flags"], block=c.block)
    body = c.body
    if body is not None:
        rec.fill = body.get("fill")
        rec.encoding = body.get("encoding")
        rec.data = body.get("data")
        rec.blocks = body.get("blocks")
    return rec


def parse_record(data: bytes, **params) -> RamRecord:
    p = {**DEFAULT_PARAMS, **params}
    return record_from_container(RamRecordStruct.parse(data, **p))


def build_record(rec: RamRecord, **params) -> bytes:
    p = {**DEFAULT_PARAMS, **params}
    kind = rec.flags & ~CONTINUE
    body: dict | None
    if kind == F.RAM_SAVE_FLAG_ZERO:
        body = {"fill": rec.fill}
    elif kind == F.RAM_SAVE_FLAG_PAGE:
        body = {"data": bytes(rec.data)}
    elif kind == F.RAM_SAVE_FLAG_XBZRLE:
        body = {"encoding": rec.encoding, "data": bytes(rec.data)}
    elif kind == F.RAM_SAVE_FLAG_COMPRESS_PAGE:
        body = {"data": bytes(rec.data)}
    elif kind == F.RAM_SAVE_FLAG_MEM_SIZE:
        body = {"blocks": rec.blocks or []}
    else:
        body = None
    return RamRecordStruct.build({"word": {"addr": rec.addr, "flags": rec.flags}, "block": rec.block, "body": body}, **p)


# --- XBZRLE payload (migration/xbzrle.c): pairs of ULEB128 (zero run, new-bytes run) -------


class XbzrleError(ValueError):
    pass


def _uleb128(data: bytes, pos: int) -> tuple[int, int]:
    """QEMU's run lengths: ULEB128 of at most two bytes."""
    b0 = data[pos]
    if not b0 & 0x80:
        return b0, pos + 1
    if pos + 1 >= len(data):
        raise XbzrleError("run length truncated")
    b1 = data[pos + 1]
    if b1 & 0x80:
        raise XbzrleError("run length longer than two bytes")
    return (b0 & 0x7F) | (b1 << 7), pos + 2


def xbzrle_decode(encoded: bytes, old_page: bytes | bytearray, page_size: int = 4096) -> bytearray:
    """Apply an XBZRLE delta to the old page content; raise XbzrleError on a bad delta."""
    if len(encoded) > page_size:
        raise XbzrleError("len overflow")
    page = bytearray(old_page)
    pos = dst = 0
    first = True
    while pos < len(encoded):
        if len(encoded) - pos < 2:
            raise XbzrleError("decode error: trailing byte")
        zrun, pos = _uleb128(encoded, pos)
        if zrun == 0 and not first:
            raise XbzrleError("decode error: empty zero run")
        first = False
        dst += zrun
        if dst > page_size:
            raise XbzrleError("decode error: zero run beyond page")
        if len(encoded) - pos < 2:
            raise XbzrleError("decode error: trailing byte")
        nzrun, pos = _uleb128(encoded, pos)
        if nzrun == 0 or dst + nzrun > page_size or pos + nzrun > len(encoded):
            raise XbzrleError("decode error: bad new-bytes run")
        page[dst : dst + nzrun] = encoded[pos : pos + nzrun]
        pos += nzrun
        dst += nzrun
    return page

