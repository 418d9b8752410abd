"""Catalogue codes no other test triggered: each is provoked here the way a source (or a
damaged capture) would, and the report must carry it with its catalogued severity."""

import io
import json
import struct

from conformance.check.pipeline import check_stream, vmstate_body_check
from conformance.rules.catalogue import Code
from conformance.rules.postcopy_multifd import ChannelPage, ChannelSync, Listen, PostcopyMultifdModel
from conformance.rules.tables import DestinationTables, builtin_tables
from tests.test_channels import judge, load, packets
from tests.test_loader import ADVISE, EOS, HEADER, MEM, ZERO_NAMED, cfg, check, cmd, codes, footer, ram_stream, start, word
from wireformat import ram
from wireformat.records import RamBlockInfo, RamRecord
from wireformat.returnpath import RpMessage, build_message, iter_messages


def trailer(doc: bytes) -> bytes:
    return b"\x06" + len(doc).to_bytes(4, "big") + doc


# -- framing failures the reader raises, as the pipeline reports them -------------------------


def test_a_configuration_subsection_the_destination_does_not_have():
    sub = b"\x05" + b"\x14configuration/bogus!" + (1).to_bytes(4, "big") + b"\x00" * 4
    data = HEADER + cfg() + sub + start(2, b"ram", 4) + MEM + EOS + footer(2) + b"\x00"
    rep = check(data)
    assert [(v.code, v.severity.value, v.offset) for v in rep.violations] == [
        ("configuration-malformed", "reject", len(HEADER))]


def test_a_machine_type_length_beyond_any_bound():
    data = HEADER + b"\x07" + (5000).to_bytes(4, "big") + b"pc" * 10
    assert codes(data) == [("hostile-length", "reject")]


def test_a_nested_package_longer_than_the_package_holding_it():
    inner = cmd(7, (100).to_bytes(4, "big")) + b"\x00" * 4
    data = HEADER + cfg() + cmd(1) + ADVISE + cmd(7, len(inner).to_bytes(4, "big")) + inner + b"\x00"
    assert ("packaged-too-large", "reject") in codes(data)


def test_an_unknown_marker_in_a_vfio_section_body():
    body = struct.pack(">Q", 0xFFFFFFFFEF100003) + struct.pack(">Q", 0x1234) + struct.pack(">Q", 0xFFFFFFFFEF100001)
    data = HEADER + cfg() + start(9, b"0000:00:05.0/vfio", 1, kind=4) + body + footer(9) + b"\x00"
    found = [(v.code, v.severity.value, v.offset, v.message) for v in check(data).violations]
    assert (Code.VFIO_UNKNOWN_MARKER, "reject", data.index(body) + 8, "0000:00:05.0/vfio: Unknown tag 0x1234") in found


# -- the main stream -------------------------------------------------------------------------


def test_listen_without_a_return_path():
    data = HEADER + cfg() + ADVISE + cmd(4) + cmd(5) + b"\x00"
    assert codes(data) == [("postcopy-without-return-path", "deviation")]


def test_a_reopened_return_path():
    assert ("return-path-reopened", "deviation") in codes(ram_stream(ZERO_NAMED, extra_cmds=cmd(1) + cmd(1)))


def test_a_block_announced_twice_and_blocks_the_destination_lacks():
    b = RamBlockInfo(name="pc.ram", used_length=0x10000)
    twice = ram.build_record(RamRecord(addr=0x20000, flags=4, blocks=[b, b]))
    data = HEADER + cfg() + start(2, b"ram", 4) + twice + EOS + footer(2) + b"\x00"
    assert ("ram-mem-size-duplicate", "deviation") in codes(data)
    tables = DestinationTables(ram_blocks={"pc.rom": 0x20000})
    rep = check_stream(io.BytesIO(ram_stream(ZERO_NAMED)), tables=tables)
    assert ("ram-block-unknown", "reject") in [(v.code, v.severity.value) for v in rep.violations]


def test_a_page_before_any_block_list():
    data = HEADER + cfg() + start(2, b"ram", 4) + ZERO_NAMED + EOS + footer(2) + b"\x00"
    assert codes(data)[0] == ("ram-page-before-mem-size", "reject")


def test_section_ids_reused_or_not_open():
    again = HEADER + cfg() + start(2, b"ram", 4) + MEM + EOS + footer(2) + start(2, b"ram", 4) + MEM + EOS + footer(2) + b"\x00"
    assert ("reused-section-id", "deviation") in codes(again)
    end = b"\x03" + (2).to_bytes(4, "big") + EOS + footer(2)
    after_end = ram_stream(ZERO_NAMED, tail=end + b"\x02" + (2).to_bytes(4, "big") + EOS + footer(2) + b"\x00")
    assert ("section-not-open", "deviation") in codes(after_end)


