"""The construct definitions of QEMU_VM_COMMAND framing and payloads (QEMU migration/savevm.c,
mig_cmd_args): the specification wireformat.commands decodes by hand and builds with. Loaded on
first use, so that start-up does not pay for construct; tests/test_codec.py proves the hand
decoder equal to these."""

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

from .constants import MigCmd
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
