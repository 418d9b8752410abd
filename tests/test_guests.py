"""Guests of ours (the devices boot program), the after-migration checks of a matrix cell
(RAM compared, heartbeat on the resumed destination) and one-sided settings."""

from __future__ import annotations

import json

import pytest

from conformance.check import manifest as mf
from conformance.check.dump import dump_stream
from conformance.check.pipeline import trailer_body_sizer
from conformance.qemu import capture_stream, guests
from conformance.qemu.guests import DEVICES_BOOT_SECTOR, Asm, Guest
from conformance.tools.matrix.cell import load_into, predict_cell, run_cell
from conformance.tools.matrix.grid import CellSpec, MatrixError, build_grid
from conformance.tools.matrix.store import CaptureStore
from conformance.tools.sides import SidesError, axis_text, from_options, parse_axis

# ---------------------------------------------------------------- the assembler and the boot sector


def test_rel8_jumps_resolve_backwards_and_forwards():
    a = Asm().label("top").emit(b"\x90\x90\x90").jump("jnz", "top").jump("jmp", "end").emit(b"\x90").label("end")
    # jnz at 3: back to 0 from 5 is -5 (0xfb); jmp at 5: over one nop is +1
    assert a.assemble() == b"\x90\x90\x90\x75\xfb\xeb\x01\x90"


def test_a_jump_out_of_rel8_range_is_refused():
    a = Asm().label("top").emit(bytes(200)).jump("jmp", "top")
    with pytest.raises(ValueError, match="rel8"):
        a.assemble()


def test_boot_sector_fits_and_writes_through_the_ports_it_names():
    assert len(DEVICES_BOOT_SECTOR) <= 510
    # Intel encodings: mov al, imm8 = B0 ib; out imm8, al = E6 ib; mov dx, imm16 = BA iw; out dx, al = EE
    assert b"\xb0\x11\xe6\x20" in DEVICES_BOOT_SECTOR  # PIC ICW1
    assert b"\xba\xd0\x04\xb0\x28\xee" in DEVICES_BOOT_SECTOR  # ELCR 0x4d0 := 0x28
    assert b"\x66\xff\x06\x00\x50" in DEVICES_BOOT_SECTOR  # inc dword [0x5000]: the heartbeat


def test_floppy_image_is_bootable(tmp_path):
    g = guests.guest("devices", tmp_path)
    img = (tmp_path / "guest-devices.img").read_bytes()
    assert len(img) == 1474560 and img[510:512] == b"\x55\xaa" and img.startswith(DEVICES_BOOT_SECTOR)
    assert "if=floppy" in " ".join(g.args) and g.runs and g.heartbeat == (0x5000, 4)
    with pytest.raises(ValueError, match="unknown guest"):
        guests.guest("no-such", tmp_path)


# ---------------------------------------------------------------- one-sided settings


def test_axis_named_and_spelled_out():
    s = parse_axis("src-no-section-footer")
    assert s.source_globals == ("migration.send-section-footer=off",) and not s.dest_globals
    s = parse_axis("dst-cap:xbzrle+src-param:downtime-limit=100")
    assert s.dest_capabilities == {"xbzrle": True} and s.source_parameters == {"downtime-limit": 100}
    assert parse_axis(axis_text(s)) == s and not s.only_globals
    assert not parse_axis("none")


@pytest.mark.parametrize("bad, msg", [("src:x", "KIND:SETTING"), ("dst-cap:no-such-cap", "no-such-cap"),
                                      ("src-global:a/b.c=d", "one-sided set .src-global:a/b.c=d.: --source-global"), ("dst-param:max-bandwidth=fast", "max-bandwidth")])
def test_bad_one_sided_sets_are_one_line_errors(bad, msg):
    with pytest.raises(SidesError, match=msg) as e:
        parse_axis(bad)
    assert "\n" not in str(e.value)


def test_manifest_records_one_sided_settings_and_validates_them():
    a = mf.Arguments(machine="pc-i440fx-7.2", devices="none", mem_mb=64, guest="devices",
                     **from_options(dest_globals=["migration.send-configuration=off"],
                                    source_capabilities=["xbzrle"]).manifest_fields())
    m = mf.Manifest(main="main.bin", format=mf.FORMAT, source=mf.Side("7.2.22", "7.2"), arguments=a)
    doc = mf.to_json(m)
    assert mf.parse(doc) == m
    assert a.destination_settings() == ({}, {}, ("migration.send-configuration=off",))
    doc["arguments"]["dest_globals"] = ["migration.send-configuration=off,x=y"]
    with pytest.raises(mf.ManifestError, match="dest_globals"):
        mf.parse(doc)


def test_grid_axes_and_shared_captures():
    g = build_grid(["7.2", "10.0"], ["pc-i440fx-7.2"], ["none"], ["none"], ["paused", "devices"],
                   ["none", "dst-no-section-footer"])
    cells = g.cells()
    assert len(cells) == 4 * 2 * 2 and len(g.rows) == 4
    # a destination-only setting does not change the source: its capture is shared
    dst_only = {c.capture_key for c in cells if c.sided == "dst-no-section-footer"}
    plain = {c.capture_key for c in cells if c.sided == "none"}
    assert dst_only == plain
    with pytest.raises(MatrixError, match="unknown guest"):
        build_grid(["7.2"], ["pc-i440fx-7.2"], ["none"], ["none"], ["windows"])


