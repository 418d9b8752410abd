"""Fuzzing campaigns: the edits, signatures, the findings store, trace parsing and verdicts
without QEMU; a loader-only campaign; test-sized campaigns against real 7.2 and 10.0."""

from __future__ import annotations

import io
import json
import signal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wireformat.constants import SectionType as T
from wireformat.mainstream import build_record
from wireformat.reader import StreamReader
from wireformat.records import (
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    RamBlockInfo,
    RamRecord,
    SectionFooter,
    SectionHeader,
    VmDescription,
)

from conformance.qemu.fuzz_target import parse_trace, verdict_of
from conformance.tools.fuzz.campaign import Campaign
from conformance.tools.fuzz.loader import LoaderTarget
from conformance.tools.fuzz.signature import mask, signature
from conformance.tools.fuzz.store import FindingStore
from strategies.fuzz import EDITS, decode_seed, fuzz_inputs

TIMER_DESC = {"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2,
              "fields": [{"name": "cpu_ticks_offset", "type": "int64", "size": 8},
                         {"name": "unused", "type": "unused_buffer", "size": 8},
                         {"name": "cpu_clock_offset", "type": "int64", "size": 8}]}


def small_seed_bytes() -> bytes:
    """A stream as a 10.0 source writes it: a RAM section of two pages and the timer."""
    blocks = [RamBlockInfo(name="pc.ram", used_length=2 * 4096)]
    body = (5).to_bytes(8, "big") + bytes(8) + (7).to_bytes(8, "big")
    recs = [FileHeader(magic=0x5145564D, version=3), Configuration(machine_type="pc-i440fx-10.0"),
            SectionHeader(section_type=T.QEMU_VM_SECTION_START, section_id=1, idstr="ram", instance_id=0, version_id=4),
            RamRecord(addr=2 * 4096, flags=0x4, blocks=blocks), RamRecord(addr=0, flags=0x10), SectionFooter(section_id=1),
            SectionHeader(section_type=T.QEMU_VM_SECTION_END, section_id=1),
            RamRecord(addr=0, flags=0x2, block="pc.ram", fill=0), RamRecord(addr=4096, flags=0x22, fill=0),
            RamRecord(addr=0, flags=0x10), SectionFooter(section_id=1),
            SectionHeader(section_type=T.QEMU_VM_SECTION_FULL, section_id=0, idstr="timer", instance_id=0, version_id=2),
            DeviceState(section_id=0, idstr="timer", data=body), SectionFooter(section_id=0), Eof(),
            VmDescription(json=json.dumps({"page_size": 4096, "devices": [TIMER_DESC]}).encode())]
    return b"".join(build_record(r, page_size=4096) for r in recs)


SEED = decode_seed(small_seed_bytes())


def test_seed_units_rebuild_the_seed_byte_for_byte():
    assert b"".join(u.bytes(4096) for u in SEED.units) == SEED.data
    assert len(SEED.sections()) == 3


def _apply(edit: str, data: st.DataObject):
    from strategies.fuzz import State

    s = State(SEED, list(SEED.units))
    return EDITS[edit](data.draw, s), s


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_instance_id_edit_is_on_the_wire(data):
    what, s = _apply("instance-id", data)
    heads = [r for r in StreamReader(io.BytesIO(b"".join(u.bytes(4096) for u in s.units)))
             if isinstance(r, SectionHeader) and r.is_full]
    ids = {(h.idstr, h.instance_id) for h in heads}
    assert what.startswith("instance id of")
    new = int(what.rsplit("-> ", 1)[1])
    assert any(i == new for _, i in ids)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_device_field_edit_changes_only_that_field(data):
    what, s = _apply("device-field", data)
    assert what is not None  # the timer's int64 fields can always be edited
    body = next(u.record for u in s.units if isinstance(u.record, DeviceState))
    from wireformat.vmstate import decode_body

    fields = {f.name: f.value for f in decode_body(TIMER_DESC, body.data).fields}
    name, value = what.split(" = ")[0].split(".", 1), int(what.split(" = ")[1].split()[0], 16)
    assert fields[name[1]] == value
    assert len(body.data) == 24  # same layout, same size


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_drop_section_removes_exactly_one_section(data):
    what, s = _apply("drop-section", data)
    assert what.startswith("dropped section")
    assert len([u for u in s.units if isinstance(u.record, SectionHeader)]) == 2


@given(fuzz_inputs(SEED))
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_input_is_named_and_built(fi):
    data = fi.data()
    assert isinstance(data, bytes)
    assert all(e.split(":")[0] in EDITS for e in fi.edits)
    if fi.edits and data != SEED.data:  # a change the edits name is visible in the decoded diff
        assert fi.changed() or len(fi.units) != len(SEED.units) or any(
            "swapped" in e or "duplicated" in e or "dropped" in e or "cut" in e for e in fi.edits)


