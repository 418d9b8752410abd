"""Tests for wireformat.vmstate (vmstate bodies, VMDESCRIPTION, -dump-vmstate).

Fixtures in tests/data/vmstate/ come from real QEMU 7.2.22 and 10.0.2 runs
(see index.json: the command line of each capture).  From each migration
stream were kept: the VMDESCRIPTION JSON (verbatim), the configuration record
body and every QEMU_VM_SECTION_FULL body (concatenated, gzip).  The
-dump-vmstate files are the complete output of ``-machine pc-i440fx-7.2
-nodefaults -dump-vmstate`` of each binary, gzip-compressed.
"""

from __future__ import annotations

import gzip
import json
import random
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wireformat.vmstate import (
    NOT_IN_DUMP_VMSTATE,
    DecodedBody,
    VmDescription,
    VmField,
    VmsdInfo,
    VmstateDecodeError,
    VmstateDescriptionError,
    VmstateEncodeError,
    VmStruct,
    VmSubsection,
    decode_body,
    encode_body,
    lookup_idstr,
    parse_dump_vmstate,
    parse_vmdescription,
    vmsd_name_candidates,
)

DATA = Path(__file__).parent / "data" / "vmstate"


# --------------------------------------------------------------------------- fixtures


@lru_cache(maxsize=None)
def _index() -> dict:
    return json.loads((DATA / "index.json").read_text())


@lru_cache(maxsize=None)
def _capture(name: str):
    cap = next(c for c in _index()["captures"] if c["name"] == name)
    blob = gzip.decompress((DATA / cap["bodies"]).read_bytes())
    vmdesc_raw = gzip.decompress((DATA / cap["vmdesc"]).read_bytes())
    return cap, blob, vmdesc_raw


def _capture_names() -> list[str]:
    return [c["name"] for c in _index()["captures"]]


def _sections(name: str):
    """(capture, section index entry, device description, body bytes) per FULL section."""
    cap, blob, raw = _capture(name)
    vd = parse_vmdescription(raw)
    out = []
    for dev, sec in zip(vd.devices, cap["sections"], strict=True):
        out.append((cap, sec, dev, blob[sec["offset"]: sec["offset"] + sec["length"]]))
    return out


def _all_sections():
    return [(n, i) for n in _capture_names() for i in range(len(_sections(n)))]


def _section_id(p):
    name, i = p
    return f"{name}:{_sections(name)[i][1]['idstr']}#{_sections(name)[i][1]['instance_id']}"


@lru_cache(maxsize=None)
def _dump(version: str):
    raw = gzip.decompress((DATA / f"dump-vmstate-qemu{version}-pc-i440fx-7.2.json.gz").read_bytes())
    return parse_dump_vmstate(raw)


def _field(fields, name):
    matches = [f for f in fields if f.name == name]
    assert len(matches) == 1, (name, [f.name for f in fields])
    return matches[0]


def _decoded(name: str, idstr: str, instance_id: int = 0) -> DecodedBody:
    for _cap, sec, dev, body in _sections(name):
        if sec["idstr"] == idstr and sec["instance_id"] == instance_id:
            return decode_body(dev, body)
    raise KeyError(idstr)


# --------------------------------------------------------------------------- real bodies


def test_fixture_sections_match_their_descriptions():
    assert len(_capture_names()) == 5
    for name in _capture_names():
        cap, _blob, raw = _capture(name)
        vd = parse_vmdescription(raw)
        assert vd.page_size == 4096
        assert [(d["name"], d["instance_id"]) for d in vd.devices] == [
            (s["idstr"], s["instance_id"]) for s in cap["sections"]]
        for d, s in zip(vd.devices, cap["sections"]):
            if "vmsd_name" in d:
                assert d["version"] == s["version_id"]  # JSON version == section header version


@pytest.mark.parametrize("which", _all_sections(), ids=_section_id)
def test_real_body_decodes_exactly_and_roundtrips(which):
    name, i = which
    _cap, _sec, dev, body = _sections(name)[i]
    r = decode_body(dev, body, require_subsections=True)
    assert r.consumed == len(body)
    assert encode_body(dev, r) == body
    # also from a memoryview inside a bigger buffer, at an offset
    padded = b"\xaa" * 7 + body + b"\x7e\x00\x00\x00\x01"
    r2 = decode_body(dev, memoryview(padded), 7)
    assert r2 == r


