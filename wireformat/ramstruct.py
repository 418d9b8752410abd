"""The construct definition of a RAM record (see wireformat.ram, which loads this module on
first use so that start-up does not pay for construct)."""

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


from .constants import RamSaveFlag as F
from .primitives import CountedString, RamWord
from .ram import CONTINUE, PAGE_KINDS
from .records import RamBlockInfo

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