def test_signature_masks_numbers_and_names():
    a = signature("model-disagreement", "real rejected, loader accepted", None,
                  "Unknown savevm section or instance 'timer' 1. Make sure ...")
    b = signature("model-disagreement", "real rejected, loader accepted", None,
                  "Unknown savevm section or instance 'apic' 3. Make sure ...")
    assert a == b
    assert mask("Illegal RAM offset 7fffffff000") != mask("Unknown combination of migration flags: 0x2a")
    assert signature("crash", "crashed", -11, "x") != signature("crash", "crashed", -6, "x")


def test_store_keeps_the_smaller_reproducer_atomically(tmp_path):
    store = FindingStore(tmp_path)
    store.save("s", b"x" * 100, {"mutation": ["a", "b"]})
    store.save("s", b"x" * 10, {"mutation": ["a", "b", "c"]})  # more edits: not kept
    meta = store.signatures()["s"]
    assert meta["stream_size"] == 100
    store.save("s", b"x" * 50, {"mutation": ["a"]})
    meta = store.signatures()["s"]
    assert meta["stream_size"] == 50 and (tmp_path / meta["stream"]).read_bytes() == b"x" * 50
    assert not list(tmp_path.glob(".*tmp*"))


def test_trace_lines_become_coverage_tuples():
    text = ("vmstate_load_state_field timer:cpu_ticks_offset exists=1\n"
            "vmstate_load_state_end timer end/0\n"
            "qemu_loadvm_state_section_startfull 0(timer) 0 2\n"
            "loadvm_process_command com=SWITCHOVER_START len=0\n"
            "vmstate_subsection_load_bad timer: (lookup)/\n")
    cov = parse_trace(text)
    assert ("vmstate_load_state_field", "timer", "cpu_ticks_offset", "exists=1") in cov
    assert ("vmstate_load_state_end", "timer", "", "end/N") in cov
    assert ("qemu_loadvm_state_section_startfull", "timer", "", "") in cov
    assert ("loadvm_process_command", "", "", "com=SWITCHOVER_START") in cov
    assert len(cov) == 5


@pytest.mark.parametrize("completed,hung,code,stderr,want", [
    (True, False, None, "", "accepted"),
    (False, False, 1, "qemu-system-x86_64: load of migration failed: Invalid argument\n", "rejected"),
    (False, True, None, "", "hung"),
    (False, False, -signal.SIGSEGV, "", "crashed"),
    (False, False, -signal.SIGABRT, "qemu-system-x86_64: ../x.c:10: f: Assertion `a' failed.\n", "crashed"),
    (False, False, -signal.SIGTRAP, "qemu-system-x86_64: GLib: gmem.c:169: failed to allocate 4294967295 bytes\n",
     "out-of-memory"),
    (False, False, 1, "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\n", "out-of-memory"),
])
def test_verdicts(completed, hung, code, stderr, want):
    assert verdict_of(completed, hung, code, stderr)[0] == want


def test_loader_judges_the_seed_and_a_broken_copy():
    t = LoaderTarget("10.0", machine="pc-i440fx-10.0")
    try:
        assert t.run(SEED.data) == ("accepted", None)
        verdict, first = t.run(b"QEVX" + SEED.data[4:])
        assert verdict == "rejected" and first.startswith("bad-magic")
    finally:
        t.close()


def test_loader_campaign_runs_saves_and_resumes(tmp_path):
    from conformance.tools.fuzz.campaign import directory_database

    def campaign():
        return Campaign(seed=SEED, seed_name="seed.bin", store=FindingStore(tmp_path), version="10.0",
                        machine="pc", devices="none", loader=LoaderTarget("10.0", machine="pc-i440fx-10.0"),
                        database=directory_database(tmp_path), key="test")

    first = campaign().run(3.0)
    assert first.execs > 5
    assert first.verdicts["loader:accepted"] + first.verdicts["loader:rejected"] == first.execs
    assert first.verdicts["loader:rejected"] > 0  # the edits do break streams
    assert any((tmp_path / "hypothesis-db").rglob("*"))  # something to resume from
    assert campaign().run(1.0).execs > 0


def test_a_stop_request_ends_the_campaign_before_the_next_execution(tmp_path):
    c = Campaign(seed=SEED, seed_name="seed.bin", store=FindingStore(tmp_path), version="10.0", machine="pc",
                 devices="none", loader=LoaderTarget("10.0"), database=None, key="stop")
    c.stop_requested = True
    assert c.run(30.0).execs == 0


# ------------------------------------------------------------------ real QEMU

