"""vmstate-diff: two -dump-vmstate files compared per direction (conformance/tools/vmstate_diff.py),
on synthetic dumps, on the real 7.2/10.0 dumps in tests/data, and against real migrations."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.tools.vmstate_diff import (
    A_TO_B,
    B_TO_A,
    BREAKS,
    COMPATIBLE,
    NOT_JUDGED,
    WOULD_BREAK,
    add_vmstate_diff_parser,
    apply_evidence,
    cmd_vmstate_diff,
    diff_dumps,
    evidence_from_stream,
    evidence_from_vmdescription,
)
from wireformat.vmstate import parse_dump_vmstate

DATA = Path(__file__).parent / "data" / "vmstate"
MACHINE = "pc-i440fx-7.2"


# ------------------------------------------------------------------ synthetic dumps

def fld(name, size=4, version=0, exists=False, desc=None, num=None):
    f = {"field": name, "version_id": version, "field_exists": exists, "size": size}
    if num is not None:
        f["num"] = num
    if desc is not None:
        f["Description"] = desc
    return f


def vmsd(name, version=1, minimum=1, fields=(), subs=()):
    d = {"name": name, "version_id": version, "minimum_version_id": minimum, "Fields": list(fields)}
    if subs:
        d["Subsections"] = list(subs)
    return d


def dump(*devices, machine=MACHINE):
    out = {"vmschkmachine": {"Name": machine}}
    for type_name, desc in devices:
        out[type_name] = {"Name": type_name, "version_id": desc["version_id"],
                          "minimum_version_id": desc["minimum_version_id"], "Description": desc}
    return parse_dump_vmstate(json.dumps(out))


def only(diff, path=None):
    ds = [d for d in diff.differences if path is None or d.path == path]
    assert len(ds) == 1, [(d.path, d.kind, d.detail) for d in diff.differences]
    return ds[0]


def verdicts(d):
    return d.verdict(A_TO_B), d.verdict(B_TO_A)


def test_identical_dumps_have_no_difference():
    a = dump(("dev", vmsd("dev", 2, 1, [fld("x"), fld("y", 8)])))
    diff = diff_dumps(a, a)
    assert diff.differences == [] and diff.exit_code() == 0


def test_version_window():
    # B bumps the version and adds a field at that version: old -> new loads, new -> old does not
    a = dump(("dev", vmsd("dev", 2, 1, [fld("x")])))
    b = dump(("dev", vmsd("dev", 3, 1, [fld("x"), fld("y", 4, version=3)])))
    diff = diff_dumps(a, b)
    v = next(d for d in diff.differences if d.kind == "version")
    assert verdicts(v) == (COMPATIBLE, BREAKS)
    assert "newer than the destination's 2" in v.verdicts[B_TO_A].why
    f = next(d for d in diff.differences if d.kind == "fields")
    assert f.verdict(A_TO_B) == COMPATIBLE and "skips y" in f.verdicts[A_TO_B].why
    assert diff.exit_code() == 1 and diff.exit_code(A_TO_B) == 0 and diff.exit_code(B_TO_A) == 1
    # B raises its minimum above A's version: old -> new breaks
    b2 = dump(("dev", vmsd("dev", 3, 3, [fld("x"), fld("y", 4, version=3)])))
    v2 = next(d for d in diff_dumps(a, b2).differences if d.kind == "version")
    assert v2.verdict(A_TO_B) == BREAKS and "older than the destination's minimum 3" in v2.verdicts[A_TO_B].why


def test_field_added_at_same_version_breaks_both_ways():
    a = dump(("dev", vmsd("dev", 1, 1, [fld("x")])))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("x"), fld("y")])))
    d = only(diff_dumps(a, b))
    assert d.kind == "fields" and "added y" in d.detail
    assert verdicts(d) == (BREAKS, BREAKS)
    assert "the source writes x (4 bytes) where the destination reads x, y (8 bytes or more" in d.verdicts[A_TO_B].why


def test_resized_and_renamed_fields():
    a = dump(("dev", vmsd("dev", 1, 1, [fld("x", 4), fld("old", 2)])))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("x", 8), fld("new", 2)])))
    d = only(diff_dumps(a, b))
    assert "x: v0, 4 bytes -> v0, 8 bytes" in d.detail and "old renamed new" in d.detail
    assert verdicts(d) == (BREAKS, BREAKS)
    renamed = only(diff_dumps(dump(("dev", vmsd("dev", 1, 1, [fld("old", 2)]))),
                              dump(("dev", vmsd("dev", 1, 1, [fld("new", 2)])))))
    assert verdicts(renamed) == (COMPATIBLE, COMPATIBLE)  # names do not travel


def test_unused_buffer_replacing_fields_is_compatible():
    a = dump(("dev", vmsd("dev", 1, 1, [fld("a"), fld("b"), fld("c", 2)])))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("unused", 10)])))
    d = only(diff_dumps(a, b))
    assert verdicts(d) == (COMPATIBLE, COMPATIBLE)


def test_element_counts():
    # both dumps give counts (10.0 style): an array that grows breaks
    a = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4, num=4)])))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4, num=8)])))
    assert verdicts(only(diff_dumps(a, b))) == (BREAKS, BREAKS)
    scalar = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4), fld("other", 2, num=2)])))  # arr: plain field here
    assert verdicts(only(diff_dumps(scalar, a))) == (BREAKS, BREAKS)
    # a dump without counts (7.2 style) borrows them from the other dump's same-named field
    old = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4), fld("lo", 2), fld("hi", 2)])))
    new = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4, num=4), fld("unused", 4)])))
    d = only(diff_dumps(old, new))
    assert verdicts(d) == (COMPATIBLE, COMPATIBLE)
    assert "if the fields without a counterpart (lo, hi) are not arrays" in d.verdicts[A_TO_B].why
    # a replaced array of unknown length: not judged rather than a false break
    old2 = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4), fld("pending", 1)])))
    new2 = dump(("dev", vmsd("dev", 1, 1, [fld("arr", 4, num=1), fld("unused", 5)])))
    assert verdicts(only(diff_dumps(old2, new2))) == (NOT_JUDGED, NOT_JUDGED)  # pending[5] would match


def test_nested_struct_c_size_is_ignored_and_nested_fields_compared():
    inner_a = vmsd("inner", 1, 1, [fld("p")])
    inner_b = vmsd("inner", 1, 1, [fld("p"), fld("q")])
    a = dump(("dev", vmsd("dev", 1, 1, [fld("s", 100, desc=inner_a)])))
    same = dump(("dev", vmsd("dev", 1, 1, [fld("s", 200, desc=inner_a)])))
    assert diff_dumps(a, same).differences == []  # only the C size of the structure changed
    b = dump(("dev", vmsd("dev", 1, 1, [fld("s", 200, desc=inner_b)])))
    d = only(diff_dumps(a, b))
    assert d.path == "dev.s" and verdicts(d) == (BREAKS, BREAKS)
    # nested versions are not on the wire: each side walks its own description
    nv = diff_dumps(a, dump(("dev", vmsd("dev", 1, 1, [fld("s", 100, desc=vmsd("inner", 2, 1, [fld("p")]))]))))
    assert verdicts(only(nv)) == (COMPATIBLE, COMPATIBLE)


def test_exists_callbacks_make_a_break_conditional():
    a = dump(("dev", vmsd("dev", 1, 1, [fld("x"), fld("opt", 4, exists=True)])))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("x"), fld("opt", 4, exists=True), fld("new", 1)])))
    d = only(diff_dumps(a, b))
    assert verdicts(d) == (WOULD_BREAK, WOULD_BREAK)
    assert d.verdicts[A_TO_B].condition == "exists" and "existence callbacks (opt" in d.verdicts[A_TO_B].why


def test_subsections_and_sections_on_one_side():
    a = dump(("dev", vmsd("dev", 1, 1, [fld("x")])), ("gone", vmsd("gone")))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("x")], subs=[vmsd("dev/extra", 1, 1, [fld("e")])])),
             ("newdev", vmsd("newdev")), ("ide", vmsd("ide")))
    diff = diff_dumps(a, b)
    by = {d.path: d for d in diff.differences}
    assert verdicts(by["dev/extra"]) == (COMPATIBLE, WOULD_BREAK)
    extra = by["dev/extra"].verdicts[B_TO_A]
    assert extra.condition == "subsection" and "ENOENT" in extra.why
    assert verdicts(by["gone"]) == (WOULD_BREAK, COMPATIBLE) and by["gone"].verdicts[A_TO_B].condition == "device"
    assert verdicts(by["newdev"]) == (COMPATIBLE, WOULD_BREAK)
    assert verdicts(by["ide"]) == (NOT_JUDGED, NOT_JUDGED)  # -dump-vmstate cannot list it
    assert diff.exit_code() == 0 and diff.exit_code(strict=True) == 1
    # a subsection on both sides carries its own version
    a2 = dump(("dev", vmsd("dev", 1, 1, [fld("x")], subs=[vmsd("dev/s", 2, 1, [fld("e")])])))
    b2 = dump(("dev", vmsd("dev", 1, 1, [fld("x")], subs=[vmsd("dev/s", 1, 1, [fld("e")])])))
    s = only(diff_dumps(a2, b2))
    assert s.kind == "version" and verdicts(s) == (WOULD_BREAK, COMPATIBLE)  # sent only when needed


def test_evidence_turns_conditional_breaks_into_breaks():
    a = dump(("dev", vmsd("dev", 1, 1, [fld("x")], subs=[vmsd("dev/extra", 1, 1, [fld("e")])])))
    b = dump(("dev", vmsd("dev", 1, 1, [fld("x")])))
    sent = json.dumps({"page_size": 4096, "devices": [
        {"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1, "fields": [],
         "subsections": [{"vmsd_name": "dev/extra", "version": 1, "fields": []}]}]})
    not_sent = json.dumps({"page_size": 4096, "devices": [
        {"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1, "fields": []}]})
    diff = diff_dumps(a, b)
    apply_evidence(diff, A_TO_B, evidence_from_vmdescription(not_sent, "quiet.mig"))
    d = only(diff)
    assert d.verdict(A_TO_B) == WOULD_BREAK and "without this subsection" in d.verdicts[A_TO_B].evidence
    diff = diff_dumps(a, b)
    apply_evidence(diff, A_TO_B, evidence_from_vmdescription(sent, "busy.mig"))
    assert only(diff).verdict(A_TO_B) == BREAKS and diff.exit_code() == 1


def test_a_device_one_side_cannot_migrate_is_not_breaking():
    """QEMU dumps an unmigratable device's description with neither fields nor subsections
    (7.2's vhost-user-fs); migratable on the other side, it gates nothing: one side never
    sends it, the other's stream with it fails to load only if the guest has the device."""
    blocked = {"name": "dev", "version_id": 0, "minimum_version_id": 0}  # no Fields key at all
    a = dump(("dev-type", blocked))
    b = dump(("dev-type", vmsd("dev", 0, 0, [fld("virtio", 0)])))
    d = only(diff_dumps(a, b))
    assert d.kind == "unmigratable-in-a" and verdicts(d) == (COMPATIBLE, WOULD_BREAK)
    assert diff_dumps(a, b).exit_code() == 0 and diff_dumps(b, a).exit_code() == 0
    assert verdicts(only(diff_dumps(b, a))) == (WOULD_BREAK, COMPATIBLE)
    # a migratable device with an empty field list is still compared field by field
    empty = dump(("dev-type", vmsd("dev", 0, 0, [])))
    assert verdicts(only(diff_dumps(empty, b))) == (BREAKS, BREAKS)
    assert diff_dumps(a, a).differences == []


def test_variants_sharing_a_vmsd_name_pair_by_type():
    a = dump(("ne2k_pci", vmsd("ne2000", 3, 3, [fld("x")])), ("ne2k_isa", vmsd("ne2000", 2, 0, [fld("y")])))
    b = dump(("ne2k_pci", vmsd("ne2000", 3, 3, [fld("x")])), ("ne2k_isa", vmsd("ne2000", 2, 0, [fld("y")])))
    assert diff_dumps(a, b).differences == []
    c = dump(("ne2k_pci", vmsd("ne2000", 3, 3, [fld("x")])), ("ne2k_isa", vmsd("ne2000", 2, 0, [fld("y", 8)])))
    d = only(diff_dumps(a, c))
    assert "ne2k_isa" in d.path and verdicts(d) == (BREAKS, BREAKS)


# ------------------------------------------------------------------ the real dumps in tests/data

@pytest.fixture(scope="module")
def real_diff():
    a = parse_dump_vmstate(gzip.decompress((DATA / "dump-vmstate-qemu72-pc-i440fx-7.2.json.gz").read_bytes()))
    b = parse_dump_vmstate(gzip.decompress((DATA / "dump-vmstate-qemu100-pc-i440fx-7.2.json.gz").read_bytes()))
    return diff_dumps(a, b, a_name="7.2", b_name="10.0")


def test_real_dumps_7_2_vs_10_0(real_diff):
    by = {d.path: d for d in real_diff.differences}
    # ltim: new in 10.0, sent only when the guest programs level-triggered mode
    assert verdicts(by["i8259/ltim"]) == (COMPATIBLE, WOULD_BREAK)
    # ide is registered per instance: 7.2's dump cannot list it
    assert by["ide"].kind == "not-in-dump" and verdicts(by["ide"]) == (NOT_JUDGED, NOT_JUDGED)
    # five u32 fields replaced by a 20-byte unused buffer
    assert verdicts(by["sb16"]) == (COMPATIBLE, COMPATIBLE)
    # esp: an unconditional byte added among existence-checked fields
    assert verdicts(by["pciespscsi.esp"]) == (WOULD_BREAK, WOULD_BREAK)
    # vhost-user-fs became migratable in 10.0 (7.2 blocks its migration): no 7.2 guest with it
    # ever migrated, so nothing breaks; a 10.0 guest with it cannot go to 7.2
    assert by["vhost-user-fs"].kind == "unmigratable-in-a"
    assert verdicts(by["vhost-user-fs"]) == (COMPATIBLE, WOULD_BREAK)
    assert real_diff.breaking() == [] and real_diff.exit_code() == 0


def test_real_dumps_with_real_stream_evidence(real_diff):
    """The 10.0 capture with e1000, virtio-net, usb, VGA, serial (tests/data) sends i8259
    without ltim: 10.0 -> 7.2 stays "would break if sent" there, and nothing breaks."""
    vmdesc = gzip.decompress((DATA / "qemu100-i440fx-devices-paused.vmdesc.json.gz").read_bytes())
    ev = evidence_from_vmdescription(vmdesc, "qemu100-i440fx-devices-paused")
    assert ev.sent("i8259") and not ev.sent("i8259", "i8259/ltim") and ev.sent("e1000", "e1000/mit_state")
    apply_evidence(real_diff, B_TO_A, ev)
    ltim = next(d for d in real_diff.differences if d.path == "i8259/ltim")
    assert ltim.verdict(B_TO_A) == WOULD_BREAK and "without this subsection" in ltim.verdicts[B_TO_A].evidence
    assert [d.section for d in real_diff.differences
            if d.verdict(B_TO_A) == BREAKS and ev.sent(d.section)] == []


# ------------------------------------------------------------------ CLI

def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


def _raw(*devices):
    out = {"vmschkmachine": {"Name": MACHINE}}
    for t, d in devices:
        out[t] = {"Name": t, "version_id": d["version_id"], "minimum_version_id": d["minimum_version_id"],
                  "Description": d}
    return out


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "conformance.tools.vmstate_diff", *args], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def test_cli_exit_codes_and_json(tmp_path):
    a = _write(tmp_path, "a.json", _raw(("dev", vmsd("dev", 2, 1, [fld("x")]))))
    b = _write(tmp_path, "b.json", _raw(("dev", vmsd("dev", 3, 1, [fld("x"), fld("y", 4, 3)]))))
    code, out, err = run_cli(a, a)
    assert code == 0 and "0 breaking" in out and err == ""
    code, out, _ = run_cli(a, b)
    assert code == 1 and "Breaking (1):" in out and "B->A dev" in out
    assert run_cli(a, b, "--direction", "a-to-b")[0] == 0
    code, out, _ = run_cli(a, b, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["verdict"] == "breaking"
    assert doc["summary"][B_TO_A][BREAKS] == 1 and doc["summary"][A_TO_B][BREAKS] == 0
    v = next(d for d in doc["differences"] if d["kind"] == "version")
    assert v["directions"][B_TO_A]["verdict"] == BREAKS and v["section"] == "dev"
    assert run_cli(a, b, "--ignore", "dev")[0] == 0
    gz = tmp_path / "b.json.gz"
    gz.write_bytes(gzip.compress(Path(b).read_bytes()))
    assert run_cli(a, str(gz))[0] == 1  # compressed dumps are read by content


@pytest.mark.parametrize("content, fragment", [
    (None, "No such file"), ("not json", "not a -dump-vmstate JSON"), ("{}", "no vmschkmachine"),
    ('{"x": 1}', "not a -dump-vmstate JSON")])
def test_cli_errors_are_one_line(tmp_path, content, fragment):
    good = _write(tmp_path, "good.json", _raw(("dev", vmsd("dev"))))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    code, out, err = run_cli(good, str(bad))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and out == ""


def test_cli_functions_wire_into_a_parser(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="migconform")
    add_vmstate_diff_parser(parser.add_subparsers(dest="command", required=True))
    a = _write(tmp_path, "a.json", _raw(("dev", vmsd("dev", 1, 1, [fld("x")]))))
    b = _write(tmp_path, "b.json", _raw(("dev", vmsd("dev", 1, 1, [fld("x", 8)]))))
    args = parser.parse_args(["vmstate-diff", a, b, "--all"])
    assert args.func is cmd_vmstate_diff and cmd_vmstate_diff(args) == 1
    assert "x: v0, 4 bytes -> v0, 8 bytes" in capsys.readouterr().out


# ------------------------------------------------------------------ against real migrations

CROSS_MACHINES = ("pc-i440fx-7.2", "pc-q35-7.2")


@pytest.fixture(scope="module")
def real_dumps(qemu, tmp_path_factory):
    from conformance.qemu import dump_vmstate

    out = {}
    d = tmp_path_factory.mktemp("vmstate-dumps")
    for machine in CROSS_MACHINES:
        for version in ("7.2", "10.0"):
            p = dump_vmstate(qemu(version), machine, d / f"{version}-{machine}.json")
            out[(version, machine)] = parse_dump_vmstate(p.read_text())
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("machine", CROSS_MACHINES)
def test_no_break_claimed_for_devices_that_migrate_both_ways(qemu, capture, real_dumps, machine):
    """Every device set migrates 7.2 -> 10.0 and 10.0 -> 7.2 for real (checked here); the diff,
    given what each source really sent, claims no break on a section that was sent, and every
    "would break if sent" on a sent section is one whose condition the stream did not meet."""
    from conformance.qemu import DEVICE_SETS, load_stream

    t0 = time.monotonic()
    report = []
    for devices in DEVICE_SETS:
        caps = {v: capture(v, machine, devices) for v in ("7.2", "10.0")}
        for src, dst, direction in (("7.2", "10.0", A_TO_B), ("10.0", "7.2", B_TO_A)):
            verdict = load_stream(qemu(dst), caps[src].path, machine=machine, devices=devices)
            assert verdict.completed, f"{src} -> {dst} {machine} {devices}: {verdict.error_lines}"
            diff = diff_dumps(real_dumps[("7.2", machine)], real_dumps[("10.0", machine)])
            ev = evidence_from_stream(str(caps[src].path))
            before = {id(d): d.verdict(direction) for d in diff.differences}
            apply_evidence(diff, direction, ev)
            for d in diff.differences:
                v = d.verdicts[direction]
                if not ev.sent(d.section):
                    continue
                assert v.verdict != BREAKS, (f"{direction} {machine} {devices}: claims '{d.path}: {d.detail}' breaks "
                                             f"({v.why}) but the real migration completed")
                if v.verdict == WOULD_BREAK:
                    assert before[id(d)] == WOULD_BREAK and v.evidence
                    report.append(f"{direction} {d.path}: {v.evidence}")
    assert time.monotonic() - t0 < 60
    # the one "would break if sent" these guests meet: i8259/ltim, which 10.0 did not send
    assert any("i8259/ltim" in r and "without this subsection" in r for r in report), report


@pytest.mark.qemu
def test_conditional_break_confirmed_by_real_migration(qemu, real_dumps, tmp_path):
    """am53c974 (esp): 10.0 added an unconditional drq_state byte among existence-checked
    fields. The diff says "would break if sent" both ways; for real, 7.2 -> 10.0 fails at that
    section, and 10.0 -> 7.2 completes (both sides write the same number of bytes there, but
    7.2 reads ti_cmd/lun from the bytes 10.0 wrote for lun/drq_state)."""
    from conformance.qemu import capture_stream, load_stream

    diff = diff_dumps(real_dumps[("7.2", MACHINE)], real_dumps[("10.0", MACHINE)])
    esp = next(d for d in diff.differences if d.path == "pciespscsi.esp" and d.kind == "fields")
    assert verdicts(esp) == (WOULD_BREAK, WOULD_BREAK) and "drq_state" in esp.verdicts[A_TO_B].why
    extra = ["-device", "am53c974"]
    results = {}
    for src, dst in (("7.2", "10.0"), ("10.0", "7.2")):
        cap = capture_stream(qemu(src), tmp_path / f"{src}.mig", machine=MACHINE, extra_args=extra)
        results[src] = load_stream(qemu(dst), cap.path, machine=MACHINE, extra_args=extra)
    assert not results["7.2"].completed
    assert any("pciespscsi" in ln for ln in results["7.2"].error_lines), results["7.2"].error_lines
    assert results["10.0"].completed


# ------------------------------------------------------------------ the README's CI recipe

def _readme_recipe() -> list[list[str]]:
    """The three command lines under the README's "Gate your QEMU branch" heading."""
    import shlex

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Gate your QEMU branch", 1)[1]
    lines = [ln.strip() for ln in section.splitlines()[1:] if ln.startswith("    ")][:3]
    return [shlex.split(ln, comments=True) for ln in lines]


def test_readme_recipe_is_three_migconform_commands():
    recipe = _readme_recipe()
    assert [c[:3] for c in recipe] == [["migconform", "qemu", "dump-vmstate"]] * 2 + [
        ["migconform", "vmstate-diff", "release.json"]]


@pytest.mark.qemu
@pytest.mark.slow
def test_readme_vmstate_diff_recipe_runs_as_written(qemu, tmp_path):
    """The recipe, run line by line as a user would (the release: 7.2; the branch: the 10.0
    binary by its path, as a freshly built ./build/qemu-system-x86_64 would be named): both
    dumps are written, and 7.2 -> 10.0 has no breaking difference (exit 0)."""
    q72, q10 = qemu("7.2"), qemu("10.0")
    for cmd in _readme_recipe():
        argv = [sys.executable, "-m", "conformance.cli", *cmd[1:]]
        argv = [f"7.2={q72.path}" if a == "7.2" and argv[i - 1] == "--qemu" else
                str(q10.path) if a == "./build/qemu-system-x86_64" else a for i, a in enumerate(argv)]
        p = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr)
    for name, version in (("release.json", "7.2"), ("branch.json", "10.0")):
        dumped = parse_dump_vmstate((tmp_path / name).read_text())
        assert dumped.machine == "pc-q35-7.2" and len(dumped) > 100, name
    assert "0 breaking" in p.stdout and "vhost-user-fs" in p.stdout  # listed, as would-break-if-sent


@pytest.mark.qemu
def test_qemu_dump_vmstate_errors_are_one_line(qemu, tmp_path):
    q72 = qemu("7.2")
    cases = [
        (["--qemu", f"7.2={q72.path}", "--machine", "pc-q53-7.2", "x.json"], "no machine type 'pc-q53-7.2' (did you mean 'pc-q35-7.2'?)"),
        (["--qemu", "9.9", "--machine", "q35", "x.json"], "QEMU 9.9 not found"),
        (["--qemu", str(tmp_path / "nope"), "--machine", "q35", "x.json"], "no such file"),
        (["--qemu", f"7.2={q72.path}", "--machine", "q35", str(tmp_path / "no" / "x.json")], "no directory"),
    ]
    for args, fragment in cases:
        p = subprocess.run([sys.executable, "-m", "conformance.cli", "qemu", "dump-vmstate", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and fragment in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # nothing half-written
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "qemu", "dump-vmstate", "--qemu", f"7.2={q72.path}",
                        "--machine", "pc", "-"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and parse_dump_vmstate(p.stdout).machine == "pc-i440fx-7.2"
