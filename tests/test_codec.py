"""Build and parse are symmetric for every record type of the main stream and return path."""

import io

import pytest
from construct import ConstructError
from hypothesis import given, settings, strategies as st

from strategies import records as S
from wireformat import ram
from wireformat.commands import RELEASED, CommandFrame, CommandSet
from wireformat.constants import MigCmd
from wireformat.mainstream import (
    ConfigurationStruct,
    FullSectionHeaderStruct,
    SectionFooterStruct,
    VmDescriptionStruct,
    build_record,
    configuration_from_container,
)
from wireformat.returnpath import build_message, iter_messages


@given(S.configurations())
def test_configuration_roundtrip(conf):
    raw = build_record(conf)
    assert raw[0] == 0x07
    back = configuration_from_container(ConfigurationStruct.parse(raw[1:]))
    assert back.machine_type == conf.machine_type
    assert [(s.name, s.version_id, s.value) for s in back.subsections] == [(s.name, s.version_id, s.value) for s in conf.subsections]
    assert build_record(back) == raw


def test_configuration_known_bytes():
    # 10.0 with x-ignore-shared, bytes as captured (vmstate_configuration, migration/savevm.c)
    raw = bytes.fromhex("07 0000000d") + b"pc-i440fx-7.2" + bytes.fromhex("05 1a") + b"configuration/capabilities" + \
        bytes.fromhex("00000001 00000001 0f") + b"x-ignore-shared"
    conf = configuration_from_container(ConfigurationStruct.parse(raw[1:]))
    assert conf.machine_type == "pc-i440fx-7.2"
    assert conf.capabilities == ["x-ignore-shared"]
    assert build_record(conf) == raw


@given(S.section_headers())
def test_section_header_roundtrip(h):
    raw = build_record(h)
    assert raw[0] == h.section_type
    if h.is_full:
        c = FullSectionHeaderStruct.parse(raw[1:])
        assert (c.section_id, c.idstr, c.instance_id, c.version_id) == (h.section_id, h.idstr, h.instance_id, h.version_id)
        assert len(raw) == 1 + 4 + 1 + len(h.idstr) + 8
    else:
        assert raw[1:] == h.section_id.to_bytes(4, "big")


@given(S.section_footers)
def test_footer_roundtrip(f):
    raw = build_record(f)
    assert raw == b"\x7e" + f.section_id.to_bytes(4, "big")
    assert SectionFooterStruct.parse(raw).section_id == f.section_id


@given(S.commands())
def test_command_roundtrip(c):
    raw = build_record(c)
    frame = CommandFrame.parse(raw[1:])
    assert frame.cmd == c.cmd and frame.data == c.data
    assert RELEASED.decode(frame.cmd, frame.data) == c.args


@given(S.raw_commands)
def test_any_command_frames(c):
    raw = build_record(c)
    assert len(raw) == 5 + len(c.data)
    frame = CommandFrame.parse(raw[1:])
    assert (frame.cmd, frame.data) == (c.cmd, c.data)


def test_send_src_downtime_is_opt_in():
    cs = CommandSet.with_send_src_downtime(11)
    data = cs.encode(11, {"abort_limit_ms": 300, "source_downtime_ms": 120})
    assert data == (300).to_bytes(8, "big") + (120).to_bytes(8, "big")
    assert cs.decode(11, data) == {"abort_limit_ms": 300, "source_downtime_ms": 120}
    assert cs.name(11) == "MIG_CMD_SEND_SRC_DOWNTIME"
    # without opting in, id 11 is SWITCHOVER_START, whose payload is empty
    assert RELEASED.name(11) == "MIG_CMD_SWITCHOVER_START"
    assert RELEASED.decode(11, data) is None
    # and it can be given another id
    assert CommandSet.with_send_src_downtime(12).decode(12, data)["source_downtime_ms"] == 120


def test_discard_payload_layout():
    # version, counted name, NUL, (start, length) pairs
    data = RELEASED.encode(MigCmd.MIG_CMD_POSTCOPY_RAM_DISCARD, {"version": 0, "block": "pc.ram", "ranges": [(0x1000, 0x2000)]})
    assert data == b"\x00\x06pc.ram\x00" + (0x1000).to_bytes(8, "big") + (0x2000).to_bytes(8, "big")
    assert RELEASED.decode(MigCmd.MIG_CMD_POSTCOPY_RAM_DISCARD, data + b"\x01") is None  # ranges not a multiple of 16


@given(S.ram_records(ignore_shared=False, postcopy=False))
def test_ram_record_roundtrip(rec):
    raw = ram.build_record(rec)
    back = ram.parse_record(raw)
    assert (back.addr, back.flags, back.block, back.fill, back.encoding) == (rec.addr, rec.flags, rec.block, rec.fill, rec.encoding)
    assert (bytes(back.data) if back.data is not None else None) == (bytes(rec.data) if rec.data is not None else None)
    assert ram.build_record(back) == raw


@given(S.ram_records(ignore_shared=False, postcopy=True))
def test_ram_record_roundtrip_with_page_sizes_read_from_the_bytes(rec):
    # without x-ignore-shared a block's page size is recognisable by its bytes alone
    params = {"postcopy_advised": True}
    raw = ram.build_record(rec, **params)
    back = ram.parse_record(raw, **params)
    if rec.blocks:
        assert back.blocks == rec.blocks
    assert ram.build_record(back, **params) == raw


