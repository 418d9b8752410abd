"""VFIO codec (wireformat.vfio): section-body markers and VFIODeviceStatePacket, build ⇄
parse, truncation, hostile sizes, the documented config-state framing heuristic, and a
device-state buffer carried in a multifd device-state packet.

No VFIO device is available to the project, so there are no real captures here: the
byte layouts are read from QEMU's hw/vfio/migration.c and hw/vfio/migration-multifd.c."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, strategies as st

from wireformat import multifd as M
from wireformat import vfio as V
from wireformat.constants import VfioMigFlag
from wireformat.reader import DecodeError
from wireformat.errors import Truncated, UnknownVfioMarker
from wireformat.vfio import VfioDeviceState, VfioMarker

END = V.END_OF_STATE
END_B = END.to_bytes(8, "big")


def be64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def shape(markers):
    return [(m.marker, m.size, m.data) for m in markers]


# --- strategies -------------------------------------------------------------------------------

bare = st.sampled_from(sorted(V.BARE_MARKERS)).map(lambda v: VfioMarker(marker=v))
data_markers = st.binary(max_size=200).map(lambda d: VfioMarker(marker=V.DEV_DATA_STATE, size=len(d), data=d))
# config bytes, some of which contain the END_OF_STATE value
config_bytes = st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda d: d + END_B + d[:5]))


def config_marker(d: bytes) -> VfioMarker:
    return VfioMarker(marker=V.DEV_CONFIG_STATE, data=d)


@st.composite
def bodies(draw):
    """A list of markers; configs are followed by END_OF_STATE as the source writes them."""
    groups = draw(st.lists(st.one_of(bare, data_markers, config_bytes.map(lambda d: [config_marker(d), VfioMarker(marker=END)])),
                           max_size=8))
    out = []
    for g in groups:
        out.extend(g if isinstance(g, list) else [g])
    return out


# --- markers ------------------------------------------------------------------------------------


def test_marker_values():
    assert [V.END_OF_STATE, V.DEV_CONFIG_STATE, V.DEV_SETUP_STATE, V.DEV_DATA_STATE, V.DEV_INIT_DATA_SENT,
            V.DEV_CONFIG_LOAD_READY] == [0xFFFFFFFFEF100001 + i for i in range(6)]
    assert VfioMarker(marker=V.DEV_SETUP_STATE).name == "VFIO_MIG_FLAG_DEV_SETUP_STATE"
    assert VfioMarker(marker=0x1234).name == "VFIO_MIG_FLAG_0x1234"


def test_section_shapes():
    """The section bodies a 10.x source writes (hw/vfio/migration.c)."""
    start = be64(V.DEV_SETUP_STATE) + END_B
    m = V.parse_markers(start, offset=100, section="vfio (id 5)")
    assert shape(m) == [(V.DEV_SETUP_STATE, None, None), (END, None, None)]
    assert [x.offset for x in m] == [100, 108]
    part = be64(V.DEV_DATA_STATE) + be64(5) + b"hello" + be64(V.DEV_INIT_DATA_SENT)
    m = V.parse_markers(part)
    assert shape(m) == [(V.DEV_DATA_STATE, 5, b"hello"), (V.DEV_INIT_DATA_SENT, None, None)]
    end = (be64(V.DEV_DATA_STATE) + be64(3) + b"abc") * 2 + END_B
    assert V.build_markers(V.parse_markers(end)) == end
    full_multifd = be64(V.DEV_CONFIG_LOAD_READY)
    assert shape(V.parse_markers(full_multifd)) == [(V.DEV_CONFIG_LOAD_READY, None, None)]
    assert V.parse_markers(b"") == []


def test_config_framing_rules():
    config = b"\x01\x02" + END_B + b"\x03"  # config bytes that contain the marker value
    body = be64(V.DEV_CONFIG_STATE) + config + END_B
    m = V.parse_markers(body)
    assert shape(m) == [(V.DEV_CONFIG_STATE, None, config), (END, None, None)]
    assert m[0].framed_by == "last-end-marker"
    assert V.build_markers(m) == body
    # the caller knows the length (from the device's vmstate)
    m = V.parse_markers(body, config_size=len(config))
    assert m[0].data == config and m[0].framed_by == "caller"
    m = V.parse_markers(body, config_size=lambda rest: bytes(rest).index(b"\x03") + 1)
    assert m[0].data == config and m[0].framed_by == "caller"
    # a function that does not know falls back to the heuristic
    m = V.parse_markers(body, config_size=lambda rest: None)
    assert m[0].framed_by == "last-end-marker"
    # a wrong caller length: the next marker is then unknown
    with pytest.raises(DecodeError) as e:
        V.parse_markers(body, config_size=2)
    assert isinstance(e.value, UnknownVfioMarker)
    # no END_OF_STATE after the config: it runs to the end of the body
    body = be64(V.DEV_CONFIG_STATE) + b"\x05" * 9
    m = V.parse_markers(body)
    assert shape(m) == [(V.DEV_CONFIG_STATE, None, b"\x05" * 9)] and m[0].framed_by == "end-of-body"
    assert V.build_markers(m) == body
    with pytest.raises(DecodeError) as e:
        V.parse_markers(body, config_size=100)
    assert isinstance(e.value, Truncated)


def test_unknown_marker_and_truncation():
    with pytest.raises(DecodeError) as e:
        V.parse_markers(END_B + be64(0xFFFFFFFFEF100007), offset=40, channel="main", section="vfio (id 3)")
    assert isinstance(e.value, UnknownVfioMarker) and (e.value.offset, e.value.section) == (48, "vfio (id 3)")
    assert "Unknown tag 0xffffffffef100007" in str(e.value)
    with pytest.raises(DecodeError) as e:
        V.parse_markers(END_B[:5])
    assert isinstance(e.value, Truncated)


def test_hostile_data_size():
    body = be64(V.DEV_DATA_STATE) + be64(2**64 - 1) + b"xy"
    with pytest.raises(DecodeError) as e:
        V.parse_markers(body)
    assert isinstance(e.value, Truncated) and "size 18446744073709551615" in e.value.message


@given(bodies())
def test_markers_roundtrip_with_known_config_lengths(markers):
    """parse(build(x)) == x for any marker sequence when the caller frames the configs."""
    raw = V.build_markers(markers)
    lengths = iter([len(m.data) for m in markers if m.marker == V.DEV_CONFIG_STATE])
    back = V.parse_markers(raw, config_size=lambda rest: next(lengths))
    assert shape(back) == shape(markers)
    assert V.build_markers(back) == raw


@given(bodies(), config_bytes)
def test_markers_roundtrip_config_last(markers, config):
    """With the heuristic, a body whose config group comes last (as in a FULL section)
    round-trips."""
    markers = [m for m in markers if m.marker != V.DEV_CONFIG_STATE]
    markers += [config_marker(config), VfioMarker(marker=END)]
    raw = V.build_markers(markers)
    back = V.parse_markers(raw)
    assert shape(back) == shape(markers)
    assert back[-2].framed_by == "last-end-marker"


@given(st.lists(st.one_of(st.sampled_from(sorted(V.BARE_MARKERS)).map(be64),
                          st.binary(max_size=40).map(lambda d: be64(V.DEV_DATA_STATE) + be64(len(d)) + d),
                          st.binary(max_size=40).map(lambda d: be64(V.DEV_CONFIG_STATE) + d + END_B)), max_size=6))
def test_markers_bytes_roundtrip(pieces):
    """build(parse(b)) == b for bodies that parse (configs anywhere: whatever the heuristic
    makes of them, the bytes come back)."""
    raw = b"".join(pieces)
    try:
        markers = V.parse_markers(raw)
    except DecodeError as e:
        assert isinstance(e, (UnknownVfioMarker, Truncated))
        return
    assert V.build_markers(markers) == raw
    assert [m.offset for m in markers] == sorted(m.offset for m in markers)


@given(bodies())
def test_truncation_at_every_cut(markers):
    """Cutting a body anywhere: a DecodeError, or (at a marker boundary, or inside
    unframed config bytes) markers whose bytes are exactly the prefix. Never another
    exception."""
    raw = V.build_markers(markers)
    bounds, pos = set(), 0
    for m in markers:
        bounds.add(pos)
        pos += len(V.build_marker(m))
    has_config = any(m.marker == V.DEV_CONFIG_STATE for m in markers)
    for cut in range(len(raw)):
        try:
            got = V.parse_markers(raw[:cut])
        except DecodeError as e:
            assert isinstance(e, (Truncated, UnknownVfioMarker)) and e.offset <= cut
            assert isinstance(e, Truncated) or has_config
        else:
            assert V.build_markers(got) == raw[:cut]
            assert cut in bounds or has_config


# --- VFIODeviceStatePacket ----------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
device_states = st.builds(
    VfioDeviceState, channel=st.just("multifd0"), version=st.one_of(st.just(0), u32), idx=u32,
    flags=st.one_of(st.sampled_from([0, V.VFIO_DEVICE_STATE_CONFIG_STATE]), u32), data=st.binary(max_size=300),
)


def test_device_state_layout():
    rec = VfioDeviceState(channel="multifd0", idx=3, flags=V.VFIO_DEVICE_STATE_CONFIG_STATE, data=b"cfg")
    raw = V.build_device_state(rec)
    assert raw == bytes.fromhex("00000000 00000003 00000001") + b"cfg"
    back = V.parse_device_state(raw)
    assert back == rec and back.is_config
    assert not V.parse_device_state(bytes(12)).is_config


@given(device_states)
def test_device_state_roundtrip(rec):
    raw = V.build_device_state(rec)
    assert len(raw) == 12 + len(rec.data)
    assert V.parse_device_state(raw) == rec


@given(st.binary(min_size=12, max_size=100))
def test_device_state_bytes_roundtrip(raw):
    assert V.build_device_state(V.parse_device_state(raw)) == raw


@pytest.mark.parametrize("cut", range(12))
def test_device_state_too_short(cut):
    with pytest.raises(DecodeError) as e:
        V.parse_device_state(bytes.fromhex("00000000 00000001 00000000")[:cut], offset=276, channel="multifd1")
    assert isinstance(e.value, Truncated) and (e.value.offset, e.value.channel) == (276, "multifd1")


def test_device_state_over_multifd():
    """A save thread's output on one channel: data buffers idx 0..k-1, then the config
    buffer (idx k, CONFIG_STATE) whose data is a DEV_CONFIG_STATE group (hw/vfio/migration-multifd.c)."""
    config = b"\x10" * 64
    buffers = [VfioDeviceState(idx=0, data=b"A" * 100), VfioDeviceState(idx=1, data=b"B" * 50),
               VfioDeviceState(idx=2, flags=V.VFIO_DEVICE_STATE_CONFIG_STATE,
                               data=V.build_markers([config_marker(config), VfioMarker(marker=END)]))]
    packets = [M.MultifdDeviceStatePacket(idstr="0000:00:03.0/vfio", instance_id=0, next_packet_size=12 + len(b.data),
                                          payload=V.build_device_state(b)) for b in buffers]
    sync = M.MultifdRamPacket(flags=M.MULTIFD_FLAG_SYNC)
    raw = M.build_channel([M.MultifdInit(), sync, *packets, sync])
    recs = list(M.MultifdChannelReader(io.BytesIO(raw), "multifd1", copy=True))
    dev = [r for r in recs if isinstance(r, M.MultifdDeviceStatePacket)]
    assert [r.idstr for r in dev] == ["0000:00:03.0/vfio"] * 3
    states = [V.parse_device_state(r.payload, offset=r.offset + M.MULTIFD_DEVICE_STATE_HEADER_SIZE, channel=r.channel)
              for r in dev]
    assert [(s.idx, s.is_config) for s in states] == [(0, False), (1, False), (2, True)]
    assert states[0].offset == dev[0].offset + 276 and states[0].channel == "multifd1"
    cfg = V.parse_markers(states[2].data)
    assert shape(cfg) == [(V.DEV_CONFIG_STATE, None, config), (END, None, None)]
    assert [V.build_device_state(s) for s in states] == [bytes(r.payload) for r in dev]


def test_vfio_marker_enum_is_the_source():
    assert V.KNOWN_MARKERS == {int(m) for m in VfioMigFlag}
    assert V.KNOWN_MARKERS == V.BARE_MARKERS | {V.DEV_DATA_STATE, V.DEV_CONFIG_STATE}
