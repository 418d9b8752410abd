"""The streaming reader: generated streams decode to the records they were built from,
the fast path agrees with the construct definition, and bad bytes end in DecodeError."""

import io

import pytest
from hypothesis import given, strategies as st

from strategies.records import configurations, ram_block_infos
from strategies.streams import precopy_streams
from wireformat import ram
from wireformat.mainstream import build_record
from wireformat.reader import DecodeError, StreamReader
from wireformat.errors import HostileLength, Truncated, UnknownRamFlags
from wireformat.records import (
    Command,
    ConfigSubsection,
    Configuration,
    DeviceState,
    RamRecord,
    RamRun,
    SectionFooter,
    SectionHeader,
    VmDescription,
)


def read_all(data: bytes, **kw):
    return list(StreamReader(io.BytesIO(data), **kw))


def expand(records):
    """Runs back into single records (copying payloads out of the reader's buffer)."""
    out = []
    for r in records:
        if isinstance(r, RamRun):
            for x in r.records():
                if x.data is not None:
                    x.data = bytes(x.data)
                out.append(x)
        else:
            if isinstance(r, RamRecord) and r.data is not None:
                r.data = bytes(r.data)
            out.append(r)
    return out


def read_expanded(data: bytes, **kw):
    out = []
    for r in StreamReader(io.BytesIO(data), **kw):
        out.extend(expand([r]))  # expand before the buffer moves on
    return out


def wire_fields(r):
    d = {k: getattr(r, k) for k in r.__slots__ if k not in ("offset", "channel", "depth", "framed_by", "decoded")}
    if "data" in d and d["data"] is not None:
        d["data"] = bytes(d["data"])
    return type(r).__name__, d


@given(precopy_streams())
def test_generated_stream_reads_back_to_its_records(gen):
    got = read_expanded(gen.data)
    assert [wire_fields(r) for r in got] == [wire_fields(r) for r in gen.records]


@given(precopy_streams())
def test_rebuilding_read_records_gives_the_same_bytes(gen):
    out = bytearray()
    reader = StreamReader(io.BytesIO(gen.data))
    for r in reader:
        out += build_record(r, **reader.ram_params)
    assert bytes(out) == gen.data


@given(precopy_streams(), st.sampled_from([1, 7, 4096, 65536]))
def test_reading_in_small_pieces_gives_the_same_records(gen, piece):
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data, self.pos = data, 0

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), piece, len(self.data) - self.pos)
            b[:n] = self.data[self.pos : self.pos + n]
            self.pos += n
            return n

    a = read_expanded(gen.data)
    b = read_expanded(gen.data, window=1 << 16) if piece > 4096 else list(expand(StreamReader(Trickle(gen.data), window=1 << 16)))
    assert [wire_fields(r) for r in a] == [wire_fields(r) for r in b]


@given(precopy_streams())
def test_offsets_point_at_the_records(gen):
    for r in StreamReader(io.BytesIO(gen.data)):
        raw = build_record(r, **gen.ram_params)
        assert gen.data[r.offset : r.offset + len(raw)] == raw


@given(st.lists(st.tuples(st.sampled_from([0x28, 0x22]), st.integers(0, 2**30), st.binary(min_size=1, max_size=1)), min_size=1, max_size=60))
def test_fast_path_agrees_with_construct(items):
    """Runs of CONTINUE page/zero records: the vectorised reader and the construct
    definition see the same records (mixed kinds, odd flag bits in the address byte)."""
    body = bytearray()
    expect = []
    for flags, page, b in items:
        word = page * 4096 | flags
        if flags == 0x28:
            rec = RamRecord(addr=page * 4096, flags=flags, data=b * 4096)
        else:
            rec = RamRecord(addr=page * 4096, flags=flags, fill=b[0])
        raw = ram.build_record(rec)
        assert raw[:8] == word.to_bytes(8, "big")
        body += raw
        expect.append(ram.parse_record(raw))
    stream = _ram_stream(bytes(body))
    got = [r for r in read_expanded(stream) if isinstance(r, RamRecord) and r.continued]
    assert [wire_fields(r) for r in got] == [wire_fields(r) for r in expect]


def _ram_stream(records: bytes) -> bytes:
    """header + START ram (MEM_SIZE of one huge block, then `records`, EOS) + EOF."""
    mem = ram.build_record(RamRecord(addr=2**42, flags=4, blocks=[ram.RamBlockInfo(name="pc.ram", used_length=2**42)]))
    named = ram.build_record(RamRecord(addr=0, flags=2, block="pc.ram", fill=0))
    eos = (0x10).to_bytes(8, "big")
    return (b"QEVM\x00\x00\x00\x03" + b"\x01" + (0).to_bytes(4, "big") + b"\x03ram" + (0).to_bytes(4, "big") + (4).to_bytes(4, "big")
            + mem + named + records + eos + b"\x7e" + (0).to_bytes(4, "big") + b"\x00")