def test_one_sided_capabilities_are_not_modelled_and_globals_are():
    p = predict_cell(CellSpec("7.2", "10.0", "pc-i440fx-7.2", "none", "none", "paused", "dst-xbzrle"))
    assert p.compatible is None and "not modelled" in p.reasons[0]
    p = predict_cell(CellSpec("7.2", "10.0", "pc-i440fx-7.2", "none", "none", "paused", "src-no-section-footer"))
    assert p.compatible is False and any("send-section-footer" in r for r in p.reasons)


# ---------------------------------------------------------------- real QEMU


@pytest.fixture(scope="module")
def store(qemu, tmp_path_factory) -> CaptureStore:
    return CaptureStore(tmp_path_factory.mktemp("guest-captures"), {v: qemu(v) for v in ("7.2", "10.0")},
                        mem_mb=32, timeout=60.0)


def _devices(path) -> dict:
    with open(path, "rb") as f:
        d = dump_stream(f, name=str(path), fields=True, body_sizer=trailer_body_sizer(path))
    return {(s["idstr"], s.get("instance_id")): s["fields"] for s in d["sections"] if "fields" in s}


@pytest.mark.qemu
def test_devices_guest_programs_the_devices(store):
    paused = _devices(store.get(("7.2", "pc-i440fx-7.2", "none", "none", "paused", "")).path)
    ran = _devices(store.get(("7.2", "pc-i440fx-7.2", "none", "none", "devices", "")).path)
    assert paused[("i8259", 0)]["irq_base"] == 0 and paused[("i8259", 0)]["elcr"] == 0
    # ICW2 0x20/0x28, ELCR 0x28/0x8e
    assert (ran[("i8259", 0)]["irq_base"], ran[("i8259", 1)]["irq_base"]) == (0x20, 0x28)
    assert (ran[("i8259", 0)]["elcr"], ran[("i8259", 1)]["elcr"]) == (0x28, 0x8E)
    ch0 = ran[("i8254", 0)]["channels"][0]
    assert (ch0["count"], ch0["mode"]) == (0x2E9C, 2) and paused[("i8254", 0)]["channels"][0]["count"] == 65536
    rtc = ran[("mc146818rtc", 0)]
    cmos = bytes.fromhex(rtc["cmos_data"].split("…")[0])
    assert (cmos[0x0A], cmos[0x0B], cmos[0x38], cmos[0x39]) == (0x2A, 0x42, 0xA5, 0x5A)
    assert rtc["periodic_timer"] != paused[("mc146818rtc", 0)]["periodic_timer"]  # armed: rate 64 Hz
    assert ran[("pckbd", 0)]["kbd"]["mode"] == 0x47
    uart = ran[("serial", 0)]["state"]
    assert (uart["divider"], uart["lcr"], uart["scr"]) == (3, 0x1B, 0x42)
    assert ran[("dma", 0)]["regs"][2]["base"] == [0x3000, 0x1FF]


@pytest.mark.qemu
@pytest.mark.parametrize("src, dst", [("7.2", "10.0"), ("10.0", "7.2")])
def test_heartbeat_moves_on_the_destination_and_ram_is_equal(store, src, dst):
    res = run_cell(CellSpec(src, dst, "pc-i440fx-7.2", "none", "none", "devices"), store, explain=False)
    assert res.real.kind == "completed", res.real
    assert store.get(res.spec.capture_key).source_ram  # the comparison really ran


@pytest.mark.qemu
def test_the_after_load_checks_can_fail(store):
    spec = CellSpec("7.2", "10.0", "pc-i440fx-7.2", "none", "none", "devices")
    cap = store.get(spec.capture_key)
    g = store.guest("devices")
    common = dict(machine=spec.machine, devices="none", mem_mb=store.mem_mb, caps=(), globals_=(), timeout=60)
    out = load_into(store.binaries["10.0"], cap.path, extra_args=list(g.args), guest=g, source_ram="0" * 64, **common)
    assert out.kind == "ram-differs" and "silent loss" in out.message
    # a paused guest's stream, resumed as if it ran the boot program: firmware starts from
    # reset without the floppy, the counter never moves
    paused = store.get(("7.2", "pc-i440fx-7.2", "none", "none", "paused", ""))
    out = load_into(store.binaries["10.0"], paused.path, extra_args=[], guest=g, source_ram=paused.source_ram,
                    **common)
    assert out.kind == "guest-dead", out


@pytest.mark.qemu
def test_source_without_section_footers_fails_for_real(store):
    res = run_cell(CellSpec("7.2", "10.0", "pc-i440fx-7.2", "none", "none", "paused", "src-no-section-footer"),
                   store)
    assert (res.real.kind, res.real.side) == ("failed", "destination")
    assert "Missing section footer" in res.real.message
    assert res.model.compatible is False and res.verdict == "expected-fail"
    assert json.loads(json.dumps(res.as_json()))["one_sided"] == "src-no-section-footer"