@pytest.mark.parametrize("name", _capture_names())
def test_configuration_record_body(name):
    cap, blob, raw = _capture(name)
    vd = parse_vmdescription(raw)
    cfg_body = blob[cap["configuration"]["offset"]:][: cap["configuration"]["length"]]
    if cap["qemu"].startswith("7.2"):
        # fact: the 7.2 trailer has no "configuration" object, 10.0's has
        assert vd.configuration is None
        return
    assert vd.configuration["vmsd_name"] == "configuration"
    r = decode_body(vd.configuration, cfg_body, require_subsections=True)
    assert r.consumed == len(cfg_body)
    assert encode_body(vd.configuration, r) == cfg_body
    assert _field(r.fields, "name").value == cap["machine"].encode()
    assert _field(r.fields, "len").value == len(cap["machine"])


def test_configuration_capability_is_a_counted_string():
    cap, blob, raw = _capture("qemu100-q35-ignore-shared")
    vd = parse_vmdescription(raw)
    body = blob[: cap["configuration"]["length"]]
    r = decode_body(vd.configuration, body)
    (sub,) = r.subsections
    assert sub.name == "configuration/capabilities" and sub.version_id == 1
    assert _field(sub.fields, "caps_count").value == 1
    capf = _field(sub.fields, "capabilities")
    assert capf.type == "capability" and capf.value == b"x-ignore-shared"
    assert body.endswith(b"\x0fx-ignore-shared")


@pytest.mark.parametrize("name", _capture_names())
def test_globalstate_runstate(name):
    cap = _capture(name)[0]
    r = _decoded(name, "globalstate")
    runstate = cap["runstate"]  # chosen by the capture: -S → prelaunch, cont+stop → paused
    raw = _field(r.fields, "runstate").value
    assert raw.split(b"\0", 1)[0] == runstate.encode()
    assert _field(r.fields, "size").value == len(runstate) + 1  # includes the NUL
    if cap["qemu"].startswith("7.2"):
        assert len(raw) == 100
    else:
        # 10.0 layout: 32-byte runstate, vm_was_suspended pair, 66 unused bytes
        assert len(raw) == 32
        assert _field(r.fields, "has_vm_was_suspended").value == 1
        assert _field(r.fields, "vm_was_suspended").value == 0
        assert _field(r.fields, "unused").value == bytes(66)


@pytest.mark.parametrize("name", _capture_names())
def test_cpu_spot_checks(name):
    cap = _capture(name)[0]
    (sec,) = [s for s in cap["sections"] if s["idstr"] == "cpu"]
    assert sec["version_id"] == 12 and sec["instance_id"] == 0
    r = _decoded(name, "cpu")
    sub_names = [s.name for s in r.subsections]
    assert all(n.startswith("cpu/") for n in sub_names)
    assert "cpu/poll_control_msr" in sub_names
    if cap["runstate"] == "prelaunch":
        # a CPU that never ran sits at the x86 reset vector: eip 0xfff0
        assert _field(r.fields, "env.eip").value == 0xFFF0
    # the x87 registers: env.fpregs is an array of 8 structs whose only field is a
    # "tmp" carrying its vmsd inline (u64 mantissa, u16 exponent)
    fpregs = _field(r.fields, "env.fpregs")
    assert isinstance(fpregs.value, list) and len(fpregs.value) == 8
    (tmp,) = fpregs.value[0].fields
    assert tmp.type == "tmp" and isinstance(tmp.value, VmStruct) and tmp.value.name == "fpreg_tmp"
    assert [(f.name, f.type) for f in tmp.value.fields] == [("tmp_mant", "uint64"), ("tmp_exp", "uint16")]