def test_a_section_version_below_the_vmsd_minimum():
    finding = builtin_tables("10.0").judge("0000:00:01.0/PIIX3", 0, 1)
    assert finding.code is Code.SECTION_VERSION_TOO_OLD
    # QEMU names the VMSD, not the idstr, and prints two spaces before the number (seen on 7.2 and 10.0)
    assert finding.message == "PIIX3: incoming version_id 1 is too old for local minimum version_id  2"


def test_a_trailer_cut_short():
    data = ram_stream(ZERO_NAMED, tail=b"\x00\x06" + (100).to_bytes(4, "big") + b'{"devices"')
    assert codes(data) == [("vmdescription-truncated", "deviation")]


def test_device_bodies_against_the_streams_own_description():
    dev = start(7, b"timer", 2, kind=4) + b"\x00" * 8 + footer(7)
    desc = {"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2,
                                            "fields": [{"name": "t", "type": "uint32", "size": 4}]}]}
    data = HEADER + cfg() + start(2, b"ram", 4) + MEM + EOS + footer(2) + dev + b"\x00" + trailer(json.dumps(desc).encode())
    rep = check_stream(io.BytesIO(data), body_checker=vmstate_body_check)
    assert [(v.code, v.severity.value, v.section) for v in rep.violations] == [
        ("device-body-mismatch", "reject", "timer instance 0")]
    bad = data[: data.rindex(b"\x06")] + trailer(b"{not json")
    rep = check_stream(io.BytesIO(bad), body_checker=vmstate_body_check)
    assert [(v.code, v.severity.value) for v in rep.violations] == [("vmdescription-malformed", "deviation")]


# -- the return path -------------------------------------------------------------------------


def judge_return_path(main: bytes, rp: bytes) -> list[tuple[str, str]]:
    rep = check_stream(io.BytesIO(main), return_path=io.BytesIO(rp))
    return [(v.code, v.severity.value) for v in rep.violations if v.channel == "return-path"]


def test_return_path_messages_the_source_refuses():
    main = ram_stream(ZERO_NAMED, extra_cmds=cmd(1) + cmd(2, b"\x00\x00\x00\x01"))
    assert judge_return_path(main, bytes.fromhex("0002 0003 000000")) == [
        ("rp-malformed", "reject"), ("rp-ping-unanswered", "deviation")]
    assert judge_return_path(main, bytes.fromhex("0006 0004 00000002 0002 0004 00000001")) == [("rp-resume-ack", "reject")]
    bitmap = build_message(RpMessage(offset=0, type=5, data=b"\x06pc.ram", bitmap=bytes(8), end_mark=0xDEAD))
    assert judge_return_path(main, bitmap + bytes.fromhex("0002 0004 00000001")) == [("rp-recv-bitmap", "reject")]


# -- models without a stream -----------------------------------------------------------------


def test_listen_while_a_channel_still_holds_precopy_pages():
    model = PostcopyMultifdModel(2)
    found = model.feed_all([ChannelPage(0, 1, 1), ChannelPage(1, 2, 1), ChannelSync(1), Listen()])
    assert [(v.code, v.severity.value, v.message) for v in found] == [
        ("postcopy-listen-before-flush", "silent-loss", "POSTCOPY_LISTEN while multifd0 may still hold precopy pages")]


# -- multifd captures ------------------------------------------------------------------------


def _patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


def test_damaged_multifd_packets():
    name = "qemu100-i440fx-10.0"
    ch0 = load(name, "multifd0")
    pkts = [p for p in packets(ch0) if p.normal_pages]
    first, later = pkts[0], pkts[1]

    def found(data, code):
        return [(v.severity.value, v.channel, v.offset) for v in judge(name, ch0=data).violations if v.code == code]

    # a packet magic lost: the channel's framing is gone (BadPacketMagic)
    assert found(_patch(ch0, first.offset, ">I", 0x11223345), "multifd-packet") == [("reject", "multifd0", first.offset)]
    # packet_num going backwards on one channel
    assert found(_patch(ch0, later.offset + 24, ">Q", 0), "multifd-packet-order") == [
        ("deviation", "multifd0", later.offset)]
    # next_packet_size that is not the page data of an uncompressed packet
    assert found(_patch(ch0, first.offset + 20, ">I", first.next_packet_size + 1), "multifd-packet-size") == [
        ("deviation", "multifd0", first.offset)]