def test_flag_bits_above_the_low_byte_end_a_run():
    # 0x228 = PAGE|CONTINUE|MULTIFD_FLUSH: not a page record; the reader must not take it as one
    good = ram.build_record(RamRecord(addr=0x1000, flags=0x28, data=bytes(4096)))
    bad = (0x2000 | 0x228).to_bytes(8, "big") + bytes(4096)
    with pytest.raises(DecodeError) as e:
        read_expanded(_ram_stream(good + good + bad))
    assert isinstance(e.value, UnknownRamFlags)
    assert e.value.offset == _ram_stream(good + good + bad).index(bad)


@given(precopy_streams(max_parts=2, max_pages=4), st.data())
def test_truncation_is_a_decode_error_or_a_short_stream(gen, data):
    cut = data.draw(st.integers(0, len(gen.data) - 1))
    try:
        recs = read_all(gen.data[:cut])
    except DecodeError as e:
        assert 0 <= e.offset <= cut
        return
    # the reader frames what is there; the missing EOF or trailer is the loader's to judge
    assert not any(isinstance(r, VmDescription) and len(r.json) and r.offset + 5 + len(r.json) > cut for r in recs)


@given(precopy_streams(max_parts=2, max_pages=4), st.data())
def test_corruption_never_escapes_as_another_exception(gen, data):
    raw = bytearray(gen.data)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        for _ in StreamReader(io.BytesIO(bytes(raw)), window=1 << 16):
            pass
    except DecodeError:
        pass


def test_hostile_lengths_are_bounded():
    # a VMDESCRIPTION claiming 4 GiB, a machine type of 1 GiB: nothing of that size is allocated
    head = b"QEVM\x00\x00\x00\x03"
    with pytest.raises(DecodeError) as e:
        read_all(head + b"\x07" + (1 << 30).to_bytes(4, "big") + b"pc")
    assert isinstance(e.value, HostileLength)
    recs = read_all(head + b"\x00\x06\xff\xff\xff\xff{")
    assert recs[-1].kind == "TrailingData"  # not taken as a trailer it cannot be


def test_unknown_section_type_names_the_offset():
    with pytest.raises(DecodeError) as e:
        read_all(b"QEVM\x00\x00\x00\x03\x09")
    assert e.value.offset == 8 and "unknown savevm section type 9" in str(e.value)


def test_packaged_records_are_nested():
    inner = b"\x08" + (4).to_bytes(2, "big") + (0).to_bytes(2, "big")  # LISTEN
    inner += b"\x08" + (5).to_bytes(2, "big") + (0).to_bytes(2, "big")  # RUN
    pkg = b"\x08" + (7).to_bytes(2, "big") + (4).to_bytes(2, "big") + len(inner).to_bytes(4, "big") + inner
    recs = read_all(b"QEVM\x00\x00\x00\x03" + pkg + b"\x00")
    kinds = [(r.kind, r.depth) for r in recs]
    assert kinds == [("FileHeader", 0), ("Command", 0), ("Command", 1), ("Command", 1), ("PackageEnd", 0), ("Eof", 0)]


def test_packaged_length_past_the_end_is_truncation():
    pkg = b"\x08" + (7).to_bytes(2, "big") + (4).to_bytes(2, "big") + (1000).to_bytes(4, "big") + b"\x00"
    with pytest.raises(DecodeError) as e:
        read_all(b"QEVM\x00\x00\x00\x03" + pkg)
    assert isinstance(e.value, Truncated)


def test_device_body_framed_by_footer_and_reported():
    body = b"\x01\x02\x7e\x00\x00\x00\x09\xff"  # contains a footer-like run for another id
    sec = b"\x04" + (5).to_bytes(4, "big") + b"\x05timer" + (0).to_bytes(4, "big") + (2).to_bytes(4, "big") + body + b"\x7e" + (5).to_bytes(4, "big")
    recs = read_all(b"QEVM\x00\x00\x00\x03" + sec + b"\x00")
    dev = [r for r in recs if isinstance(r, DeviceState)][0]
    assert dev.data == body and dev.framed_by == "footer"
    assert isinstance(recs[-2], SectionFooter)
    assert isinstance(recs[1], SectionHeader) and recs[1].idstr == "timer"
    assert not [r for r in recs if isinstance(r, Command)]


def test_footerless_bodies_are_framed_by_the_next_header():
    """Machine types <= 2.2: no configuration, no footers, no trailer. Each body runs to the
    next section header (or the final EOF)."""
    mem = ram.build_record(RamRecord(addr=0x1000, flags=4, blocks=[ram.RamBlockInfo(name="pc.ram", used_length=0x1000)]))
    ram_start = b"\x01" + (0).to_bytes(4, "big") + b"\x03ram" + (0).to_bytes(4, "big") + (4).to_bytes(4, "big") + mem + (0x10).to_bytes(8, "big")
    timer_body = bytes(range(24))
    cpu_body = b"\x04\x00\x00\x00\x05" + bytes(30)  # starts like a FULL header of a known id: not a header
    full = lambda sid, name, body: b"\x04" + sid.to_bytes(4, "big") + bytes([len(name)]) + name + (0).to_bytes(4, "big") + (1).to_bytes(4, "big") + body
    stream = b"QEVM\x00\x00\x00\x03" + ram_start + full(5, b"timer", timer_body) + full(6, b"cpu", cpu_body) + b"\x00"
    bodies = [(r.idstr, r.data, r.framed_by) for r in read_all(stream) if isinstance(r, DeviceState)]
    assert bodies == [("timer", timer_body, "next-header"), ("cpu", cpu_body, "next-header")]