def test_other_spot_checks():
    r = _decoded("qemu72-i440fx-prelaunch", "timer")
    assert [(f.name, f.type) for f in r.fields] == [
        ("cpu_ticks_offset", "int64"), ("unused", "unused_buffer"), ("cpu_clock_offset", "int64")]
    assert _field(r.fields, "unused").value == bytes(8)
    # fw_cfg has two subsections in declaration order
    r = _decoded("qemu100-i440fx-prelaunch", "fw_cfg")
    assert [s.name for s in r.subsections] == ["fw_cfg/dma", "fw_cfg/acpi_mr"]
    # two i8259 instances
    assert _decoded("qemu100-i440fx-prelaunch", "i8259", 1).consumed == 16
    # fdc drives are described element by element (index), struct inside struct
    r = _decoded("qemu72-i440fx-prelaunch", "fdc")
    state = _field(r.fields, "state").value
    assert isinstance(state, VmStruct) and state.name == "fdc"
    drives = [f for f in state.fields if f.name == "drives"]
    assert [d.index for d in drives] == list(range(len(drives))) and len(drives) >= 2
    assert all(isinstance(d.value, VmStruct) and d.value.name == "fdrive" for d in drives)
    fifo = _field(state.fields, "fifo")
    assert isinstance(fifo.value, list) and len(fifo.value) == 512
    # PCI device config space: the piix4_pm function is Intel 8086:7113
    r = _decoded("qemu72-i440fx-prelaunch", "0000:00:01.3/piix4_pm")
    config = _field(_field(r.fields, "parent_obj").value.fields, "config[0]").value
    assert config[:4] == bytes([0x86, 0x80, 0x13, 0x71])


@pytest.mark.parametrize("name", ["qemu72-i440fx-devices-paused", "qemu100-i440fx-devices-paused"])
def test_old_style_slirp_sections(name):
    secs = [(s, d) for _c, s, d, _b in _sections(name) if s["idstr"] == "slirp"]
    assert [s["instance_id"] for s, _d in secs] in ([0, 0], [0, 1])  # 7.2: 0,0; 10.0: 0,1
    for sec, dev in secs:
        assert "vmsd_name" not in dev and dev["size"] == sec["length"]
        assert dev["fields"] == [{"name": "data", "type": "buffer", "size": sec["length"]}]
    # bodies with 0x05 after an old-style body are never taken as subsections
    dev = secs[0][1]
    n = dev["size"]
    r = decode_body(dev, bytes(n) + b"\x05\x05slirp\x00\x00\x00\x01")
    assert r.consumed == n and r.subsections == ()


def test_virtio_field_is_opaque():
    r = _decoded("qemu100-i440fx-devices-paused", "0000:00:03.0/virtio-net")
    (vf,) = [f for f in r.fields if f.type == "virtio"]
    assert isinstance(vf.value, bytes) and len(vf.value) == vf.size


# --------------------------------------------------------------------------- truncation


def _cut_points(n: int, rng: random.Random) -> list[int]:
    if n <= 700:
        return list(range(n))
    return sorted({0, 1, n - 1, n - 2, *rng.sample(range(n), 60)})


@pytest.mark.parametrize("name", _capture_names())
def test_truncated_real_bodies_raise_with_offset_inside(name):
    rng = random.Random(1234)
    for _cap, sec, dev, body in _sections(name):
        for k in _cut_points(len(body), rng):
            cut = body[:k]
            with pytest.raises(VmstateDecodeError) as ei:
                decode_body(dev, cut, require_subsections=True)
            assert 0 <= ei.value.offset <= k, (sec["idstr"], k, ei.value)
            # loader rule (no require_subsections): a cut before a subsection or
            # inside its header is not an error by itself
            try:
                r = decode_body(dev, cut)
            except VmstateDecodeError as e:
                assert 0 <= e.offset <= k
            else:
                # The cut fell on a subsection boundary or inside a subsection
                # header.  Like QEMU's loader, the decoder then reads on with the
                # next fields (a nested struct's cut header can become the next
                # element's fields): only require_subsections notices.
                assert r.consumed <= k


@given(st.binary(max_size=400))
@settings(deadline=None)
def test_garbage_never_escapes_as_other_exception(data):
    for _cap, _sec, dev, _body in _sections("qemu100-i440fx-prelaunch")[:12]:
        try:
            r = decode_body(dev, data)
        except VmstateDecodeError as e:
            assert 0 <= e.offset <= len(data)
        else:
            assert r.consumed <= len(data)
            assert encode_body(dev, r) == data[: r.consumed]


# --------------------------------------------------------------------------- loader rule


SUBDEV = {
    "name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1,
    "fields": [{"name": "a", "type": "uint16", "size": 2}],
    "subsections": [
        {"vmsd_name": "dev/x", "version": 1, "fields": [{"name": "b", "type": "uint8", "size": 1}],
         "subsections": [{"vmsd_name": "dev/x/y", "version": 2,
                          "fields": [{"name": "c", "type": "int32", "size": 4}]}]},
        {"vmsd_name": "dev/z", "version": 1, "fields": []},
    ],
}


