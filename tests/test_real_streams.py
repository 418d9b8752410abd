"""Real streams from QEMU 7.2 and 10.0: every capture decodes, re-encodes byte for byte and
conforms; mutated copies are judged as the real destination judges them, at the same place."""

from __future__ import annotations

import io
import json
import re

import pytest

from conformance.check.pipeline import check_stream, trailer_body_sizer, vmstate_body_check
from conformance.qemu import dump_vmstate, load_stream
from conformance.qemu.devices import make_ram_file
from conformance.rules.tables import DestinationTables, builtin_tables
from strategies.mutations import MUTATIONS
from wireformat import vmstate
from wireformat.mainstream import build_record
from wireformat.reader import StreamReader
from wireformat.records import DeviceState, RamRecord, RamRun

pytestmark = pytest.mark.qemu

DEVICE_SETS = ["none", "virtio-net+virtio-blk", "e1000+usb"]
# old and 7.2 i440fx and q35, and each version's newest; 2.3 is the last without
# configuration and footers (only 7.2 still has it)
MACHINES = {
    "7.2": ["pc-i440fx-2.3", "pc-i440fx-2.12", "pc-q35-2.12", "pc-i440fx-7.2", "pc-q35-7.2"],
    "10.0": ["pc-i440fx-2.12", "pc-q35-2.12", "pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-10.0", "pc-q35-10.0"],
}
CASES = [(v, m, d) for v, ms in MACHINES.items() for m in ms for d in DEVICE_SETS]


def _check(path, target, **kw):
    """Judged as the CLI judges: the target version's shipped tables unless others are given."""
    kw.setdefault("tables", builtin_tables(target))
    with open(path, "rb") as f:
        return check_stream(f, target=target, body_sizer=trailer_body_sizer(path), body_checker=vmstate_body_check, **kw)


@pytest.mark.parametrize("version, machine, devices", CASES, ids=[f"{v}/{m}/{d}" for v, m, d in CASES])
def test_capture_decodes_reencodes_and_conforms(capture, version, machine, devices):
    cap = capture(version, machine, devices)
    data = cap.path.read_bytes()
    out = bytearray()
    kinds = set()
    reader = StreamReader(io.BytesIO(data), body_sizer=trailer_body_sizer(cap.path))
    for rec in reader:
        kinds.add(type(rec).__name__)
        out += build_record(rec, **reader.ram_params)
        if isinstance(rec, DeviceState):
            assert rec.framed_by == "description"  # every FULL body as long as its VMSD says
    assert bytes(out) == data
    assert {"FileHeader", "SectionHeader", "RamRecord", "DeviceState", "Eof", "VmDescription"} <= kinds
    legacy = machine == "pc-i440fx-2.3"
    assert ("Configuration" in kinds) != legacy and ("SectionFooter" in kinds) != legacy

    rep = _check(cap.path, version, machine=machine)
    assert rep.violations == [], [v.one_line() for v in rep.violations]
    assert rep.stats["ram_blocks"]["pc.ram"]["used_length"] == 64 << 20


@pytest.mark.parametrize("machine", ["pc-i440fx-7.2", "pc-q35-7.2"])
def test_streams_of_shared_machine_types_cross_versions(capture, qemu, machine):
    """Both versions load each other's streams on a shared machine type; the model agrees."""
    for src, dst in (("7.2", "10.0"), ("10.0", "7.2")):
        cap = capture(src, machine, "virtio-net+virtio-blk")
        assert _check(cap.path, dst, machine=machine).violations == []
        verdict = load_stream(qemu(dst), cap.path, machine=machine, devices="virtio-net+virtio-blk")
        assert verdict.completed, verdict.error_lines


def test_newest_machine_of_10_0_is_judged_unloadable_by_7_2(capture, qemu):
    cap = capture("10.0", "pc-i440fx-10.0", "none")
    codes = [(v.code, v.severity.value) for v in _check(cap.path, "7.2").violations]
    # 7.2 has no such machine type, and SWITCHOVER_START (send-switchover-start is on for 10.0 types)
    assert codes == [("machine-type-unsupported", "reject"), ("unknown-command", "reject")]
    verdict = load_stream(qemu("7.2"), cap.path, machine="pc-i440fx-10.0")
    assert not verdict.completed and any("unsupported machine type" in line for line in verdict.error_lines)


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_modelled_machine_types_are_the_binarys(qemu, version):
    from conformance.qemu import machine_types
    from conformance.rules.profile import PROFILES

    real = {m for m in machine_types(qemu(version)) if re.fullmatch(r"pc-(i440fx|q35)-[\d.]+", m)}
    assert real == PROFILES[version].machine_types


