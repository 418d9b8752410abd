"""The `ram` section payload: RAM_SAVE_FLAG_* records (QEMU migration/ram.c).

Parse parameters (keyword arguments of `RamRecordStruct.parse`/`build`):
  page_size          target page size (4096 on x86)
  ignore_shared      capability x-ignore-shared (MEM_SIZE entries carry mr_addr)
  mapped_ram         capability mapped-ram (MEM_SIZE entries carry a mapped-ram header)
  postcopy_advised   a 16-byte POSTCOPY_ADVISE was seen: huge-page blocks carry page_size
"""

from __future__ import annotations

from .constants import MAPPED_RAM_HEADER_SIZE, RamSaveFlag as F
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

# The construct definitions (RamRecordStruct, MappedRamHeader) live in wireformat.ramstruct and
# are loaded on first use: a check that meets only page runs never imports construct.
_LAZY = frozenset({"RamRecordStruct", "MappedRamHeader", "_MemSizeBlocks"})


def __getattr__(name: str):
    if name in _LAZY:
        from . import ramstruct

        return getattr(ramstruct, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from .ramstruct import RamRecordStruct

    p = {**DEFAULT_PARAMS, **params}
    return record_from_container(RamRecordStruct.parse(data, **p))


def build_record(rec: RamRecord, **params) -> bytes:
    from .ramstruct import RamRecordStruct

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