def _sub(name: bytes, version: int, body: bytes) -> bytes:
    return b"\x05" + bytes([len(name)]) + name + version.to_bytes(4, "big") + body


def test_subsections_nested_any_order_and_version_kept():
    data = (b"\x12\x34" + _sub(b"dev/z", 0x101, b"")
            + _sub(b"dev/x", 1, b"\x07" + _sub(b"dev/x/y", 2, b"\xff\xff\xff\xfe")) + b"\x7e")
    r = decode_body(SUBDEV, data)
    assert r.consumed == len(data) - 1
    assert r.fields == (VmField("a", "uint16", 2, 0x1234),)
    assert [s.name for s in r.subsections] == ["dev/z", "dev/x"]
    assert r.subsections[0].version_id == 0x101  # full be32 kept (the loader uses the low byte)
    (y,) = r.subsections[1].subsections
    assert y.name == "dev/x/y" and y.fields[0].value == -2
    assert encode_body(SUBDEV, r) == data[:-1]


@pytest.mark.parametrize("tail", [
    _sub(b"other/x", 1, b"\x00"),  # not prefixed with the parent name
    _sub(b"dev/unknown", 1, b""),  # prefixed but not described: left to the caller
    _sub(b"dev", 1, b""),  # not longer than the parent name
    _sub(b"de", 1, b""),
    b"\x05",  # marker without its length byte (the loader's peek fails: not a subsection)
    b"\x05\x05dev/",  # name not all there
    b"\x05\x7e",  # e.g. a field byte 0x05 followed by a footer
])
def test_subsection_loop_stops(tail):
    r = decode_body(SUBDEV, b"\x00\x01" + tail)
    assert r.consumed == 2 and r.subsections == ()


def test_missing_described_subsection_only_fails_when_required():
    data = b"\x00\x01" + _sub(b"dev/z", 1, b"")
    assert decode_body(SUBDEV, data).consumed == len(data)
    with pytest.raises(VmstateDecodeError, match="dev/x") as ei:
        decode_body(SUBDEV, data, require_subsections=True)
    assert ei.value.offset == len(data)


@pytest.mark.parametrize("data,offset", [
    (b"\x00", 0),
    (b"\x00\x01" + _sub(b"dev/z", 1, b"")[:-2], 9),  # version cut short
    (b"\x00\x01" + _sub(b"dev/x", 1, b""), 13),  # body missing
])
def test_truncation_offsets(data, offset):
    with pytest.raises(VmstateDecodeError) as ei:
        decode_body(SUBDEV, data)
    assert ei.value.offset == offset
    assert isinstance(ei.value, ValueError)


def test_field_types_and_special_elements():
    desc = {"vmsd_name": "t", "version": 1, "fields": [
        {"name": "u8", "type": "uint8", "size": 1},
        {"name": "i16", "type": "int16", "size": 2},
        {"name": "eq", "type": "int32 equal", "size": 4},
        {"name": "le", "type": "int32 le", "size": 4},
        {"name": "b", "type": "bool", "size": 1},
        {"name": "t", "type": "timer", "size": 8},
        {"name": "np", "array_len": 2, "type": "nullptr", "size": 1},
        {"name": "caps", "array_len": 2, "type": "capability", "size": 4},
        {"name": "f", "type": "float64", "size": 8},
        {"name": "ub", "type": "unused_buffer", "size": 3},
        {"name": "vs", "type": "vstruct", "vmsd_name": "inner", "version": 3,
         "fields": [{"name": "x", "type": "uint32", "size": 4}], "size": 4},
        {"name": "s", "type": "struct", "struct": {}, "size": 1},  # no nested description: bytes
    ]}
    data = (b"\xff" + b"\xff\xfe" + b"\x80\x00\x00\x00" + b"\x00\x00\x00\x05" + b"\x01"
            + b"\xff" * 8 + b"\x30\x30" + b"\x03abc\x00" + b"\x40\x09\x21\xfb\x54\x44\x2d\x18"
            + b"\x00\x00\x00" + b"\x00\x00\x00\x2a" + b"\x30")
    r = decode_body(desc, data)
    vals = {f.name: f.value for f in r.fields}
    assert vals == {"u8": 255, "i16": -2, "eq": -(2**31), "le": 5, "b": 1, "t": -1,
                    "np": [0x30, 0x30], "caps": [b"abc", b""], "f": bytes.fromhex("400921fb54442d18"),
                    "ub": b"\0\0\0", "vs": VmStruct("inner", 3, (VmField("x", "uint32", 4, 42),)),
                    "s": b"\x30"}
    assert r.consumed == len(data)
    assert encode_body(desc, r) == data


