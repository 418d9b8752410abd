"""The return path judged as the source judges it: a sans-IO model of what a source does
with the messages its destination sends back (QEMU migration/migration.c,
source_return_path_thread and its helpers; the codes: docs/violations.md).

The other direction of the main stream, so not the destination Loader's business: the
Loader judges what the destination does with the source's stream; this model judges what
the source does with the destination's answers. It needs three facts of the main stream —
the PINGs the source sent, the RAM blocks it announced and the page size — which the check
pipeline hands over from the Loader and the reader once the main stream is read.

    model = ReturnPathModel("10.0", pings=[1, 2], blocks={"pc.ram": 1 << 30})
    for message in wireformat.returnpath.iter_messages(f):
        model.feed(message)
    model.close()  # PINGs left without a PONG
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

from wireformat.constants import MIG_RP_FIXED_LEN, RAMBLOCK_RECV_BITMAP_ENDING, MigRpMsg
from wireformat.returnpath import RpMessage

from conformance.rules.catalogue import Code, Violation
from conformance.rules.dest_channels import rp_type_known
from conformance.rules.sink import ViolationSink

RETURN_PATH = "return-path"  # the channel name violations carry


class ReturnPathModel:
    """Feed RpMessages in the order the source reads them; `.violations` through a sink."""

    def __init__(self, version: str | None = None, *, pings: Iterable[int] = (), blocks: Mapping[str, int] | None = None,
                 page_size: int = 4096, sink: ViolationSink | None = None, source_version: str | None = None):
        self.sink = sink if sink is not None else ViolationSink(version)
        self.source_version = source_version  # the source's QEMU version, when known: the types it reads
        self.pings: list[int] = list(pings)  # PING values sent and not yet answered
        self.blocks = dict(blocks or {})  # MEM_SIZE: name -> used_length (empty: not known)
        self.page_size = page_size
        self.messages: Counter = Counter()  # message name -> count
        self.shut: RpMessage | None = None
        self.block: str | None = None  # the block of the last REQ_PAGES_ID (REQ_PAGES goes on in it)
        self._closed = False

    @property
    def violations(self) -> list[Violation]:
        return self.sink.violations

    def ping(self, value: int) -> None:
        """The source sent MIG_CMD_PING `value` (for a model fed both directions as they go)."""
        self.pings.append(value)

    def feed(self, m: RpMessage) -> list[Violation]:
        start = len(self.sink)
        self._feed(m)
        return self.sink.since(start)

    def feed_all(self, messages: Iterable[RpMessage]) -> list[Violation]:
        for m in messages:
            self._feed(m)
        self.close()
        return self.violations

    def close(self) -> list[Violation]:
        if self._closed:
            return []
        self._closed = True
        start = len(self.sink)
        if self.messages and self.pings:  # the return path was captured, and PINGs went unanswered
            self._v(Code.RP_PING_UNANSWERED, 0, f"no PONG for PING {', '.join(f'{p:#x}' for p in self.pings)}")
        return self.sink.since(start)

    def fail(self, code: Code, offset: int, message: str) -> None:
        """A point past which the return path cannot be read (reported by its reader)."""
        self._v(code, offset, message)

    def stats(self) -> dict | None:
        return dict(self.messages) or None

    # -- judging ------------------------------------------------------------------------
    def _v(self, code: Code, offset: int, message: str) -> None:
        self.sink.emit(code, RETURN_PATH, offset, message)

    def _feed(self, m: RpMessage) -> None:
        off = m.offset
        self.messages[m.name] += 1
        if self.shut is not None:
            self._v(Code.RP_AFTER_SHUT, off, f"{m.name} after MIG_RP_MSG_SHUT")
        if not rp_type_known(self.source_version, m.type):
            # a type the source's version does not have: it fails (VERIFIED: 7.2 source, 10.0 destination
            # with switchover-ack, "RP: Received invalid message 0x0007 length 0x0000")
            self._v(Code.RP_MALFORMED, off, f"RP: Received invalid message 0x{m.type:04x} length 0x{len(m.data):04x} "
                    f"(a QEMU {self.source_version} source does not know message type {m.type})")
            return
        if m.type == 0 or m.type > max(MigRpMsg) or (m.type in MIG_RP_FIXED_LEN and len(m.data) != MIG_RP_FIXED_LEN[m.type]):
            self._v(Code.RP_MALFORMED, off, f"Received invalid message 0x{m.type:04x} length 0x{len(m.data):04x}")
            return
        handler = _HANDLERS.get(MigRpMsg(m.type))
        if handler is not None:
            handler(self, m)

    def _pong(self, m: RpMessage) -> None:
        value = m.args["value"]
        if value in self.pings:
            self.pings.remove(value)  # PONGs may come out of order (3 after 4)
        else:
            self._v(Code.RP_PONG_UNEXPECTED, m.offset, f"PONG {value:#x} answers no PING")

    def _shut(self, m: RpMessage) -> None:
        self.shut = m
        if m.args["value"]:
            self._v(Code.RP_SHUT_ERROR, m.offset, f"Sibling indicated error {m.args['value']}")

    def _req_pages(self, m: RpMessage) -> None:
        if m.type == MigRpMsg.MIG_RP_MSG_REQ_PAGES_ID:
            if m.args is None:
                want = 13 + m.data[12] if len(m.data) > 12 else 13
                self._v(Code.RP_MALFORMED, m.offset, f"Req_Page_id with length {len(m.data)} expecting {want}")
                return
            self.block = m.args["block"]
        block = self.block
        length = self.blocks.get(block) if block else None
        if block is None or (self.blocks and length is None):
            self._v(Code.RP_BAD_PAGE_REQUEST, m.offset, f"page request for unknown block {block!r}")
        elif length is not None and m.args["start"] + m.args["length"] > length:
            self._v(Code.RP_BAD_PAGE_REQUEST, m.offset,
                    f"page request {m.args['start']:#x}+{m.args['length']:#x} beyond block {block} ({length:#x})")

    def _recv_bitmap(self, m: RpMessage) -> None:
        name = (m.args or {}).get("block")
        length = self.blocks.get(name)
        if m.end_mark is not None and m.end_mark != RAMBLOCK_RECV_BITMAP_ENDING:
            self._v(Code.RP_RECV_BITMAP, m.offset, f"ramblock '{name}' end mark incorrect: {m.end_mark:#x}")
        if length is not None and m.bitmap is not None:
            want = ((length // self.page_size + 63) // 64) * 8  # one bit per page, in 64-bit words
            if len(m.bitmap) != want:
                self._v(Code.RP_RECV_BITMAP, m.offset,
                        f"ramblock '{name}' bitmap size mismatch ({len(m.bitmap):#x} != {want:#x})")

    def _resume_ack(self, m: RpMessage) -> None:
        if m.args["value"] != 1:
            self._v(Code.RP_RESUME_ACK, m.offset, f"RESUME_ACK with value {m.args['value']} (must be 1)")


# message type -> how the source judges it (the others it takes as they come)
_HANDLERS = {
    MigRpMsg.MIG_RP_MSG_PONG: ReturnPathModel._pong,
    MigRpMsg.MIG_RP_MSG_SHUT: ReturnPathModel._shut,
    MigRpMsg.MIG_RP_MSG_REQ_PAGES: ReturnPathModel._req_pages,
    MigRpMsg.MIG_RP_MSG_REQ_PAGES_ID: ReturnPathModel._req_pages,
    MigRpMsg.MIG_RP_MSG_RECV_BITMAP: ReturnPathModel._recv_bitmap,
    MigRpMsg.MIG_RP_MSG_RESUME_ACK: ReturnPathModel._resume_ack,
}
