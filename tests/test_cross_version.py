"""Cross-version streams judged as the destination loads them: real streams one version
wrote, edited in a section header, into a destination of the other version (and of its own).

The disagreements the cross-version differential found, now data in the rules rooms:

* instance ids a destination numbers 0..n-1 (cpu, cpu_common: the CPU index; apic: the APIC
  id; PCIBUS, i2c_bus: VMSTATE_INSTANCE_ID_ANY) -- a destination configured as the source
  was has as many as the stream carries (value-rules.json "counted");
* version gates of sections registered outside device classes: a 'timer' section of version 1
  is read without cpu_clock_offset, a 'cpu' section of version 11 without xcr0, xstate_bv
  and the YMMH registers, and the bytes left make "Missing section footer" (fields_v).

The texts are the real destinations' first error lines (7.2.22 and 10.0.2, both ways); the
differential at the end checks them again on the installed binaries."""

from __future__ import annotations

import lzma

import pytest

from conformance.rules import value_rules
from conformance.rules.catalogue import Code
from strategies.fuzz import FuzzInput, decode_seed

from tests.test_value_rules import DATA, UNKNOWN, _model, header_edit

FOOTER = "Missing section footer for"

# (name, idstr, header changes, the code, the real destination's first error line; None: it loads)
EDITS = [
    ("cpu-instance-1", "cpu", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'cpu' 1"),
    ("cpu_common-instance-1", "cpu_common", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'cpu_common' 1"),
    ("apic-instance-1", "apic", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'apic' 1"),
    ("PCIBUS-instance-1", "PCIBUS", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'PCIBUS' 1"),
    ("timer-version-1", "timer", {"version_id": 1}, Code.DEVICE_LOAD_FAILED, f"{FOOTER} timer"),
    ("cpu-version-11", "cpu", {"version_id": 11}, Code.DEVICE_LOAD_FAILED, f"{FOOTER} cpu"),
    # device sections without a device path: one of each kind in this machine
    ("pckbd-instance-1", "pckbd", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'pckbd' 1"),
    ("mc146818rtc-instance-1", "mc146818rtc", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'mc146818rtc' 1"),
    ("port92-instance-1", "port92", {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'port92' 1"),
    # the piix IDE at version 2: no drives (VMSTATE_IDE_DRIVES is version 3)
    ("ide-version-2", "0000:00:01.1/ide", {"version_id": 2}, Code.DEVICE_LOAD_FAILED, f"{FOOTER} 0000:00:01.1/ide"),
    # find_se: 0xffffffff is the alias of every entry registered without one; the RTC's
    # legacy alias is its I/O base
    ("cpu-instance-any", "cpu", {"instance_id": 0xFFFFFFFF}, None, None),
    ("apic-instance-any", "apic", {"instance_id": 0xFFFFFFFF}, None, None),
    ("pckbd-instance-any", "pckbd", {"instance_id": 0xFFFFFFFF}, None, None),
    ("mc146818rtc-alias", "mc146818rtc", {"instance_id": 0x70}, None, None),
]
# real streams (tests/data/multifd, main channels): (seed, destination version)
PAIRS = [("qemu100-i440fx-7.2", "7.2"), ("qemu72-i440fx-7.2", "10.0"), ("qemu100-i440fx-7.2", "10.0")]


def _seed(name: str):
    return decode_seed(lzma.decompress((DATA / f"{name}.main.bin.xz").read_bytes()))


def _edited(seed, edit) -> bytes:
    name, idstr, changes = edit[:3]
    return FuzzInput(seed, [name], header_edit(seed, idstr, **changes)).data()


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_the_unedited_stream_loads_by_the_destinations_layouts(pair):
    seed, version = pair
    assert _model(_seed(seed).data, version) == []


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
@pytest.mark.parametrize("edit", EDITS, ids=lambda e: e[0])
def test_each_edit_is_judged_as_the_real_destination_judged_it(pair, edit):
    seed, version = pair
    found = _model(_edited(_seed(seed), edit), version)
    if edit[3] is None:
        assert found == []
        return
    assert [v.code for v in found] == [edit[3]], found
    assert edit[4] in found[0].message


def test_counted_instances_follow_the_streams_own_count():
    """Two CPUs (a destination started with -smp 2, as the source was): 0 and 1 are found;
    alone, instance 1 is not; 0xffffffff finds any."""
    cpus = [{"idstr": "cpu", "instance_id": 0}, {"idstr": "cpu", "instance_id": 1}]
    assert value_rules.judge_counted("10.0", cpus) == []
    lone = value_rules.judge_counted("7.2", [{"idstr": "cpu", "instance_id": 1}])
    assert [f.code for _, f in lone] == [Code.UNKNOWN_SECTION]
    assert value_rules.judge_counted("7.2", [{"idstr": "PCIBUS", "instance_id": 0xFFFFFFFF}]) == []
    # rows with fixed instances are not counted: the table judges them at the header
    assert value_rules.judge_counted("10.0", [{"idstr": "timer", "instance_id": 1}]) == []


def test_gated_fields_are_named_in_the_destinations_observed_layouts():
    """Each fields_v name is a field of the layout the destination's own streams show (else
    the gate would never apply)."""
    from conformance.rules.device_state import builtin_layouts

    for version in ("7.2", "10.0"):
        layouts = builtin_layouts(version)
        for name, row in value_rules.sections(version).items():
            if not row.fields_v:
                continue
            for shape in layouts.outside[name]["families"].values():
                names = {f["n"] for f in shape["f"]}
                assert set(row.fields_v) <= names, (version, name)
                assert all(row.minimum_version_id < v <= row.version_id for v in row.fields_v.values())


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_differential_real_destination_of_the_other_version(pair, qemu):
    """Each edit into the real destination (started with the stream's machine type and
    memory): its verdict and first error line, and the model's."""
    from conformance.qemu.fuzz_target import RealTarget

    name, version = pair
    seed = _seed(name)
    rows, agree = [], 0
    with RealTarget(qemu(version), machine="pc-i440fx-7.2", devices="none", mem_mb=32, warm=2, trace=False) as real:
        for edit in EDITS:
            data = _edited(seed, edit)
            ex = real.run(data)
            found = _model(data, version)
            if edit[3] is None:
                ok = ex.verdict == "accepted" and not found
            else:
                ok = ex.verdict == "rejected" and edit[4] in (ex.first_error or "") and bool(found) \
                    and found[0].code is edit[3]
            agree += ok
            rows.append((edit[0], ex.verdict, ex.first_error, [v.code.value for v in found]))
    assert agree == len(EDITS), rows


# a device set's sections at a version below the destination's own (real streams of the
# other version, captured by the fixture): (idstr suffix, version, real first error line)
DEVICE_EDITS = [
    ("/e1000", 1, FOOTER),  # VMSTATE_UNUSED_TEST(is_version_1, 4): 4 bytes the source did not write
    ("/xhci", 0, FOOTER),  # its xhci struct is version 1: the bytes the source wrote are left
]


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("src,dst", [("10.0", "7.2"), ("7.2", "10.0")])
def test_differential_version_tests_and_gates_of_devices(src, dst, qemu, capture):
    from conformance.qemu.fuzz_target import RealTarget
    from wireformat.records import SectionHeader

    seed = decode_seed(capture(src, "pc-q35-7.2", "e1000+usb").path.read_bytes())
    assert _model(seed.data, dst) == []
    rows, agree = [], 0
    with RealTarget(qemu(dst), machine="pc-q35-7.2", devices="e1000+usb", warm=2, trace=False) as real:
        assert real.run(seed.data).verdict == "accepted"
        for suffix, version, text in DEVICE_EDITS:
            idstr = next(u.record.idstr for u in seed.units
                         if isinstance(u.record, SectionHeader) and (u.record.idstr or "").endswith(suffix))
            data = _edited(seed, (suffix, idstr, {"version_id": version}))
            ex = real.run(data)
            found = _model(data, dst)
            agree += ex.verdict == "rejected" and f"{text} {idstr}" in (ex.first_error or "") \
                and [v.code for v in found] == [Code.DEVICE_LOAD_FAILED] and f"{text} {idstr}" in found[0].message
            rows.append((suffix, ex.verdict, ex.first_error, [(v.code.value, v.message) for v in found]))
    assert agree == len(DEVICE_EDITS), rows


# ------------------------------------------------------------------ post_load value checks

def body_edit(seed, suffix: str, at, change) -> bytes:
    """The stream with the body of the section whose idstr ends with `suffix` edited:
    `at(body)` finds the offset, `change(bytes)` the new bytes there (found by hand here,
    independently of value_rules)."""
    import dataclasses

    from strategies.fuzz import Unit
    from wireformat.records import DeviceState

    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, DeviceState) and (u.record.idstr or "").endswith(suffix))
    rec = units[i].record
    body = bytes(rec.data)
    o, n = at(body)
    units[i] = Unit(dataclasses.replace(rec, data=body[:o] + change(body[o:o + n]) + body[o + n:]), None)
    return FuzzInput(seed, [suffix], units).data()


def _table_mr_size(body: bytes) -> tuple[int, int]:
    """fw_cfg/acpi_mr's first field (table_mr_size, be64): after the counted name and the version."""
    return body.index(b"fw_cfg/acpi_mr") + len(b"fw_cfg/acpi_mr") + 4, 8


def _add(n: int):
    return lambda b: (int.from_bytes(b, "big") + n).to_bytes(len(b), "big")


def _ncq_halt(desc: dict, port: int, slot: int):
    """The offset of ahci dev[port].ncq_tfs[slot].halt, from the source's VMDESCRIPTION."""
    def walk(d, off, path):
        for f in d.get("fields", []):
            for k in range(f.get("array_len", 1)):
                here = path + [(f["name"], f.get("index", k))]
                if "struct" in f:
                    off, hit = walk(f["struct"], off, here)
                    if hit is not None:
                        return off, hit
                else:
                    names = [p for p in here if p[0] in ("dev", "ncq_tfs")]
                    if f["name"] == "halt" and names == [("dev", port), ("ncq_tfs", slot)]:
                        return off, off
                    off += f["size"]
        return off, None

    return lambda body: (walk(desc, 0, [])[1], 1)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_acpi_blob_sizes_beyond_their_maximum_abort_the_destination(pair):
    name, version = pair
    seed = _seed(name)
    grown = _model(body_edit(seed, "fw_cfg", _table_mr_size, _add(0x800000)), version)
    assert [v.code for v in grown] == [Code.DEVICE_VALUE_CHECK]
    assert "Size too large: /rom@etc/acpi/tables" in grown[0].message
    assert _model(body_edit(seed, "fw_cfg", _table_mr_size, _add(0x10000)), version) == []


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("src,dst", [("10.0", "7.2"), ("7.2", "10.0")])
def test_differential_post_load_checks_of_fw_cfg_and_ahci(src, dst, qemu, capture):
    """fw_cfg's ACPI blob beyond its max_length (the destination aborts in qemu_ram_resize)
    or by 64 KiB (it loads); an AHCI NCQ slot halted but not used (ahci_state_post_load)."""
    from conformance.qemu.fuzz_target import RealTarget

    seed = decode_seed(capture(src, "pc-q35-7.2", "e1000+usb").path.read_bytes())
    ahci = next(d for d in seed.devices if d["name"].endswith("/ich9_ahci"))
    cases = [("fw_cfg", _table_mr_size, _add(0x800000), "crashed", "Unexpected error in qemu_ram_resize()"),
             ("fw_cfg", _table_mr_size, _add(0x10000), "accepted", None),
             ("/ich9_ahci", _ncq_halt(ahci, 1, 31), lambda b: b"\x01", "rejected", "Failed to load ich9_ahci:ahci")]
    rows, agree = [], 0
    with RealTarget(qemu(dst), machine="pc-q35-7.2", devices="e1000+usb", warm=2, trace=False) as real:
        for suffix, at, change, verdict, text in cases:
            data = body_edit(seed, suffix, at, change)
            ex = real.run(data)
            found = _model(data, dst)
            want = [Code.DEVICE_VALUE_CHECK] if text else []
            agree += ex.verdict == verdict and (text is None or text in (ex.first_error or "")) \
                and [v.code for v in found] == want
            rows.append((suffix, ex.verdict, ex.first_error, [(v.code.value, v.message) for v in found]))
    assert agree == len(cases), rows


def _identify_set(desc: dict):
    """The offset of the first IDE drive's identify_set (after mult_sectors), from the
    source's VMDESCRIPTION: the piix IDE's bus[0].ifs[0]."""
    def walk(d, off, path):
        for f in d.get("fields", []):
            for k in range(f.get("array_len", 1)):
                if "struct" in f:
                    off, hit = walk(f["struct"], off, path + [f["name"]])
                    if hit is not None:
                        return off, hit
                elif f["name"] == "identify_set" and path and path[-1] == "bus[0].ifs":
                    return off, off
                else:
                    off += f["size"]
        return off, None

    return lambda body: (walk(desc, 0, [])[1], 4)


IDE_PAIRS = [("qemu72-i440fx-7.2", "10.0"), ("qemu100-i440fx-7.2", "10.0")]


@pytest.mark.parametrize("pair", IDE_PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_identify_data_follows_identify_set(pair):
    """VMSTATE_BUFFER_TEST(identify_data, is_identify_set): set to 1, the destination reads
    512 bytes the source did not write. (7.2 reads the piix IDE by the layout its own streams
    show, without the test: not judged there.)"""
    name, version = pair
    seed = _seed(name)
    ide = next(d for d in seed.devices if d["name"].endswith("/ide"))
    found = _model(body_edit(seed, "/ide", _identify_set(ide), lambda b: (1).to_bytes(4, "big")), version)
    assert [v.code for v in found] == [Code.DEVICE_LOAD_FAILED]
    assert "0000:00:01.1/ide" in found[0].message


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("pair", IDE_PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_differential_identify_set(pair, qemu):
    from conformance.qemu.fuzz_target import RealTarget

    name, version = pair
    seed = _seed(name)
    ide = next(d for d in seed.devices if d["name"].endswith("/ide"))
    data = body_edit(seed, "/ide", _identify_set(ide), lambda b: (1).to_bytes(4, "big"))
    with RealTarget(qemu(version), machine="pc-i440fx-7.2", devices="none", mem_mb=32, warm=1, trace=False) as real:
        ex = real.run(data)
    assert ex.verdict == "rejected" and "Missing section footer for 0000:00:01.1/ide" in (ex.first_error or ""), ex
    assert [v.code for v in _model(data, version)] == [Code.DEVICE_LOAD_FAILED]