def test_description_errors():
    with pytest.raises(VmstateDescriptionError):
        decode_body({"vmsd_name": "x", "fields": [{"name": "a", "size": 1}]}, b"\0")
    with pytest.raises(VmstateDescriptionError):
        decode_body({"vmsd_name": "x", "fields": [{"name": "a", "type": "buffer"}]}, b"\0")
    with pytest.raises(VmstateDescriptionError):
        decode_body({"vmsd_name": "x", "fields": "nope"}, b"")
    with pytest.raises(VmstateDescriptionError):
        decode_body({"vmsd_name": "x", "fields": [{"name": "a", "type": "uint8", "size": 1,
                                                   "array_len": -1}]}, b"")
    with pytest.raises(VmstateDecodeError):
        decode_body(SUBDEV, b"\0\0", offset=5)
    # hostile descriptions: unbounded zero-size arrays, absurd nesting
    with pytest.raises(VmstateDescriptionError):
        decode_body({"vmsd_name": "x", "fields": [{"name": "a", "type": "buffer", "size": 0,
                                                   "array_len": 10**12}]}, b"")
    deep = {"vmsd_name": "x", "fields": []}
    for _ in range(5000):
        deep = {"vmsd_name": "x", "fields": [{"name": "s", "type": "struct", "struct": deep}]}
    with pytest.raises(VmstateDescriptionError):
        decode_body(deep, b"")
    # a huge array_len of real elements fails where the data runs out
    with pytest.raises(VmstateDecodeError) as ei:
        decode_body({"vmsd_name": "x", "fields": [{"name": "a", "type": "uint32", "size": 4,
                                                   "array_len": 10**12}]}, bytes(10))
    assert ei.value.offset == 8


def test_encode_errors():
    desc = {"vmsd_name": "e", "fields": [{"name": "a", "type": "uint8", "size": 1},
                                         {"name": "b", "type": "buffer", "size": 2}]}
    ok = DecodedBody((VmField("a", "uint8", 1, 1), VmField("b", "buffer", 2, b"xy")), (), 3)
    assert encode_body(desc, ok) == b"\x01xy"
    for bad in [
        DecodedBody((VmField("a", "uint8", 1, 256), VmField("b", "buffer", 2, b"xy")), (), 3),
        DecodedBody((VmField("a", "uint8", 1, 1), VmField("b", "buffer", 2, b"x")), (), 3),
        DecodedBody((VmField("z", "uint8", 1, 1), VmField("b", "buffer", 2, b"xy")), (), 3),
        DecodedBody((VmField("a", "uint8", 1, 1),), (), 3),
        DecodedBody(ok.fields, (VmSubsection("e/nope", 1, ()),), 3),
    ]:
        with pytest.raises(VmstateEncodeError):
            encode_body(desc, bad)


# --------------------------------------------------------------------------- property


_INT_TYPES = [("uint8", 1), ("int8", 1), ("uint16", 2), ("int16", 2), ("uint32", 4), ("int32", 4),
              ("uint64", 8), ("int64", 8), ("bool", 1), ("timer", 8), ("int32 equal", 4),
              ("uint8 equal", 1)]
_BUF_TYPES = ["buffer", "unused_buffer", "pci config", "virtio"]


@st.composite
def _leaf_desc(draw, name):
    kind = draw(st.sampled_from(["int", "int", "buf", "cap"]))
    if kind == "int":
        t, size = draw(st.sampled_from(_INT_TYPES))
        fd = {"name": name, "type": t, "size": size}
    elif kind == "buf":
        fd = {"name": name, "type": draw(st.sampled_from(_BUF_TYPES)),
              "size": draw(st.integers(0, 24))}
    else:
        fd = {"name": name, "type": "capability", "size": 5}
    return fd