def test_a_false_footer_inside_a_body_is_not_taken_for_the_end():
    """Device state can hold the bytes of its own footer followed by a zero byte; a zero
    byte is an EOF only where the trailer or the end of the stream follows it."""
    body = b"\x01\x7e\x00\x00\x00\x05\x00\x02\x03" + bytes(20)
    sec = b"\x04" + (5).to_bytes(4, "big") + b"\x05timer" + (0).to_bytes(4, "big") + (2).to_bytes(4, "big") + body + b"\x7e" + (5).to_bytes(4, "big")
    trailer = b"\x06" + (2).to_bytes(4, "big") + b"{}"
    recs = read_all(b"QEVM\x00\x00\x00\x03" + sec + b"\x00" + trailer)
    assert [r.data for r in recs if isinstance(r, DeviceState)] == [body]
    assert [r.kind for r in recs][-2:] == ["Eof", "VmDescription"]


def _config_by_construct(body: bytes):
    """The configuration record as mainstream.ConfigurationStruct reads it (None: it does not)."""
    from construct import ConstructError

    from wireformat.mainstream import ConfigurationStruct, configuration_from_container

    try:
        c = ConfigurationStruct.parse(body)
    except ConstructError:
        return None
    return configuration_from_container(c), len(ConfigurationStruct.build(c))


@given(configurations(), st.binary(max_size=6), st.data())
def test_configuration_by_hand_equals_the_construct_definition(conf, tail, data):
    """The reader's hand-written configuration reading (and its fallback) and the construct
    definition agree on generated records, cut anywhere and followed by anything."""
    raw = build_record(conf)
    cut = data.draw(st.integers(1, len(raw)))
    body = raw[1:cut] + (tail if cut == len(raw) else b"")
    stream = b"QEVM\x00\x00\x00\x03" + raw[:1] + body
    expect = _config_by_construct(body)
    try:  # lazily: whatever the tail holds is read only after the configuration
        got = next(r for r in StreamReader(io.BytesIO(stream)) if isinstance(r, Configuration))
    except DecodeError:
        assert expect is None or cut < len(raw)
        return
    assert expect is not None
    assert (got.machine_type, got.subsections) == (expect[0].machine_type, expect[0].subsections)


@given(st.lists(ram_block_infos(ignore_shared=True), min_size=1, max_size=4), st.booleans(), st.data())
def test_mem_size_by_hand_equals_the_construct_definition(blocks, shared, data):
    """MEM_SIZE (with and without x-ignore-shared), HOOK and MULTIFD_FLUSH read by hand and by
    RamRecordStruct give the same records; a cut or overrunning list still ends as the
    definition says (the reader falls back to it)."""
    if not shared:
        for b in blocks:
            b.mr_addr = None
    total = sum(b.used_length for b in blocks)
    if data.draw(st.booleans()):
        total -= data.draw(st.integers(0, total))  # an overrun: both reject it
    recs = [RamRecord(addr=total, flags=0x04, blocks=blocks), RamRecord(addr=0, flags=0x200),
            RamRecord(addr=0, flags=0x80 | 0x20), RamRecord(addr=0, flags=0x10)]
    raw = b"".join(ram.build_record(r, ignore_shared=shared) for r in recs)
    conf = Configuration(machine_type="pc", subsections=[
        ConfigSubsection(name="configuration/capabilities", version_id=1, value=["x-ignore-shared"] if shared else [])])
    stream = (b"QEVM\x00\x00\x00\x03" + build_record(conf)
              + bytes([0x01]) + (1).to_bytes(4, "big") + bytes([3]) + b"ram" + (0).to_bytes(4, "big") + (4).to_bytes(4, "big")
              + raw + b"\x00")  # EOS ends the section, then EOF
    try:
        expect = []
        at = 0
        while at < len(raw):
            r = ram.parse_record(raw[at:], ignore_shared=shared)
            expect.append(r)
            at += len(ram.build_record(r, ignore_shared=shared))
    except Exception:
        expect = None
    try:
        got = [r for r in read_all(stream) if isinstance(r, RamRecord)]
    except DecodeError:
        assert expect is None
        return
    assert expect is not None
    assert [(r.addr, r.flags, r.blocks) for r in got] == [(r.addr, r.flags, r.blocks) for r in expect]
