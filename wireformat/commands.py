"""QEMU_VM_COMMAND records: `be16 cmd`, `be16 len`, `len` payload bytes (QEMU
migration/savevm.c, enum qemu_vm_cmd and mig_cmd_args).

The framing is kept apart from the payload so that a payload of the wrong length still
frames (a destination reports it as a bad length, we must be able to say so too).
"""

from __future__ import annotations

import struct

from .constants import MIG_CMD_SEND_SRC_DOWNTIME_PROPOSED_ID, MigCmd

_U32 = struct.Struct(">I")
_PAIR = struct.Struct(">QQ")
_RANGE = struct.Struct(">QQ")


def _decode_empty(data: bytes) -> dict | None:
    return {} if not data else None


def _decode_u32(name: str):
    def decode(data: bytes) -> dict | None:
        return {name: _U32.unpack(data)[0]} if len(data) == 4 else None

    return decode


def _decode_pair(data: bytes, first: str, second: str) -> dict | None:
    if len(data) != 16:
        return None
    a, b = _PAIR.unpack(data)
    return {first: a, second: b}


def _decode_advise(data: bytes) -> dict | None:
    # 16 bytes with RAM postcopy, none for dirty-bitmap-only postcopy
    return _decode_pair(data, "page_size_summary", "target_page_size") if data else {}


def _decode_discard(data: bytes) -> dict | None:
    # version, counted RAMBlock name, a NUL, then whole (start, length) ranges and nothing else
    if len(data) < 2 or len(data) < 3 + data[1]:
        return None
    n = data[1]
    if data[2 + n] != 0 or (len(data) - 3 - n) % 16:
        return None
    return {"version": data[0], "block": data[2 : 2 + n].decode("latin-1"),
            "ranges": [r for r in _RANGE.iter_unpack(data[3 + n :])]}


def _decode_recv_bitmap(data: bytes) -> dict | None:
    if not data or len(data) != 1 + data[0]:
        return None
    return {"block": data[1:].decode("latin-1")}


_DECODERS = {
    MigCmd.MIG_CMD_OPEN_RETURN_PATH: _decode_empty,
    MigCmd.MIG_CMD_PING: _decode_u32("value"),
    MigCmd.MIG_CMD_POSTCOPY_ADVISE: _decode_advise,
    MigCmd.MIG_CMD_POSTCOPY_LISTEN: _decode_empty,
    MigCmd.MIG_CMD_POSTCOPY_RUN: _decode_empty,
    MigCmd.MIG_CMD_POSTCOPY_RAM_DISCARD: _decode_discard,
    MigCmd.MIG_CMD_PACKAGED: _decode_u32("length"),
    MigCmd.MIG_CMD_ENABLE_COLO: _decode_empty,
    MigCmd.MIG_CMD_POSTCOPY_RESUME: _decode_empty,
    MigCmd.MIG_CMD_RECV_BITMAP: _decode_recv_bitmap,
    MigCmd.MIG_CMD_SWITCHOVER_START: _decode_empty,
}


class CommandSet:
    """Which payload layout each command id has.

    The default is the released id space. `with_send_src_downtime(id)` opts in to the
    proposed SEND_SRC_DOWNTIME under the id a (patched) QEMU gives it; that id then no
    longer means what a released QEMU would make of it.
    """

    def __init__(self, send_src_downtime_id: int | None = None):
        self.send_src_downtime_id = send_src_downtime_id

    @classmethod
    def with_send_src_downtime(cls, cmd_id: int = MIG_CMD_SEND_SRC_DOWNTIME_PROPOSED_ID) -> "CommandSet":
        return cls(cmd_id)

    def name(self, cmd: int) -> str:
        if cmd == self.send_src_downtime_id:
            return "MIG_CMD_SEND_SRC_DOWNTIME"
        try:
            return MigCmd(cmd).name
        except ValueError:
            return f"MIG_CMD_0x{cmd:x}"

    def payload(self, cmd: int):
        """The command's construct layout (wireformat.command_layouts), or None."""
        from .command_layouts import PAYLOADS, SendSrcDowntimePayload

        if cmd == self.send_src_downtime_id:
            return SendSrcDowntimePayload
        try:
            return PAYLOADS.get(MigCmd(cmd))
        except ValueError:
            return None

    def decode(self, cmd: int, data: bytes) -> dict | None:
        """Decoded payload fields, or None when the payload is not of the command's layout
        (payload()'s construct layout, decoded by hand: tests/test_codec.py proves them equal)."""
        if cmd == self.send_src_downtime_id:
            return _decode_pair(data, "abort_limit_ms", "source_downtime_ms")
        decoder = _DECODERS.get(cmd)
        return None if decoder is None else decoder(bytes(data))

    def encode(self, cmd: int, args: dict) -> bytes:
        from .command_layouts import EmptyPayload

        layout = self.payload(cmd)
        if layout is None:
            raise ValueError(f"no payload layout for command {cmd}")
        if layout is EmptyPayload:
            return b""
        if "ranges" in args:
            args = {**args, "ranges": [{"start": s, "length": n} for s, n in args["ranges"]]}
        return layout.build(args)


RELEASED = CommandSet()


def build_command(cmd: int, data: bytes) -> bytes:
    """Command frame without the leading QEMU_VM_COMMAND byte."""
    from .command_layouts import CommandFrame

    return CommandFrame.build({"cmd": cmd, "data": data})


def __getattr__(name: str):
    """The construct layouts (CommandFrame, PAYLOADS, PingPayload …), loaded on first use."""
    if not name.startswith("_"):
        from . import command_layouts

        if hasattr(command_layouts, name):
            return getattr(command_layouts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