@given(S.ram_records(ignore_shared=True, postcopy=True))
def test_ram_record_roundtrip_with_block_extras(rec):
    # with x-ignore-shared a power-of-two mr_addr looks like a page size: the destination
    # decides by its own huge-page blocks, which a caller passes as huge_page_blocks
    huge = {b.name for b in rec.blocks or [] if b.page_size is not None}
    params = {"ignore_shared": True, "postcopy_advised": True, "huge_page_blocks": huge}
    raw = ram.build_record(rec, **params)
    back = ram.parse_record(raw, **params)
    if rec.blocks:
        assert back.blocks == rec.blocks
    assert ram.build_record(back, **params) == raw


@given(st.binary(min_size=8, max_size=4200))
def test_ram_parse_of_arbitrary_bytes_rebuilds_them(raw):
    try:
        rec = ram.parse_record(raw)
    except ConstructError:
        return
    rebuilt = ram.build_record(rec)
    assert raw.startswith(rebuilt)


@given(S.vmdescriptions)
def test_vmdescription_roundtrip(v):
    raw = build_record(v)
    assert raw[:5] == b"\x06" + len(v.json).to_bytes(4, "big")
    assert VmDescriptionStruct.parse(raw).json == v.json


@given(st.lists(S.rp_messages(), max_size=8))
def test_return_path_roundtrip(msgs):
    raw = b"".join(build_message(m) for m in msgs)
    back = list(iter_messages(io.BytesIO(raw)))
    assert [(m.type, m.data, m.args, m.bitmap) for m in back] == [(m.type, m.data, m.args, m.bitmap) for m in msgs]
    assert b"".join(build_message(m) for m in back) == raw


def test_return_path_known_bytes():
    # SWITCHOVER_ACK then PONG 1 then SHUT 0, as a 10.0 destination sends them
    raw = bytes.fromhex("00070000 0002000400000001 0001000400000000")
    msgs = list(iter_messages(io.BytesIO(raw)))
    assert [m.name for m in msgs] == ["MIG_RP_MSG_SWITCHOVER_ACK", "MIG_RP_MSG_PONG", "MIG_RP_MSG_SHUT"]
    assert msgs[1].args == {"value": 1}


def test_xbzrle_decode_sample():
    # skip 0, write 2 bytes e7 6f (migration/xbzrle.c)
    page = ram.xbzrle_decode(bytes.fromhex("0002e76f"), bytes(4096))
    assert page[:2] == b"\xe7\x6f" and not any(page[2:])
    with pytest.raises(ram.XbzrleError):
        ram.xbzrle_decode(bytes.fromhex("0000"), bytes(4096))  # new-bytes run of 0
    with pytest.raises(ram.XbzrleError):
        ram.xbzrle_decode(bytes.fromhex("00ff7f01"), bytes(4096))  # run past the page end


def _construct_decode(commands: CommandSet, cmd: int, data: bytes):
    """What the construct layout (wireformat.command_layouts) makes of a payload: the
    definition CommandSet.decode's hand-written reading must equal."""
    from construct import ConstructError

    layout = commands.payload(cmd)
    if layout is None:
        return None
    try:
        parsed = layout.parse(data)
    except ConstructError:
        return None
    if parsed is None:
        return {}
    out = {k: v for k, v in parsed.items() if not k.startswith("_")}
    if "ranges" in out:
        out["ranges"] = [(r.start, r.length) for r in out["ranges"]]
    return out


def _commands_and_payloads():
    """(cmd, payload): arbitrary ones, and payloads shaped like the command's layout, as they
    are or cut or extended."""
    u64 = st.integers(0, 2**64 - 1)
    discard = st.builds(lambda v, name, ranges, nul: bytes([v, len(name)]) + name + nul
                        + b"".join(s.to_bytes(8, "big") + n.to_bytes(8, "big") for s, n in ranges),
                        st.integers(0, 255), st.binary(max_size=20), st.lists(st.tuples(u64, u64), max_size=4),
                        st.sampled_from([b"\x00", b"\x00", b"\x01", b""]))
    bitmap = st.builds(lambda name: bytes([len(name)]) + name, st.binary(max_size=20))
    shaped = st.one_of(st.tuples(st.integers(0, 40), st.binary(max_size=40)),
                       st.tuples(st.just(6), discard), st.tuples(st.just(10), bitmap),
                       st.tuples(st.sampled_from([2, 7]), st.binary(min_size=4, max_size=4)),
                       st.tuples(st.sampled_from([3, 11]), st.binary(min_size=16, max_size=16)),
                       st.tuples(st.sampled_from([1, 3, 4, 5, 8, 9, 11]), st.just(b"")))
    edit = st.sampled_from(["as is", "as is", "cut", "longer"])
    return st.tuples(shaped, edit, st.binary(min_size=1, max_size=9)).map(
        lambda t: (t[0][0], t[0][1] if t[1] == "as is" else t[0][1][:-1] if t[1] == "cut" else t[0][1] + t[2]))


@settings(max_examples=400)
@given(_commands_and_payloads(), st.sampled_from([None, 11, 20]))
def test_command_decode_by_hand_equals_the_construct_layout(cmd_data, downtime_id):
    cmd, data = cmd_data
    commands = CommandSet(downtime_id)
    assert commands.decode(cmd, data) == _construct_decode(commands, cmd, data)
