"""VFIO device state (QEMU hw/vfio/migration.c, hw/vfio/migration-multifd.c): the markers of a VFIO section body on the
main stream, and the VFIODeviceStatePacket carried in multifd device-state packets.

Section body. A sequence of be64 markers (constants.VfioMigFlag):
  END_OF_STATE, DEV_SETUP_STATE, DEV_INIT_DATA_SENT, DEV_CONFIG_LOAD_READY   no payload
  DEV_DATA_STATE     be64 size, then size bytes of device data
  DEV_CONFIG_STATE   the device's config state, then (normally) END_OF_STATE
The codec reads markers until the body ends (a destination stops at the first
END_OF_STATE that closes a group; whatever it would not read is still shown here).

The length of the config state is NOT on the wire: a destination reads it by the device's
own vmstate description. Without that description the codec uses a heuristic, and says
so in the record (`framed_by`):
  "caller"          the caller gave the length (`config_size`, an int or a function of the
                    bytes that follow the marker returning the length or None);
  "last-end-marker" the config runs up to the LAST END_OF_STATE value in the rest of the
                    body. A well-formed body ends with the END_OF_STATE that follows the
                    config (nothing of the section is read after it), so config bytes
                    that happen to contain the marker value do not cut it short; bytes
                    after the closing marker that contain the value do mislead it;
  "end-of-body"     no END_OF_STATE follows at all: the config is the rest of the body,
                    and no END_OF_STATE record is produced.

Framing failures raise wireformat.errors classes: an unknown marker (UnknownVfioMarker),
a body that ends inside a marker or inside DEV_DATA_STATE data (Truncated). A hostile DEV_DATA_STATE size only gets compared with the bytes
present; nothing is allocated for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from .constants import VfioMigFlag
from .errors import DecodeError, Truncated, UnknownVfioMarker
from .records import MAIN, Record

END_OF_STATE = int(VfioMigFlag.VFIO_MIG_FLAG_END_OF_STATE)
DEV_CONFIG_STATE = int(VfioMigFlag.VFIO_MIG_FLAG_DEV_CONFIG_STATE)
DEV_SETUP_STATE = int(VfioMigFlag.VFIO_MIG_FLAG_DEV_SETUP_STATE)
DEV_DATA_STATE = int(VfioMigFlag.VFIO_MIG_FLAG_DEV_DATA_STATE)
DEV_INIT_DATA_SENT = int(VfioMigFlag.VFIO_MIG_FLAG_DEV_INIT_DATA_SENT)
DEV_CONFIG_LOAD_READY = int(VfioMigFlag.VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY)

BARE_MARKERS = frozenset({END_OF_STATE, DEV_SETUP_STATE, DEV_INIT_DATA_SENT, DEV_CONFIG_LOAD_READY})
KNOWN_MARKERS = frozenset(int(m) for m in VfioMigFlag)

_BE64 = struct.Struct(">Q")
_END_BYTES = _BE64.pack(END_OF_STATE)

# --- VFIODeviceStatePacket (10.0+) ---------------------------------------------------------

VFIO_DEVICE_STATE_CONFIG_STATE = 1 << 0
VFIO_DEVICE_STATE_PACKET_VER_CURRENT = 0
VFIO_DEVICE_STATE_PACKET_HEADER_SIZE = 12
VFIO_DEVICE_STATE_IDX_INVALID = 0xFFFFFFFF  # UINT32_MAX


def _packet_struct():
    """The construct definition, built on first use (start-up does not import construct)."""
    global _PACKET
    if _PACKET is None:
        from construct import GreedyBytes, Int32ub, Struct

        _PACKET = Struct("version" / Int32ub, "idx" / Int32ub, "flags" / Int32ub, "data" / GreedyBytes)
    return _PACKET


_PACKET = None


def __getattr__(name: str):
    if name == "VFIODeviceStatePacket":
        return _packet_struct()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(slots=True, kw_only=True)
class VfioMarker(Record):
    """One marker of a VFIO section body and what it carries.

    DEV_DATA_STATE: `size` is the be64 on the wire, `data` the bytes it frames.
    DEV_CONFIG_STATE: `data` is the config state as framed (see `framed_by`); size None.
    """

    marker: int
    size: int | None = None
    data: bytes | None = None
    framed_by: str | None = None  # DEV_CONFIG_STATE only

    @property
    def name(self) -> str:
        try:
            return VfioMigFlag(self.marker).name
        except ValueError:
            return f"VFIO_MIG_FLAG_0x{self.marker:x}"


@dataclass(slots=True, kw_only=True)
class VfioDeviceState(Record):
    """A VFIODeviceStatePacket: the payload of a multifd device-state packet."""

    version: int = VFIO_DEVICE_STATE_PACKET_VER_CURRENT
    idx: int = 0
    flags: int = 0
    data: bytes = b""

    @property
    def is_config(self) -> bool:
        return bool(self.flags & VFIO_DEVICE_STATE_CONFIG_STATE)


ConfigSize = int | Callable[[memoryview], "int | None"] | None


def parse_markers(body: bytes, *, offset: int = 0, channel: str = MAIN, section: str | None = None,
                  config_size: ConfigSize = None) -> list[VfioMarker]:
    """The markers of a VFIO section body (or of a config buffer). `offset` is where the
    body starts in its channel; records carry their own offsets."""
    mv = memoryview(body)
    end = len(mv)
    out: list[VfioMarker] = []
    pos = 0

    def err(msg: str, at: int, cls: type[DecodeError] = Truncated) -> DecodeError:
        return cls(msg, channel=channel, offset=offset + at, section=section)

    while pos < end:
        at = pos
        if end - pos < 8:
            raise err(f"VFIO body ends inside a marker ({end - pos} of 8 bytes)", at)
        (marker,) = _BE64.unpack_from(mv, pos)
        pos += 8
        if marker in BARE_MARKERS:
            out.append(VfioMarker(offset=offset + at, channel=channel, marker=marker))
        elif marker == DEV_DATA_STATE:
            if end - pos < 8:
                raise err("VFIO body ends inside the DEV_DATA_STATE size", at)
            (size,) = _BE64.unpack_from(mv, pos)
            pos += 8
            if size > end - pos:
                raise err(f"DEV_DATA_STATE size {size} but {end - pos} bytes remain", at)
            out.append(VfioMarker(offset=offset + at, channel=channel, marker=marker, size=size,
                                  data=bytes(mv[pos : pos + size])))
            pos += size
        elif marker == DEV_CONFIG_STATE:
            n, how = _config_length(mv[pos:], config_size)
            if n is None or n < 0 or n > end - pos:
                raise err(f"config state length {n} does not fit the {end - pos} bytes left", at)
            out.append(VfioMarker(offset=offset + at, channel=channel, marker=marker, data=bytes(mv[pos : pos + n]),
                                  framed_by=how))
            pos += n
        else:
            raise err(f"Unknown tag {marker:#x}", at, UnknownVfioMarker)
    return out


def _config_length(rest: memoryview, config_size: ConfigSize) -> tuple[int | None, str]:
    if isinstance(config_size, int):
        return config_size, "caller"
    if config_size is not None:
        n = config_size(rest)
        if n is not None:
            return n, "caller"
    i = bytes(rest).rfind(_END_BYTES)
    if i >= 0:
        return i, "last-end-marker"
    return len(rest), "end-of-body"


def build_marker(m: VfioMarker) -> bytes:
    """One marker and its payload. DEV_DATA_STATE writes `size` as given (len(data) when
    None), so a record may announce a length its data does not have."""
    out = _BE64.pack(m.marker)
    if m.marker == DEV_DATA_STATE:
        data = m.data or b""
        return out + _BE64.pack(len(data) if m.size is None else m.size) + bytes(data)
    if m.data is not None:
        out += bytes(m.data)
    return out


def build_markers(markers: Iterable[VfioMarker]) -> bytes:
    return b"".join(build_marker(m) for m in markers)


def parse_device_state(data: bytes, *, offset: int = 0, channel: str = "multifd0") -> VfioDeviceState:
    """A VFIODeviceStatePacket; fewer than 12 bytes raise Truncated."""
    from construct import ConstructError

    try:
        c = _packet_struct().parse(bytes(data))
    except ConstructError as e:
        raise Truncated(f"VFIO device state packet too short ({len(data)} of "
                        f"{VFIO_DEVICE_STATE_PACKET_HEADER_SIZE} bytes): {str(e).splitlines()[-1]}",
                        channel=channel, offset=offset) from None
    return VfioDeviceState(offset=offset, channel=channel, version=c.version, idx=c.idx, flags=c.flags, data=c.data)


def build_device_state(rec: VfioDeviceState) -> bytes:
    return _packet_struct().build({"version": rec.version, "idx": rec.idx, "flags": rec.flags, "data": bytes(rec.data)})