def test_random_ram_pages_carry_the_guest_memory(capture, tmp_path_factory, qemu):
    """With RAM backed by a file of random bytes, every page of guest RAM travels as a PAGE
    record whose payload is the file's page at that offset. (The RAMBlock is then named
    after the memory backend, `ram0`, not `pc.ram`.)"""
    mem_mb = 16
    ram_file = make_ram_file(tmp_path_factory.mktemp("ram") / "ram.img", mem_mb, seed=7)
    expected = ram_file.read_bytes()
    for version in ("7.2", "10.0"):
        cap = capture(version, "pc-i440fx-7.2", "none", mem_mb=mem_mb, ram_file=ram_file)
        seen = set()
        block = None
        for rec in StreamReader(open(cap.path, "rb")):
            recs = rec.records() if isinstance(rec, RamRun) else [rec]
            for r in recs:
                if not isinstance(r, RamRecord) or r.ram_flag not in (0x02, 0x08):
                    continue
                block = r.block or block
                if block == "ram0":
                    assert r.ram_flag == 0x08, "random pages are never zero pages"
                    assert bytes(r.data) == expected[r.addr : r.addr + 4096]
                    seen.add(r.addr)
        assert len(seen) == mem_mb * 256
        assert _check(cap.path, version).violations == []


@pytest.fixture(scope="module")
def tables(qemu, tmp_path_factory, capture):
    """Each version's own tables: a reference stream and its -dump-vmstate."""
    out = {}
    for version in ("7.2", "10.0"):
        d = tmp_path_factory.mktemp(f"dump-{version}") / "dump.json"
        dump_vmstate(qemu(version), "pc-i440fx-7.2", d)
        ref = capture(version, "pc-i440fx-7.2", "e1000+usb")
        with open(ref.path, "rb") as f:
            out[version] = DestinationTables.from_reference_stream(f, vmstate.parse_dump_vmstate(d.read_text()))
    return out


def test_destination_tables_accept_the_other_versions_stream(capture, tables):
    for src, dst in (("7.2", "10.0"), ("10.0", "7.2"), ("7.2", "7.2"), ("10.0", "10.0")):
        cap = capture(src, "pc-i440fx-7.2", "e1000+usb")
        rep = _check(cap.path, dst, tables=tables[dst])
        assert rep.violations == [], [v.one_line() for v in rep.violations]


_SECTION_ERR = re.compile(r"error while loading state section id (\d+)\((.+)\)")
_DEVICE_ERR = re.compile(r"error while loading state for instance 0x([0-9a-f]+) of device '(.+)'")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["reference", "builtin"])
@pytest.mark.parametrize("version", ["7.2", "10.0"])
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutations_are_judged_as_the_real_destination_judges_them(capture, qemu, tables, tmp_path, version, mutation, which):
    cap = capture(version, "pc-i440fx-7.2", "e1000+usb")
    mutated = mutation.apply(cap.path.read_bytes())
    if mutated is None:
        pytest.skip(f"a {version} stream has no place for {mutation.name}")
    path = tmp_path / "mutated.mig"
    path.write_bytes(mutated)

    rep = _check(path, version, tables=tables[version] if which == "reference" else builtin_tables(version))
    rejects = [v for v in rep.violations if v.severity.value == "reject"]
    real = load_stream(qemu(version), path, machine="pc-i440fx-7.2", devices="e1000+usb", timeout=30)
    assert not real.hung
    # the verdicts agree
    assert real.completed == (not rejects), (real.error_lines, [v.one_line() for v in rep.violations])
    if version in mutation.conforming_for:
        assert rep.violations == [] and real.completed
        return
    assert rep.violations and rep.violations[0].code == mutation.code
    if real.completed:
        assert version in mutation.accepted_by
        return
    first = rejects[0]
    # the reason agrees: the destination's text is the one our violation carries
    if mutation.qemu_text:
        assert any(mutation.qemu_text in line for line in real.error_lines), real.error_lines
        assert mutation.qemu_text in first.message or mutation.code in ("unknown-section-type",)
    # and the place: the section the destination names is the one we name
    for line in real.error_lines:
        m = _SECTION_ERR.search(line)
        if m:
            assert first.section == f"{m[2]} (id {m[1]})", (line, first.one_line())


