"""Value rules as data (conformance/rules/value_rules.py, data/value-rules.json): each rule
fires on a real capture edited to break it, and the real destination rejects the same
stream with the text the rule mirrors (the differential, marked qemu and slow)."""

from __future__ import annotations

import dataclasses
import io
import json
import lzma
from pathlib import Path

import pytest

from conformance.check.pipeline import check_stream
from conformance.rules import value_rules
from conformance.rules.catalogue import CATALOGUE, Code, Severity
from conformance.rules.tables import builtin_tables
from conformance.versions import NEWEST, VERSIONS
from strategies.fuzz import FuzzInput, Unit, decode_seed
from wireformat import vmstate
from wireformat.records import DeviceState, RamRecord, SectionHeader

DATA = Path(__file__).parent / "data" / "multifd"
UNKNOWN = "Unknown savevm section or instance"


def _seed(version: str):
    """The main channel of a real capture a 10.0 source wrote for a `version` destination."""
    return decode_seed(lzma.decompress((DATA / f"qemu100-i440fx-{version}.main.bin.xz").read_bytes()))


def header_edit(seed, idstr: str, **changes) -> list[Unit]:
    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, SectionHeader) and u.record.idstr == idstr)
    units[i] = Unit(dataclasses.replace(units[i].record, **changes), None)
    return units


def field_edit(seed, idstr: str, names: tuple[str, ...], value: int) -> list[Unit]:
    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, DeviceState) and u.record.idstr == idstr)
    rec = units[i].record
    desc = next(d for d in seed.devices if d["name"] == idstr)
    body = vmstate.decode_body(desc, rec.data)
    fields = tuple(dataclasses.replace(f, value=value) if f.name in names else f for f in body.fields)
    data = vmstate.encode_body(desc, dataclasses.replace(body, fields=fields))
    assert data != rec.data
    units[i] = Unit(dataclasses.replace(rec, data=data), None)
    return units


def runstate_edit(seed, text: bytes) -> list[Unit]:
    """globalstate's runstate buffer holding `text` (NUL-padded to the buffer the source wrote)."""
    desc = next(d for d in seed.devices if d["name"] == "globalstate")
    size = next(f["size"] for f in desc["fields"] if f["name"] == "runstate")
    return field_edit(seed, "globalstate", ("runstate",), text.ljust(size, b"\0"))


def mem_size_edit(seed, name: str, length: int) -> list[Unit]:
    """MEM_SIZE announcing `length` for block `name` (and the total to match)."""
    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, RamRecord) and u.record.blocks)
    r = units[i].record
    blocks = [dataclasses.replace(b, used_length=length) if b.name == name else b for b in r.blocks]
    units[i] = Unit(dataclasses.replace(r, blocks=blocks, addr=sum(b.used_length for b in blocks)), None)
    return units


def config_edit(seed, idstr: str, offset: int, xor: int) -> list[Unit]:
    """A PCI device body with byte `offset` of its config space flipped by `xor`."""
    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, DeviceState) and u.record.idstr == idstr)
    rec = units[i].record
    desc = next(d for d in seed.devices if d["name"] == idstr)
    body = vmstate.decode_body(desc, rec.data)
    first = body.fields[0]
    inner = tuple(dataclasses.replace(f, value=bytes(b ^ xor if k == offset else b for k, b in enumerate(f.value)))
                  if f.name.startswith("config[") else f for f in first.value.fields)
    fields = (dataclasses.replace(first, value=dataclasses.replace(first.value, fields=inner)), *body.fields[1:])
    units[i] = Unit(dataclasses.replace(rec, data=vmstate.encode_body(desc, dataclasses.replace(body, fields=fields))),
                    None)
    return units


