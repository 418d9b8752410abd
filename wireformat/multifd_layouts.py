"""The construct definitions of multifd packets (see wireformat.multifd, which decodes them by
hand in its reader and loads this module on first use: start-up does not pay for construct)."""

from __future__ import annotations

from construct import Array, Bytes, Int8ub, Int32ub, Int64ub, Struct, this

from .multifd import MULTIFD_DEVICE_STATE_IDSTR_SIZE, MULTIFD_PAGE_COUNT, MULTIFD_RAMBLOCK_NAME_SIZE

MultifdInitPacket = Struct(
    "magic" / Int32ub,
    "version" / Int32ub,
    "uuid" / Bytes(16),
    "id" / Int8ub,
    "unused1" / Bytes(7),
    "unused2" / Bytes(32),
)

MultifdPacketHeader = Struct("magic" / Int32ub, "version" / Int32ub, "flags" / Int32ub)


def _page_count(ctx) -> int:
    return ctx._params.get("page_count", MULTIFD_PAGE_COUNT)


_RAM_FRONT = (
    "magic" / Int32ub,
    "version" / Int32ub,
    "flags" / Int32ub,
    "pages_alloc" / Int32ub,
    "normal_pages" / Int32ub,
    "next_packet_size" / Int32ub,
    "packet_num" / Int64ub,
)

# Build and parse take the page count as a keyword (`page_count=128` by default).
MultifdPacketV72 = Struct(
    *_RAM_FRONT,
    "unused" / Bytes(32),
    "ramblock" / Bytes(MULTIFD_RAMBLOCK_NAME_SIZE),
    "offset" / Array(_page_count, Int64ub),
)

MultifdPacketV90 = Struct(
    *_RAM_FRONT,
    "zero_pages" / Int32ub,
    "unused" / Bytes(28),
    "ramblock" / Bytes(MULTIFD_RAMBLOCK_NAME_SIZE),
    "offset" / Array(_page_count, Int64ub),
)

MultifdPacketDeviceStateHeader = Struct(
    "magic" / Int32ub,
    "version" / Int32ub,
    "flags" / Int32ub,
    "idstr" / Bytes(MULTIFD_DEVICE_STATE_IDSTR_SIZE),
    "instance_id" / Int32ub,
    "next_packet_size" / Int32ub,
)

MultifdPacketDeviceState = Struct(
    *MultifdPacketDeviceStateHeader.subcons,
    "payload" / Bytes(this.next_packet_size),
)