@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_campaign_against_a_real_destination(version, qemu, tmp_path):
    from conformance.qemu import capture_stream, process
    from conformance.qemu.fuzz_target import RealTarget

    binary = qemu(version)
    seed = decode_seed(capture_stream(binary, tmp_path / "seed.bin", machine="pc", devices="none").path.read_bytes())
    machine = next(u.record.machine_type for u in seed.units if isinstance(u.record, Configuration))
    with RealTarget(binary, machine="pc", devices="none", warm=2) as real:
        c = Campaign(seed=seed, seed_name="seed.bin", store=FindingStore(tmp_path / "findings"), version=version,
                     machine="pc", devices="none", real=real, loader=LoaderTarget(version, machine=machine),
                     database=None, key="real")
        # the seed itself first: both targets accept it and the trace says how far the load got
        from strategies.fuzz import FuzzInput

        sig, meta = c.execute(FuzzInput(seed, [], list(seed.units)))
        assert sig is None and meta["real"]["verdict"] == "accepted" and meta["loader"]["verdict"] == "accepted"
        assert ("vmstate_load_state", "timer", "", "") in c.stats.events
        stats = c.run(8.0)
    assert stats.execs >= 3
    assert stats.verdicts["real:rejected"] + stats.verdicts["real:accepted"] > 0
    assert not [p for p in process._live if p.alive()]  # every destination of the pool is gone


@pytest.mark.qemu
def test_packaged_length_allocates_what_the_wire_says(qemu, tmp_path):
    """Found by a campaign: a destination allocates the buffer a MIG_CMD_PACKAGED announces
    (up to 4 GiB) before reading a byte of it; under an address-space limit GLib aborts."""
    from strategies.fuzz import FuzzInput, Unit, _Raw, _command
    from wireformat.constants import MigCmd
    from conformance.qemu import capture_stream
    from conformance.qemu.fuzz_target import RealTarget

    for version in ("7.2", "10.0"):
        want, text = "out-of-memory", "failed to allocate 4294967295 bytes"
        binary = qemu(version)
        seed = decode_seed(capture_stream(binary, tmp_path / f"{version}.bin", machine="pc").path.read_bytes())
        raw = _command(MigCmd.MIG_CMD_PACKAGED, (0xFFFFFFFF).to_bytes(4, "big"))
        fi = FuzzInput(seed, ["packaged"], seed.units[:2] + [Unit(_Raw("packaged"), raw)] + seed.units[2:])
        with RealTarget(binary, machine="pc", warm=1, address_space_mb=1024, trace=False) as t:
            ex = t.run(fi.data())
        assert ex.verdict == want and text in ex.first_error, (version, ex)


def _ide_identify_set(seed):
    """The seed with the first IDE drive's identify_set turned on: a 7.2 destination then reads
    512 bytes of identify data the source never wrote; the 7.2 loader does not model that test."""
    import dataclasses

    from strategies.fuzz import FuzzInput, Unit
    from tests.test_cross_version import _identify_set

    units = list(seed.units)
    i = next(k for k, u in enumerate(units) if isinstance(u.record, DeviceState) and u.record.idstr.endswith("/ide"))
    rec = units[i].record
    off, n = _identify_set(next(d for d in seed.devices if d["name"] == rec.idstr))(rec.data)
    data = bytearray(rec.data)
    data[off:off + n] = (1).to_bytes(n, "big")
    units[i] = Unit(dataclasses.replace(rec, data=bytes(data)), None)
    return FuzzInput(seed, ["by hand: ide identify_set 1"], units)