# (name, edit, args, code, text of the real destination's first error line)
HPET_FIELDS = ("num_timers", "num_timers_save")
CASES = [
    ("timer-too-old", header_edit, ("timer",), {"version_id": 0}, Code.SECTION_VERSION_TOO_OLD,
     "timer: incoming version_id 0 is too old for local minimum version_id  1"),
    ("cpu-too-old", header_edit, ("cpu",), {"version_id": 10}, Code.SECTION_VERSION_TOO_OLD,
     "cpu: incoming version_id 10 is too old for local minimum version_id  11"),
    ("apic-too-old", header_edit, ("apic",), {"version_id": 2}, Code.SECTION_VERSION_TOO_OLD,
     "apic: incoming version_id 2 is too old for local minimum version_id  3"),
    ("globalstate-too-old", header_edit, ("globalstate",), {"version_id": 0}, Code.SECTION_VERSION_TOO_OLD,
     "globalstate: incoming version_id 0 is too old for local minimum version_id  1"),
    ("hpet-too-old", header_edit, ("hpet",), {"version_id": 0}, Code.SECTION_VERSION_TOO_OLD,
     "hpet: incoming version_id 0 is too old for local minimum version_id  1"),
    ("ram-instance", header_edit, ("ram",), {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'ram' 1"),
    ("timer-instance", header_edit, ("timer",), {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'timer' 1"),
    ("fw_cfg-instance", header_edit, ("fw_cfg",), {"instance_id": 1}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'fw_cfg' 1"),
    ("i8259-instance", header_edit, ("i8259",), {"instance_id": 2}, Code.UNKNOWN_SECTION, f"{UNKNOWN} 'i8259' 2"),
    ("path-instance", header_edit, ("0000:00:00.0/I440FX",), {"instance_id": 1}, Code.UNKNOWN_SECTION,
     f"{UNKNOWN} '0000:00:00.0/I440FX' 1"),
    ("hpet-timers-2", field_edit, ("hpet", HPET_FIELDS, 2), None, Code.DEVICE_VALUE_CHECK, "Input validation failed: hpet/"),
    ("hpet-timers-33", field_edit, ("hpet", HPET_FIELDS, 33), None, Code.DEVICE_VALUE_CHECK, "Input validation failed: hpet/"),
    ("vapic-state", field_edit, ("kvm-tpr-opt", ("state",), 1), None, Code.DEVICE_VALUE_CHECK,
     "error while loading state for instance 0x0 of device 'kvm-tpr-opt'"),
    ("acpi-tables-too-large", mem_size_edit, ("/rom@etc/acpi/tables", 0x400000), None, Code.RAM_BLOCK_SIZE_MISMATCH,
     "Size too large: /rom@etc/acpi/tables: 0x400000 > 0x200000: Invalid argument"),
    ("rsdp-too-large", mem_size_edit, ("/rom@etc/acpi/rsdp", 0x2000), None, Code.RAM_BLOCK_SIZE_MISMATCH,
     "Size too large: /rom@etc/acpi/rsdp: 0x2000 > 0x1000: Invalid argument"),
    ("pc.rom-length", mem_size_edit, ("pc.rom", 0x21000), None, Code.RAM_BLOCK_SIZE_MISMATCH,
     "Size mismatch: pc.rom: 0x21000 != 0x20000: Invalid argument"),
    ("pci-device-id", config_edit, ("0000:00:00.0/I440FX", 2, 1), None, Code.PCI_CONFIG_READ_ONLY,
     "get_pci_config_device: Bad config data: i=0x2 read: 36 device: 37 cmask: ff wmask: 0 w1cmask:0"),
    ("pci-class-prog", config_edit, ("0000:00:01.1/ide", 9, 1), None, Code.PCI_CONFIG_READ_ONLY,
     "get_pci_config_device: Bad config data: i=0x9 read: 81 device: 80 cmask: ff wmask: 0 w1cmask:0"),
    ("runstate-unknown", runstate_edit, (b"bogus",), None, Code.DEVICE_VALUE_CHECK, "invalid parameter value: bogus"),
    ("vapic-rom", field_edit, ("kvm-tpr-opt", ("rom_state_paddr",), 0xF0000), None, Code.DEVICE_VALUE_CHECK,
     "error while loading state for instance 0x0 of device 'kvm-tpr-opt'"),
]


def _units(seed, case):
    _, edit, args, kw, _, _ = case
    return edit(seed, *args, **kw) if kw else edit(seed, *args)


def _model(data: bytes, version, **kw) -> list:
    """`version`: a version string or a destination profile."""
    tables = builtin_tables(getattr(version, "version", version))
    report = check_stream(io.BytesIO(data), target=version, tables=tables, **kw)
    return [v for v in report.violations if v.severity is Severity.REJECT]


def test_the_tables_name_their_sources_and_versions():
    rows = value_rules.table()
    assert rows and all(isinstance(r["verified"], bool) and r["src"] for r in rows)
    for version in VERSIONS:
        assert value_rules.sections(version)["timer"].minimum_version_id == 1
    assert {v for r in value_rules.table() if r["table"] == "value" for v in r["versions"]} <= set(VERSIONS)
    assert CATALOGUE[Code.DEVICE_VALUE_CHECK].severity_on(NEWEST) is Severity.REJECT


@pytest.mark.parametrize("version", VERSIONS)
def test_the_capture_itself_breaks_no_value_rule(version):
    seed = _seed(version)
    bad = [v for v in _model(seed.data, version) if v.code in {c[4] for c in CASES}]
    assert bad == []


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("version", VERSIONS)
def test_each_rule_fires_on_an_edited_capture(version, case):
    seed = _seed(version)
    data = FuzzInput(seed, [case[0]], _units(seed, case)).data()
    got = _model(data, version)
    if case[0].startswith("vapic"):
        # this capture's guest RAM went over multifd channels: the ROM bytes vapic_post_load
        # reads are not in the main stream, so the rule is not judged (the differential below
        # loads single-channel captures, where it is)
        report = check_stream(io.BytesIO(data), target=version, tables=builtin_tables(version))
        assert case[4] not in {v.code for v in got}
        assert report.stats["value_rules"]["not_judged"].get("kvm-tpr-opt-rom") == 1
        return
    assert case[4] in {v.code for v in got}, got


def test_hpet_timers_follow_the_destination_profile():
    from conformance.rules.profile import configure

    version = VERSIONS[-1]
    seed = _seed(version)
    data = FuzzInput(seed, ["hpet 4"], field_edit(seed, "hpet", HPET_FIELDS, 4)).data()
    rule = next(r for r in value_rules.rules(version) if r.section == "hpet")
    if rule.kind != "equals-destination":
        pytest.skip("the newest version checks a range, not the destination's own count")
    assert Code.DEVICE_VALUE_CHECK in {v.code for v in _model(data, version)}
    dest = configure(version, globals={rule.params["global"]: "4"})
    assert Code.DEVICE_VALUE_CHECK not in {v.code for v in _model(data, dest)}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resizeable_block_may_grow_up_to_its_maximum(version):
    seed = _seed(version)
    data = FuzzInput(seed, ["grow"], mem_size_edit(seed, "/rom@etc/acpi/tables", 0x200000)).data()
    assert Code.RAM_BLOCK_SIZE_MISMATCH not in {v.code for v in _model(data, version)}  # a real destination loads it


@pytest.mark.parametrize("version", VERSIONS)
def test_a_writable_pci_config_byte_is_no_violation(version):
    seed = _seed(version)
    data = FuzzInput(seed, ["command"], config_edit(seed, "0000:00:00.0/I440FX", 4, 4)).data()  # PCI_COMMAND
    assert Code.PCI_CONFIG_READ_ONLY not in {v.code for v in _model(data, version)}


def test_ram_instance_of_a_live_section_and_its_version():
    row = value_rules.sections(NEWEST)["ram"]
    f = value_rules.judge_other_section(row, "ram", 1, 4)
    assert f.code is Code.UNKNOWN_SECTION and f"{UNKNOWN} 'ram' 1" in f.message
    assert value_rules.judge_other_section(row, "ram", 0, 4) is None


# ------------------------------------------------------------------ the real destinations

@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_differential_real_destination_rejects_what_each_rule_rejects(version, qemu, capture):
    """Each edit, on a fresh capture of the destination's own version: the model's code and
    the real destination's first error line (the text the rule mirrors)."""
    from conformance.qemu.fuzz_target import RealTarget

    seed = decode_seed(capture(version, "pc", "none").path.read_bytes())
    agree, rows = 0, []
    with RealTarget(qemu(version), machine="pc", devices="none", warm=2, trace=False) as real:
        for case in CASES:
            data = FuzzInput(seed, [case[0]], _units(seed, case)).data()
            codes = {v.code for v in _model(data, version)}
            ex = real.run(data)
            ok = ex.verdict == "rejected" and case[5] in ex.stderr and case[4] in codes
            agree += ok
            rows.append((case[0], ex.verdict, ex.first_error, sorted(codes)))
        # and one that loads: a resizeable block grown to its max_length
        data = FuzzInput(seed, ["grow"], mem_size_edit(seed, "/rom@etc/acpi/tables", 0x200000)).data()
        ex = real.run(data)
        rows.append(("grow", ex.verdict, ex.first_error, sorted(v.code for v in _model(data, version))))
        agree += ex.verdict == "accepted" and not rows[-1][3]
        # and instance ids find_se matches by alias: 0xffffffff (alias -1 of an entry
        # registered without one) and the slave PIC's legacy alias, its I/O base
        for name, idstr, iid in LOADS_BY_ALIAS:
            data = FuzzInput(seed, [name], header_edit(seed, idstr, instance_id=iid)).data()
            ex = real.run(data)
            rows.append((name, ex.verdict, ex.first_error, sorted(v.code for v in _model(data, version))))
            agree += ex.verdict == "accepted" and Code.UNKNOWN_SECTION not in rows[-1][3]
    assert agree == len(CASES) + 1 + len(LOADS_BY_ALIAS), json.dumps(rows, indent=1)


LOADS_BY_ALIAS = (("timer-any", "timer", 0xFFFFFFFF), ("pic-alias", "i8259", 0xA0))


@pytest.mark.parametrize("idstr,iid,known", [("timer", 0xFFFFFFFF, True), ("timer", 1, False),
                                             ("i8259", 0x20, True), ("i8259", 0xA0, True),
                                             ("i8259", 0xFFFFFFFF, False), ("i8259", 2, False),
                                             ("i8254", 1, False), ("i8254", 0x40, True), ("fdc", 1, False),
                                             ("0000:00:02.0/e1000", 0xFFFFFFFF, True)])
def test_instance_ids_match_as_find_se_matches(idstr, iid, known):
    row = value_rules.sections(NEWEST).get(idstr)
    f = (value_rules.judge_other_section(row, idstr, iid, row.version_id or 1) if row is not None
         else value_rules.judge_instance(idstr, iid))
    assert (f is None) is known, f


def features_edit(seed, suffix: str, value: int) -> list[Unit]:
    """A virtio-pci body with its guest features (low 32 bits) set to `value`: after the PCI
    state, the MSI-X table, PBA and config vector (sized by the MSI-X capability), status, isr
    and queue_sel (found by hand here, independently of value_rules)."""
    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, DeviceState) and u.record.idstr.endswith(suffix))
    rec = units[i].record
    body = bytes(rec.data)
    cfg, cap, n = body[4:260], body[4 + 0x34], 0
    while cap:
        if cfg[cap] == 0x11:
            n = (int.from_bytes(cfg[cap + 2:cap + 4], "little") & 0x7FF) + 1
            break
        cap = cfg[cap + 1]
    at = 276 + (n * 16 + (n + 7) // 8 + 2 if n else 0) + 4
    units[i] = Unit(dataclasses.replace(rec, data=body[:at] + value.to_bytes(4, "big") + body[at + 4:]), None)
    return units


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_differential_virtio_feature_bits_the_destination_does_not_offer(version, qemu, capture):
    from conformance.qemu.fuzz_target import RealTarget

    seed = decode_seed(capture(version, "pc", "virtio-net+virtio-blk").path.read_bytes())
    assert Code.DEVICE_VALUE_CHECK not in {v.code for v in _model(seed.data, version)}
    net = FuzzInput(seed, ["net"], features_edit(seed, "virtio-net", 0xFFFFFFFF)).data()
    blk = FuzzInput(seed, ["blk"], features_edit(seed, "virtio-blk", 0xFFFFFFFF)).data()
    with RealTarget(qemu(version), machine="pc", devices="virtio-net+virtio-blk", warm=2, trace=False) as real:
        got_net, got_blk = real.run(net), real.run(blk)
    assert got_net.verdict == "rejected" and "Features 0xffffffff unsupported. Allowed features: 0x" in got_net.first_error
    found = [v for v in _model(net, version) if v.code is Code.DEVICE_VALUE_CHECK]
    assert found and got_net.first_error.split(": ", 1)[-1] in found[0].message
    # virtio-blk loads the same edit (its 64-bit features subsection decides): no rule fires
    assert got_blk.verdict == "accepted"
    assert Code.DEVICE_VALUE_CHECK not in {v.code for v in _model(blk, version)}


def test_description_entries_of_the_wrong_json_types_are_ignored_not_an_internal_error():
    """A hostile VMDESCRIPTION (found by the hostile run): device names and vmsd names that are
    objects or lists describe nothing; the PCI bodies are then judged as undescribed."""
    from conformance.rules.value_rules import judge_bodies

    entries = [
        {"name": "0000:00:03.0/e1000", "instance_id": 0, "vmsd_name": {"a": 1}},
        {"name": "0000:00:03.0/e1000", "instance_id": 0, "vmsd_name": ["e1000"]},
        {"name": ["0000:00:03.0/e1000"], "instance_id": 0},
        {"name": "0000:00:03.0/e1000", "instance_id": [0]},
    ]
    for entry in entries:  # one at a time: each alone must be survived
        desc = json.dumps({"devices": [entry]}).encode()
        for version in VERSIONS:
            j = judge_bodies(version, [("0000:00:03.0/e1000", 0, bytes(300), 100)], desc, {}, {})
            assert j.findings == []