@st.composite
def _vmsd_desc(draw, vmsd_name, depth, counter, is_struct=False):
    n = draw(st.integers(0, 5))
    fields = []
    for i in range(n):
        fname = f"f{i}"
        if depth > 0 and draw(st.integers(0, 4)) == 0:
            counter[0] += 1
            inner = draw(_vmsd_desc(f"s{counter[0]}", depth - 1, counter, is_struct=True))
            fd = {"name": fname, "type": "struct", "struct": inner, "size": 0}
        else:
            fd = draw(_leaf_desc(fname))
        shapes = ["one", "one", "index"]
        if fd["type"] != "struct" or not _has_subsections(fd["struct"]):
            shapes.append("array")  # QEMU never compresses arrays whose elements may vary
        shape = draw(st.sampled_from(shapes))
        if shape == "array":
            fd["array_len"] = draw(st.integers(0, 4))
            fields.append(fd)
        elif shape == "index":
            for j in range(draw(st.integers(2, 3))):
                fields.append(dict(fd, index=j))
        else:
            fields.append(fd)
    desc = {"vmsd_name": vmsd_name, "version": draw(st.integers(0, 9)), "fields": fields}
    if depth > 0:
        subs = []
        for _ in range(draw(st.integers(0, 3))):
            counter[0] += 1
            subs.append(draw(_vmsd_desc(f"{vmsd_name}/sub{counter[0]}", depth - 1, counter)))
        if subs:
            desc["subsections"] = subs
            if is_struct:
                # Two consecutive elements of a struct whose fields take no bytes
                # would be ambiguous on the wire (the first element's loop would
                # read the second's subsections, as QEMU's loader would): start
                # such structs with a byte that is never the 0x05 marker.
                fields.insert(0, {"name": "lead", "type": "uint8", "size": 1})
    return desc


def _has_subsections(desc) -> bool:
    return bool(desc.get("subsections")) or any(
        _has_subsections(f["struct"]) for f in desc["fields"] if f["type"] == "struct")