@pytest.mark.slow
def test_legacy_stream_loads_and_conforms(capture, qemu):
    cap = capture("7.2", "pc-i440fx-2.3", "none")
    assert _check(cap.path, "7.2", machine="pc-i440fx-2.3").violations == []
    assert load_stream(qemu("7.2"), cap.path, machine="pc-i440fx-2.3").completed
    # the same stream to a destination of a newer machine type is rejected, and we say so
    rep = _check(cap.path, "7.2", machine="pc-i440fx-2.4")
    assert rep.violations[0].code == "configuration-missing"


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_dump_decodes_device_fields_from_the_streams_description(capture, version):
    import subprocess
    import sys

    cap = capture(version, "pc-i440fx-7.2", "none")
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "dump", str(cap.path), "--fields", "--json"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    full = [s for s in doc["sections"] if s["type"] == "SECTION_FULL"]
    assert full and all(s["decoded"] == "yes" for s in full)
    cpu = next(s for s in full if s["idstr"] == "cpu")
    assert cpu["fields"]["env.eip"] == 0xFFF0  # a stopped, never-run x86 CPU sits at the reset vector
    glob = next(s for s in full if s["idstr"] == "globalstate")
    assert bytes.fromhex(glob["fields"]["runstate"].split("…")[0]).rstrip(b"\0") == b"prelaunch"


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_memory_size_mismatch_is_judged_as_the_destination_judges_it(capture, qemu, version):
    """A 64 MiB guest's stream to a destination started with -m 128: QEMU refuses pc.ram."""
    stream = capture(version, "pc-i440fx-7.2", "none", mem_mb=64)
    ref = capture(version, "pc-i440fx-7.2", "none", mem_mb=128)
    with open(ref.path, "rb") as f:
        tables = DestinationTables.from_reference_stream(f)
    rep = _check(stream.path, version, tables=tables)
    assert [(v.code, v.message) for v in rep.violations] == [
        ("ram-block-size-mismatch", "Size mismatch: pc.ram: 0x4000000 != 0x8000000: Invalid argument")]
    real = load_stream(qemu(version), stream.path, machine="pc-i440fx-7.2", mem_mb=128)
    assert not real.completed
    assert any("Size mismatch: pc.ram: 0x4000000 != 0x8000000" in line for line in real.error_lines), real.error_lines


def test_compressed_pages_of_7_2(capture, qemu, tmp_path_factory):
    """7.2's `compress` capability: COMPRESS_PAGE records decode and conform for 7.2 (which
    loads them), and are rejected for 10.0, which no longer knows the flag."""
    ram = make_ram_file(tmp_path_factory.mktemp("cram") / "ram.img", 8, seed=2)
    cap = capture("7.2", "pc-i440fx-7.2", "none", mem_mb=8, ram_file=ram, capabilities={"compress": True})
    rep = _check(cap.path, "7.2")
    assert rep.violations == [] and rep.stats["ram_blocks"]["ram0"]["compressed"] > 2000
    assert _check(cap.path, "10.0").violations[0].code == "ram-compressed-page"
    dst = make_ram_file(tmp_path_factory.mktemp("cram0") / "ram.img", 8, content=b"")
    assert load_stream(qemu("7.2"), cap.path, machine="pc-i440fx-7.2", mem_mb=8, ram_file=dst,
                       capabilities={"compress": True}).completed


@pytest.mark.slow
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_xbzrle_rounds_of_a_running_guest(qemu, tmp_path, version):
    """A guest that keeps dirtying pages, with xbzrle: later rounds carry XBZRLE records (10.0
    keeps them; both check clean) and both sides end with the same RAM."""
    from conformance.qemu.devices import dirtier_args, make_dirtier_disk
    from conformance.qemu.tcp_migration import capture_channels

    b = qemu(version)
    cap = capture_channels(b, b, machine="pc-i440fx-7.2", mem_mb=16, capabilities={"xbzrle": True},
                           parameters={"max-bandwidth": 1 << 20, "downtime-limit": 1},
                           extra_args=dirtier_args(make_dirtier_disk(tmp_path / "boot.img")), running=True, stop_after=1.5)
    assert cap.source_ram == cap.destination_ram
    rep = check_stream(io.BytesIO(cap.main), target=version)
    assert rep.violations == [], [v.one_line() for v in rep.violations]
    if version == "10.0":
        assert rep.stats["ram_blocks"]["pc.ram"].get("xbzrle", 0) > 100
