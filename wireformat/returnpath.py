"""Return-path messages, destination to source: `be16 type`, `be16 len`, payload (QEMU
migration/migration.c, enum mig_rp_message_type).

RECV_BITMAP is followed, outside the message, by the bitmap blob: `be64 size`, `size`
bytes (little-endian bit order, bit i = page i), `be64` end marker.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from construct import (
    ConstructError,
    GreedyBytes,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    Struct,
    Terminated,
    Bytes,
    this,
)

from .budgets import BUDGETS
from .constants import MIG_RP_MAX_LEN, RAMBLOCK_RECV_BITMAP_ENDING, MigRpMsg
from .primitives import CountedString

RpFrame = Struct("type" / Int16ub, "data" / Prefixed(Int16ub, GreedyBytes))

RP_PAYLOADS = {
    MigRpMsg.MIG_RP_MSG_SHUT: Struct("value" / Int32ub, Terminated),
    MigRpMsg.MIG_RP_MSG_PONG: Struct("value" / Int32ub, Terminated),
    MigRpMsg.MIG_RP_MSG_REQ_PAGES_ID: Struct("start" / Int64ub, "length" / Int32ub, "block" / CountedString, Terminated),
    MigRpMsg.MIG_RP_MSG_REQ_PAGES: Struct("start" / Int64ub, "length" / Int32ub, Terminated),
    MigRpMsg.MIG_RP_MSG_RECV_BITMAP: Struct("block" / CountedString, Terminated),
    MigRpMsg.MIG_RP_MSG_RESUME_ACK: Struct("value" / Int32ub, Terminated),
    MigRpMsg.MIG_RP_MSG_SWITCHOVER_ACK: Terminated,
}

RecvBitmapBlob = Struct("size" / Int64ub, "bitmap" / Bytes(this.size), "end_mark" / Int64ub)

MAX_BITMAP = BUDGETS.rp_bitmap  # a bitmap for 32 TiB of 4 KiB pages: anything more is hostile


@dataclass(slots=True, kw_only=True)
class RpMessage:
    offset: int
    type: int
    data: bytes
    args: dict | None = None
    bitmap: bytes | None = None  # RECV_BITMAP only
    end_mark: int | None = None

    @property
    def name(self) -> str:
        try:
            return MigRpMsg(self.type).name
        except ValueError:
            return f"MIG_RP_MSG_0x{self.type:x}"


def decode_payload(msg_type: int, data: bytes) -> dict | None:
    try:
        layout = RP_PAYLOADS[MigRpMsg(msg_type)]
    except (ValueError, KeyError):
        return None
    try:
        parsed = layout.parse(data)
    except ConstructError:
        return None
    return {} if parsed is None else {k: v for k, v in parsed.items() if not k.startswith("_")}


def build_message(msg: RpMessage) -> bytes:
    out = RpFrame.build({"type": msg.type, "data": msg.data})
    if msg.type == MigRpMsg.MIG_RP_MSG_RECV_BITMAP and msg.bitmap is not None:
        end = RAMBLOCK_RECV_BITMAP_ENDING if msg.end_mark is None else msg.end_mark
        out += RecvBitmapBlob.build({"size": len(msg.bitmap), "bitmap": msg.bitmap, "end_mark": end})
    return out


class RpDecodeError(ValueError):
    def __init__(self, message: str, offset: int):
        self.offset = offset
        super().__init__(f"return-path @ {offset}: {message}")


def iter_messages(src: BinaryIO) -> Iterator[RpMessage]:
    """Messages of a captured return path, in order. Lengths are bounded before reading."""
    off = 0

    def read_up_to(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:  # a pipe (or a sniffing wrapper) may give less per read
            more = src.read(n - len(data))
            if not more:
                break
            data += more
        return bytes(data)

    def read(n: int) -> bytes:
        data = read_up_to(n)
        if len(data) != n:
            raise RpDecodeError(f"truncated: wanted {n} bytes", off)
        return data

    while True:
        head = read_up_to(4)
        if not head:
            return
        if len(head) < 4:
            raise RpDecodeError("truncated message header", off)
        msg_type, n = struct.unpack(">HH", head)
        if n > MIG_RP_MAX_LEN:
            raise RpDecodeError(f"message type {msg_type} length {n} exceeds {MIG_RP_MAX_LEN}", off)
        data = read(n)
        msg = RpMessage(offset=off, type=msg_type, data=data, args=decode_payload(msg_type, data))
        off += 4 + n
        if msg_type == MigRpMsg.MIG_RP_MSG_RECV_BITMAP:
            (size,) = struct.unpack(">Q", read(8))
            if size > MAX_BITMAP:
                raise RpDecodeError(f"bitmap size {size} is beyond any RAM size", off)
            msg.bitmap = read(size)
            (msg.end_mark,) = struct.unpack(">Q", read(8))
            off += 16 + size
        yield msg