def _element_value(draw, fd):
    t = fd["type"]
    if t == "struct":
        fields, subs = _vmsd_value(draw, fd["struct"], nested=True)
        return VmStruct(fd["struct"]["vmsd_name"], fd["struct"]["version"], fields, subs)
    if t == "capability":
        return draw(st.binary(max_size=20))
    if t in _BUF_TYPES:
        return draw(st.binary(min_size=fd["size"], max_size=fd["size"]))
    if fd["name"] == "lead":
        return draw(st.integers(0, 255).filter(lambda v: v != 0x05))
    bits = fd["size"] * 8
    if t.startswith("int") or t == "timer":
        return draw(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    return draw(st.integers(0, 2**bits - 1))


def _vmsd_value(draw, desc, nested=False):
    """Values for a vmsd object.  Nested levels write every described subsection
    (like QEMU's trailer, which lists only what was written; otherwise the wire
    would be ambiguous), in any order; the top level may omit some."""
    fields = []
    for fd in desc["fields"]:
        if "array_len" in fd:
            value = [_element_value(draw, fd) for _ in range(fd["array_len"])]
        else:
            value = _element_value(draw, fd)
        fields.append(VmField(fd["name"], fd["type"], fd["size"], value, fd.get("index")))
    subs = []
    sdescs = desc.get("subsections", [])
    if sdescs:
        chosen = draw(st.permutations(sdescs))
        if not nested:
            chosen = chosen[: draw(st.integers(0, len(sdescs)))]
        for sd in chosen:
            sf, ss = _vmsd_value(draw, sd, nested=True)
            subs.append(VmSubsection(sd["vmsd_name"], draw(st.integers(0, 2**32 - 1)), sf, ss))
    return tuple(fields), tuple(subs)


@st.composite
def _body_case(draw):
    counter = [0]
    if draw(st.integers(0, 9)) == 0:  # old-style section
        n = draw(st.integers(0, 40))
        desc = {"name": "old", "instance_id": 0, "size": n,
                "fields": [{"name": "data", "type": "buffer", "size": n}]}
    else:
        desc = dict(draw(_vmsd_desc("dev", 2, counter)), name="0000:00:02.0/dev", instance_id=0)
    fields, subs = _vmsd_value(draw, desc)
    return desc, fields, subs


@given(_body_case(), st.binary(max_size=3))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_decode_encode_roundtrip(case, trailer):
    desc, fields, subs = case
    wire = encode_body(desc, DecodedBody(fields, subs, 0))
    # JSON round trip of the description changes nothing
    desc = json.loads(json.dumps(desc))
    # a trailer that is not a subsection of ours must stay unread
    trailer = b"\x7e" + trailer
    r = decode_body(desc, wire + trailer)
    assert r.consumed == len(wire)
    assert r.fields == fields and r.subsections == subs
    assert encode_body(desc, r) == wire
    if wire:
        k = len(wire) - 1
        try:
            rr = decode_body(desc, wire[:k])
        except VmstateDecodeError as e:
            assert 0 <= e.offset <= k
        else:
            assert rr.consumed <= k  # cut at/inside a subsection header (loader rule)


# --------------------------------------------------------------------------- VMDESCRIPTION


def test_parse_vmdescription_real():
    _cap, _blob, raw = _capture("qemu100-i440fx-devices-paused")
    vd = parse_vmdescription(raw)
    assert isinstance(vd, VmDescription)
    assert vd.configuration is not None
    assert vd.find("i8259", 1)["vmsd_name"] == "i8259"
    assert vd.find("cpu")["version"] == 12
    assert vd.find("cpu", 7) is None
    assert parse_vmdescription(raw.decode()) == vd
    assert parse_vmdescription(memoryview(raw)) == vd


@pytest.mark.parametrize("raw,offset", [
    (b'{"page_size": 4096, "devices": [}', 32),
    (b"", 0),
    (b'{"page_size": 4096, "devices": []}\x00', 34),
    (b'{"x": "\xc3\x28"}', 7),
])
def test_parse_vmdescription_bad_json(raw, offset):
    with pytest.raises(VmstateDecodeError) as ei:
        parse_vmdescription(raw)
    assert ei.value.offset == offset


@pytest.mark.parametrize("obj", [
    [], {"devices": []}, {"page_size": "4096", "devices": []}, {"page_size": 4096},
    {"page_size": 4096, "devices": [1]}, {"page_size": 4096, "devices": [{"name": "a"}]},
    {"page_size": 4096, "devices": [{"name": "a", "instance_id": 0, "fields": []}]},
    {"page_size": 4096, "devices": [], "configuration": []},
])
def test_parse_vmdescription_bad_schema(obj):
    with pytest.raises(VmstateDecodeError):
        parse_vmdescription(json.dumps(obj).encode())


# --------------------------------------------------------------------------- -dump-vmstate


@pytest.mark.parametrize("version", ["72", "100"])
def test_dump_vmstate_basics(version):
    d = _dump(version)
    assert d.machine == "pc-i440fx-7.2"
    # keys of the file are QOM types; the table is keyed by vmsd name
    assert d.by_type["isa-fdc"].name == "fdc"
    assert d["fdc"].version_id == 2 and d["fdc"].minimum_version_id == 2
    assert d["ps2mouse"].type_names == ("ps2-mouse",)
    assert d["e1000"].type_names == ("e1000", "e1000-82544gc", "e1000-82545em")
    assert (d["e1000"].version_id, d["e1000"].minimum_version_id) == (2, 1)
    assert d["kvmclock"].subsections[0] == "kvmclock/clock_is_reliable"
    assert d["kvmclock"].subsection("kvmclock/clock_is_reliable").version_id == 1
    # one vmsd name, two different descriptions
    ne = d["ne2000"]
    assert (ne.version_id, ne.minimum_version_id, ne.type_names) == (3, 3, ("ne2k_pci",))
    (alt,) = ne.alternatives
    assert (alt.version_id, alt.minimum_version_id, alt.type_names) == (2, 0, ("ne2k_isa",))
    assert ne.accepts_version(0) and ne.accepts_version(3) and not ne.accepts_version(4)
    # nested struct descriptions of fields
    parent = d["ps2mouse"].fields[0]
    assert parent.name == "parent_obj" and parent.struct.name == "PS2 Common State"
    # fact: entries registered without a device class vmsd are absent
    for idstr in ("timer", "cpu", "cpu_common", "apic", "globalstate", "PCIBUS", "i2c_bus",
                  "acpi_build", "slirp", "configuration"):
        assert lookup_idstr(d, idstr) is None, idstr


def test_dump_vmstate_differences_between_versions():
    d72, d100 = _dump("72"), _dump("100")
    # piix3-ide got a class vmsd after 7.2 (7.2 registered it per instance)
    assert lookup_idstr(d72, "0000:00:01.1/ide") is None
    ide = lookup_idstr(d100, "0000:00:01.1/ide")
    assert (ide.version_id, ide.minimum_version_id) == (3, 0)
    # 10.0 dumps carry "num" for fixed arrays, 7.2 dumps do not
    assert any(f.num is not None for v in d100.values() for f in v.fields)
    assert all(f.num is None for v in d72.values() for f in v.fields)


def test_idstr_candidates():
    assert vmsd_name_candidates("0000:00:04.0/1/usb-ptr") == [
        "0000:00:04.0/1/usb-ptr", "1/usb-ptr", "usb-ptr"]
    assert vmsd_name_candidates("timer") == ["timer"]
    table = {"a/b": VmsdInfo("a/b", 1, 1), "b": VmsdInfo("b", 2, 2)}
    assert lookup_idstr(table, "0000:00:01.0/a/b").name == "a/b"  # longest suffix wins
    assert lookup_idstr(table, "0000:00:01.0/b").name == "b"
    assert lookup_idstr(table, "0000:00:01.0/c") is None


@pytest.mark.parametrize("name", _capture_names())
def test_real_idstrs_resolve_to_accepting_vmsds(name):
    cap = _capture(name)[0]
    # pc-i440fx-7.2 streams of either binary load on 10.0; 7.2 streams on 7.2
    dumps = [_dump("100")] + ([_dump("72")] if cap["qemu"].startswith("7.2") else [])
    expect_found = {"fdc", "hpet", "mc146818rtc", "i8254", "dma", "i8259", "ioapic", "fw_cfg",
                    "PCIHost", "kvm-tpr-opt", "port92", "vmmouse", "pckbd", "ps2kbd", "ps2mouse",
                    "pcspk", "0000:00:00.0/I440FX", "0000:00:01.0/PIIX3",
                    "0000:00:01.3/piix4_pm", "0000:00:02.0/e1000", "0000:00:03.0/virtio-net",
                    "0000:00:04.0/uhci", "0000:00:04.0/1/usb-ptr", "0000:00:05.0/vga", "serial"}
    for d in dumps:
        found = set()
        for sec in cap["sections"]:
            info = lookup_idstr(d, sec["idstr"])
            if info is None:
                continue
            found.add(sec["idstr"])
            assert sec["idstr"] == info.name or sec["idstr"].endswith("/" + info.name)
            assert info.accepts_version(sec["version_id"]), (sec, info.version_id)
        if cap["machine"] == "pc-i440fx-7.2":
            assert expect_found & {s["idstr"] for s in cap["sections"]} <= found
        misses = {vmsd_name_candidates(s["idstr"])[-1] for s in cap["sections"]
                  if lookup_idstr(d, s["idstr"]) is None}
        assert misses <= NOT_IN_DUMP_VMSTATE
        assert {"timer", "cpu", "cpu_common", "apic", "globalstate"} <= misses
    usb = lookup_idstr(_dump("100"), "0000:00:04.0/1/usb-ptr")
    assert usb.name == "usb-ptr" and "usb-tablet" in usb.type_names


@pytest.mark.parametrize("text", [
    "", "[]", '{"x": 1}', '{"x": {"Name": "x"}}',
    '{"x": {"Name": "x", "Description": {"name": "x", "version_id": 1}}}',
    '{"x": {"Name": "x", "Description": {"name": "x", "version_id": 1, "minimum_version_id": 1,'
    ' "Fields": [{"field": "f"}]}}}',
])
def test_parse_dump_vmstate_errors(text):
    with pytest.raises(VmstateDecodeError):
        parse_dump_vmstate(text)


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from(
    ["uint8", "int16", "uint32", "int64", "bool", "timer", "buffer", "capability", "struct",
     "tmp", "vstruct", "nullptr", "x", "x/y", "data"]))
_desc_keys = st.sampled_from(["name", "type", "size", "array_len", "index", "struct", "fields",
                              "subsections", "vmsd_name", "version"])
_json_like = st.recursive(
    _json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_desc_keys, inner, max_size=6)),
    max_leaves=30)


@given(st.dictionaries(_desc_keys, _json_like, max_size=6), st.binary(max_size=64))
@settings(deadline=None)
def test_malformed_descriptions_only_raise_decode_errors(desc, data):
    try:
        r = decode_body(desc, data)
    except VmstateDecodeError as e:
        assert 0 <= e.offset <= len(data)
    else:
        assert r.consumed <= len(data)
        assert encode_body(desc, r) == data[: r.consumed]