@pytest.mark.qemu
def test_a_saved_finding_replays(qemu, tmp_path, capsys):
    from conformance.cli import main
    from conformance.qemu import capture_stream
    from conformance.qemu.fuzz_target import RealTarget

    binary = qemu("7.2")
    seed = decode_seed(capture_stream(binary, tmp_path / "seed.bin", machine="pc").path.read_bytes())
    machine = next(u.record.machine_type for u in seed.units if isinstance(u.record, Configuration))
    with RealTarget(binary, machine="pc", devices="none", warm=1) as real:
        c = Campaign(seed=seed, seed_name="seed.bin", store=FindingStore(tmp_path / "f"), version="7.2",
                     machine="pc", devices="none", real=real, loader=LoaderTarget("7.2", machine=machine),
                     database=None, key="replay")
        fi = _ide_identify_set(seed)  # (7.2's IDE layout comes from its streams, without field tests)
        sig, meta = c.execute(fi)
        assert sig is not None and sig.startswith("model-disagreement")  # the loader misses it (see report)
        path = c._save(sig, fi, meta)
    saved = json.loads(path.read_text())
    assert saved["reproduce"].endswith(f"exec:cat {path.with_suffix('.bin').resolve()}'")
    assert main(["fuzz", "--replay", str(path)]) == 1
    out = capsys.readouterr().out
    assert "reproduced" in out and "Missing section footer for 0000:00:01.1/ide" in out


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_acpi_table_size_beyond_its_maximum_aborts_the_destination(version, qemu, tmp_path):
    """Found by a campaign (one bit of the fw_cfg body): fw_cfg/acpi_mr's table_mr_size above
    the region's maximum makes the destination abort in qemu_ram_resize (&error_abort) instead
    of failing the load."""
    import dataclasses

    from wireformat import vmstate
    from strategies.fuzz import FuzzInput, Unit
    from conformance.qemu import capture_stream
    from conformance.qemu.fuzz_target import RealTarget

    binary = qemu(version)
    seed = decode_seed(capture_stream(binary, tmp_path / "seed.bin", machine="pc").path.read_bytes())
    i = next(k for k, u in enumerate(seed.units) if isinstance(u.record, DeviceState) and u.record.idstr == "fw_cfg")
    rec, desc = seed.units[i].record, next(d for d in seed.devices if d["name"] == "fw_cfg")
    body = vmstate.decode_body(desc, rec.data)
    subs = []
    for sub in body.subsections:
        if sub.name == "fw_cfg/acpi_mr":
            sub = dataclasses.replace(sub, fields=tuple(
                dataclasses.replace(f, value=f.value | 0x1000000) if f.name == "table_mr_size" else f
                for f in sub.fields))
        subs.append(sub)
    data = vmstate.encode_body(desc, dataclasses.replace(body, subsections=tuple(subs)))
    assert data != rec.data
    units = list(seed.units)
    units[i] = Unit(dataclasses.replace(rec, data=data), None)
    with RealTarget(binary, machine="pc", warm=1, trace=False) as t:
        ex = t.run(FuzzInput(seed, ["acpi"], units).data())
    assert ex.verdict == "crashed" and ex.exit_code == -signal.SIGABRT, ex
    assert "Size too large: /rom@etc/acpi/tables" in ex.stderr


def test_a_sanitizer_notice_is_not_the_first_error():
    """A sanitized build prints a notice at start; the error is QEMU's line after it, and an
    AddressSanitizer report is a crash."""
    notice = "==4242==WARNING: ASan doesn't fully support makecontext/swapcontext functions\n"
    assert verdict_of(False, False, 1, notice + "qemu-system-x86_64: load of migration failed: Invalid argument\n") == \
        ("rejected", "load of migration failed: Invalid argument")
    verdict, first = verdict_of(False, False, 1, notice + "==4242==ERROR: AddressSanitizer: heap-buffer-overflow\n")
    assert verdict == "crashed" and "AddressSanitizer" in first


@pytest.mark.qemu
@pytest.mark.slow
def test_a_campaign_seeded_by_a_running_guest(qemu, tmp_path, capsys):
    """--guest devices: the seed is migrated from our running boot program (it programmed the
    serial port, the floppy controller, ...), and the destinations start with the same guest,
    so unedited parts load and a finding replays with the guest's own command line."""
    from conformance.cli import main
    from conformance.versions import NEWEST

    qemu(NEWEST)
    code = main(["fuzz", "--qemu", NEWEST, "--guest", "devices", "--time", "8s", "--jobs", "1",
                 "--findings", str(tmp_path), "--progress-every", "100"])
    out = capsys.readouterr().out
    seed = next((tmp_path / "seeds").glob("seed-*-devices.bin"))
    idstrs = {u.record.idstr for u in decode_seed(seed.read_bytes()).units
              if isinstance(u.record, SectionHeader) and u.record.idstr}
    assert "serial" in idstrs and "fdc" in idstrs, idstrs
    assert code in (0, 1) and "real:accepted=" in out, out  # the real destination loads some inputs
    for finding in tmp_path.glob("finding-*.json"):
        assert json.loads(finding.read_text())["guest"] == "devices"


@given(st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_edits_of_edited_headers_stay_on_the_wire(data):
    """Header numbers at the top of their u32 range, edited again, still build (a reid of
    section id 0xffffffff once asked construct for 2**32)."""
    import dataclasses as dc

    units = list(SEED.units)
    for k, u in enumerate(units):
        if isinstance(u.record, SectionHeader) and u.record.idstr:
            units[k] = type(u)(dc.replace(u.record, section_id=0xFFFFFFFF, version_id=0, instance_id=0xFFFFFFFF), None)
    top = dc.replace(SEED, units=units)
    fi = data.draw(fuzz_inputs(top, max_edits=3, names=("reid-section", "section-version", "instance-id")))
    assert fi.data()
