"""The return path judged as a source judges it (conformance/rules/returnpath.py), alone and
fed by the check pipeline after the main stream it answers."""

from __future__ import annotations

import io
import struct

from conformance.check.pipeline import check_stream
from conformance.rules.catalogue import Code
from conformance.rules.returnpath import RETURN_PATH, ReturnPathModel
from conformance.rules.sink import ViolationSink
from tests.test_loader import ZERO_NAMED, cmd, ram_stream
from wireformat.returnpath import RpMessage, build_message, iter_messages

BLOCKS = {"pc.ram": 0x10000}


def msg(t: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HH", t, len(payload)) + payload


def pong(v: int) -> bytes:
    return msg(2, v.to_bytes(4, "big"))


def shut(v: int) -> bytes:
    return msg(1, v.to_bytes(4, "big"))


def req_id(start: int, length: int, block: bytes) -> bytes:
    return msg(3, start.to_bytes(8, "big") + length.to_bytes(4, "big") + bytes([len(block)]) + block)


def req(start: int, length: int) -> bytes:
    return msg(4, start.to_bytes(8, "big") + length.to_bytes(4, "big"))


def bitmap(block: str, size: int, end_mark: int = 0x0123456789ABCDEF) -> bytes:
    name = block.encode()
    return build_message(RpMessage(offset=0, type=5, data=bytes([len(name)]) + name, bitmap=bytes(size), end_mark=end_mark))


def judge(raw: bytes, **kw) -> list[tuple[str, int]]:
    model = ReturnPathModel("10.0", **kw)
    found = model.feed_all(iter_messages(io.BytesIO(raw)))
    assert all(v.channel == RETURN_PATH for v in found)
    return [(v.code, v.offset) for v in found]


def test_a_conforming_return_path():
    raw = pong(2) + pong(1) + req_id(0x1000, 0x1000, b"pc.ram") + req(0x2000, 0x1000) + bitmap("pc.ram", 8) + \
        msg(6, (1).to_bytes(4, "big")) + msg(7) + shut(0)
    assert judge(raw, pings=[1, 2], blocks=BLOCKS) == []
    model = ReturnPathModel("10.0", pings=[1, 2], blocks=BLOCKS)
    model.feed_all(iter_messages(io.BytesIO(raw)))
    assert model.stats() == {"MIG_RP_MSG_PONG": 2, "MIG_RP_MSG_REQ_PAGES_ID": 1, "MIG_RP_MSG_REQ_PAGES": 1,
                             "MIG_RP_MSG_RECV_BITMAP": 1, "MIG_RP_MSG_RESUME_ACK": 1, "MIG_RP_MSG_SWITCHOVER_ACK": 1,
                             "MIG_RP_MSG_SHUT": 1}


def test_pings_and_pongs():
    assert judge(pong(3), pings=[1]) == [(Code.RP_PONG_UNEXPECTED, 0), (Code.RP_PING_UNANSWERED, 0)]
    assert judge(b"", pings=[1]) == []  # no return path captured: nothing to say of the PINGs
    model = ReturnPathModel("10.0")
    model.ping(5)  # fed as it goes: the PING first, then its PONG
    assert model.feed(next(iter_messages(io.BytesIO(pong(5))))) == [] and model.close() == [] and model.close() == []


def test_shut():
    assert judge(shut(1) + pong(1), pings=[1]) == [(Code.RP_SHUT_ERROR, 0), (Code.RP_AFTER_SHUT, 8)]


def test_malformed_messages():
    assert judge(msg(9, b"\x00")) == [(Code.RP_MALFORMED, 0)]  # unknown type
    assert judge(msg(2, b"\x00\x00")) == [(Code.RP_MALFORMED, 0)]  # PONG of 2 bytes
    found = ReturnPathModel("10.0").feed_all(iter_messages(io.BytesIO(msg(3, bytes(12) + b"\x05ab"))))
    assert [(v.code, v.message) for v in found] == [(Code.RP_MALFORMED, "Req_Page_id with length 15 expecting 18")]


def test_page_requests():
    assert judge(req(0, 0x1000), blocks=BLOCKS) == [(Code.RP_BAD_PAGE_REQUEST, 0)]  # no block named yet
    assert judge(req_id(0, 0x1000, b"pc.rom"), blocks=BLOCKS) == [(Code.RP_BAD_PAGE_REQUEST, 0)]
    assert judge(req_id(0xF000, 0x2000, b"pc.ram"), blocks=BLOCKS) == [(Code.RP_BAD_PAGE_REQUEST, 0)]
    raw = req_id(0, 0x1000, b"pc.ram") + req(0x10000, 0x1000)
    assert judge(raw, blocks=BLOCKS) == [(Code.RP_BAD_PAGE_REQUEST, len(raw) - 16)]  # REQ_PAGES goes on in pc.ram
    assert judge(req_id(0xF000, 0x2000, b"pc.ram")) == []  # blocks not known: nothing to compare with


def test_received_bitmaps():
    # 0x10000 bytes of 4 KiB pages: 16 bits, one 64-bit word
    assert judge(bitmap("pc.ram", 16), blocks=BLOCKS) == [(Code.RP_RECV_BITMAP, 0)]
    assert judge(bitmap("pc.ram", 8, end_mark=0xDEAD), blocks=BLOCKS) == [(Code.RP_RECV_BITMAP, 0)]
    # with 64 KiB pages the block is one page: still one word
    assert judge(bitmap("pc.ram", 8), blocks=BLOCKS, page_size=0x10000) == []
    assert judge(bitmap("pc.ram", 8), blocks={"pc.ram": 0x1000000}) == [(Code.RP_RECV_BITMAP, 0)]  # 4096 pages: 64 words


def test_resume_ack():
    assert judge(msg(6, (2).to_bytes(4, "big"))) == [(Code.RP_RESUME_ACK, 0)]


def test_the_sink_caps_and_counts():
    sink = ViolationSink("10.0", cap=2)
    model = ReturnPathModel(sink=sink)
    model.feed_all(iter_messages(io.BytesIO(pong(1) * 5)))
    assert len(model.violations) == 2 and sink.dropped == 3


def test_the_pipeline_judges_the_return_path_after_the_main_stream():
    main = ram_stream(ZERO_NAMED, extra_cmds=cmd(1) + cmd(2, b"\x00\x00\x00\x07"))
    rep = check_stream(io.BytesIO(main), target="10.0", return_path=io.BytesIO(pong(7) + req_id(0, 0x20000, b"pc.ram")))
    # the main stream's PING and MEM_SIZE are what the return path is judged against; its
    # findings come before those of the main stream's end
    assert [(v.code, v.channel) for v in rep.violations] == [
        (Code.RP_BAD_PAGE_REQUEST, RETURN_PATH), ("missing-vmdescription", "main")]
    assert rep.stats["return_path"] == {"MIG_RP_MSG_PONG": 1, "MIG_RP_MSG_REQ_PAGES_ID": 1}
    # a return path cut inside a message: the source reads no further
    rep = check_stream(io.BytesIO(main), target="10.0", return_path=io.BytesIO(pong(7) + pong(8)[:5]))
    assert [(v.code, v.severity.value, v.offset) for v in rep.violations if v.channel == RETURN_PATH] == [
        (Code.RP_MALFORMED, "reject", 8)]


def test_check_files_takes_a_return_path_file(tmp_path):
    from conformance.check.paths import check_files

    (tmp_path / "main.bin").write_bytes(ram_stream(ZERO_NAMED, extra_cmds=cmd(1) + cmd(2, b"\x00\x00\x00\x07")))
    (tmp_path / "rp.bin").write_bytes(pong(8))
    rep = check_files(str(tmp_path / "main.bin"), return_path=str(tmp_path / "rp.bin"))
    assert [v.code for v in rep.violations if v.channel == RETURN_PATH] == [Code.RP_PONG_UNEXPECTED, Code.RP_PING_UNANSWERED]
    # the unanswered PING is said at the end, after the main stream's end
    assert [v.code for v in rep.violations][-1] == Code.RP_PING_UNANSWERED
