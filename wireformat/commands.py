"""QEMU_VM_COMMAND records: `be16 cmd`, `be16 len`, `len` payload bytes (QEMU
migration/savevm.c, enum qemu_vm_cmd and mig_cmd_args).

The framing is kept apart from the payload so that a payload of the wrong length still
frames (a destination reports it as a bad length, we must be able to say so too).
"""

from __future__ import annotations

from construct import (
    Const,
    GreedyBytes,
    GreedyRange,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    Select,
    Struct,
    Terminated,
    ConstructError,
)

from .constants import MIG_CMD_SEND_SRC_DOWNTIME_PROPOSED_ID, MigCmd
from .primitives import CountedString

CommandFrame = Struct("cmd" / Int16ub, "data" / Prefixed(Int16ub, GreedyBytes))

PingPayload = Struct("value" / Int32ub, Terminated)
PackagedPayload = Struct("length" / Int32ub, Terminated)
# 16 bytes when RAM postcopy is on (0 bytes: dirty-bitmap-only postcopy)
PostcopyAdvisePayload = Struct("page_size_summary" / Int64ub, "target_page_size" / Int64ub, Terminated)
DiscardRange = Struct("start" / Int64ub, "length" / Int64ub)
# version, counted RAMBlock name, a NUL after it, then (start, length) byte ranges
PostcopyRamDiscardPayload = Struct(
    "version" / Int8ub,
    "block" / CountedString,
    Const(b"\x00"),
    "ranges" / GreedyRange(DiscardRange),
    Terminated,
)
RecvBitmapPayload = Struct("block" / CountedString, Terminated)
# Proposed in the strict-SLA series, never merged: abort limit and source downtime (ms).
SendSrcDowntimePayload = Struct("abort_limit_ms" / Int64ub, "source_downtime_ms" / Int64ub, Terminated)
EmptyPayload = Terminated

PAYLOADS = {
    MigCmd.MIG_CMD_OPEN_RETURN_PATH: EmptyPayload,
    MigCmd.MIG_CMD_PING: PingPayload,
    MigCmd.MIG_CMD_POSTCOPY_ADVISE: Select(PostcopyAdvisePayload, EmptyPayload),
    MigCmd.MIG_CMD_POSTCOPY_LISTEN: EmptyPayload,
    MigCmd.MIG_CMD_POSTCOPY_RUN: EmptyPayload,
    MigCmd.MIG_CMD_POSTCOPY_RAM_DISCARD: PostcopyRamDiscardPayload,
    MigCmd.MIG_CMD_PACKAGED: PackagedPayload,
    MigCmd.MIG_CMD_ENABLE_COLO: EmptyPayload,
    MigCmd.MIG_CMD_POSTCOPY_RESUME: EmptyPayload,
    MigCmd.MIG_CMD_RECV_BITMAP: RecvBitmapPayload,
    MigCmd.MIG_CMD_SWITCHOVER_START: EmptyPayload,
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
        if cmd == self.send_src_downtime_id:
            return SendSrcDowntimePayload
        try:
            return PAYLOADS.get(MigCmd(cmd))
        except ValueError:
            return None

    def decode(self, cmd: int, data: bytes) -> dict | None:
        """Decoded payload fields, or None when the payload is not of the command's layout."""
        layout = self.payload(cmd)
        if layout is None:
            return None
        try:
            parsed = layout.parse(data)
        except ConstructError:
            return None
        if parsed is None:  # empty payloads
            return {}
        out = {k: v for k, v in parsed.items() if not k.startswith("_")}
        if "ranges" in out:
            out["ranges"] = [(r.start, r.length) for r in out["ranges"]]
        return out

    def encode(self, cmd: int, args: dict) -> bytes:
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
    return CommandFrame.build({"cmd": cmd, "data": data})
