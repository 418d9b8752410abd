"""Running guests while migrating as matrix axes: the accelerator (kvm, tcg) and how a running
guest meets its migration (live precopy, or stopped first); QEMU 7.2's TCG dirty-tracking
fault is labelled on the cells that can meet it, never hidden."""

from __future__ import annotations

import pytest

from conformance.rules import compat
from conformance.tools.matrix.cell import CellResult, CheckerVerdict, Outcome, run_cell
from conformance.tools.matrix.grid import CellSpec, MatrixError, build_grid
from conformance.tools.matrix.report import format_text
from conformance.tools.matrix.run import MatrixResult
from conformance.tools.matrix.store import CaptureStore


def test_axes_multiply_running_guests_only():
    g = build_grid(["7.2", "10.0"], ["pc-q35-7.2"], ["none"], ["none"], ["paused", "devices"],
                   accels=["tcg", "kvm"], modes=["live", "stopped"])
    cells = g.cells()
    # paused: 2 accels x 1 mode; devices: 2 accels x 2 modes; 4 directions each
    assert len(cells) == (2 + 4) * 4 and len(g.rows) == 6
    assert {c.mode for c in cells if c.guest == "paused"} == {"live"}
    rows = set(g.rows)
    assert "none guest=devices accel=kvm stopped-first" in rows and "none" in rows
    # the accelerator and the mode change the source's capture; the destination does not
    keys = {c.capture_key for c in cells}
    assert len(keys) == 6 * 2
    with pytest.raises(MatrixError, match="unknown accelerator 'hvf'"):
        build_grid(["7.2"], ["pc-q35-7.2"], ["none"], ["none"], accels=["hvf"])
    with pytest.raises(MatrixError, match="unknown migration mode 'colo'"):
        build_grid(["7.2"], ["pc-q35-7.2"], ["none"], ["none"], modes=["colo"])


def test_the_7_2_tcg_fault_is_labelled_where_it_can_show():
    label = CellSpec("7.2", "10.0", "pc-q35-7.2", "none", "none", "linux", accel="tcg").known_fault
    assert label and "TCG dirty tracking" in label and "7.2" in label
    for spec in (CellSpec("10.0", "7.2", "pc-q35-7.2", "none", "none", "linux", accel="tcg"),  # a fixed source
                 CellSpec("7.2", "10.0", "pc-q35-7.2", "none", "none", "linux", accel="kvm"),
                 CellSpec("7.2", "10.0", "pc-q35-7.2", "none", "none", "linux", accel="tcg", mode="stopped"),
                 CellSpec("7.2", "10.0", "pc-q35-7.2", "none", "none", "paused", accel="tcg")):
        assert spec.known_fault is None, spec


def _result(spec: CellSpec, kind: str) -> CellResult:
    return CellResult(spec, Outcome(kind, "destination", "the destination's guest RAM differs" if kind != "completed"
                                    else "completed"),
                      compat.Prediction(True, []), CheckerVerdict(True, [], "conforms"))


def test_a_labelled_loss_is_an_expected_failure_with_its_label_and_an_unlabelled_one_disagrees():
    faulty = CellSpec("7.2", "10.0", "pc-q35-7.2", "none", "none", "devices", accel="tcg")
    fixed = CellSpec("10.0", "7.2", "pc-q35-7.2", "none", "none", "devices", accel="tcg")
    r = _result(faulty, "ram-differs")
    r.explanation = {"summary": f"{faulty.known_fault} [x]", "details": []}
    assert r.known_fault and r.verdict == "expected-fail" and r.disagreeing == []
    assert r.as_json()["known_fault_seen"] is True
    lost = _result(fixed, "ram-differs")
    assert not lost.known_fault and lost.verdict == "disagree" and lost.disagreeing == ["model", "checker"]
    ok = _result(faulty, "completed")
    assert ok.verdict == "pass" and ok.as_json()["known_fault"] and not ok.as_json()["known_fault_seen"]
    grid = build_grid(["7.2", "10.0"], ["pc-q35-7.2"], ["none"], ["none"], ["devices"])
    text = format_text(MatrixResult(grid, [r, lost, ok], {"7.2": "7.2.22", "10.0": "10.0.2"}))
    assert "caveat: 2 cells can meet a known fault" in text and "it showed in 1" in text
    assert "TCG dirty tracking" in text


# ---------------------------------------------------------------- real QEMU

@pytest.fixture(scope="module")
def store(qemu, tmp_path_factory) -> CaptureStore:
    return CaptureStore(tmp_path_factory.mktemp("axes"), {v: qemu(v) for v in ("7.2", "10.0")}, mem_mb=32,
                        timeout=60.0)


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["live", "stopped"])
def test_running_guest_both_modes_land_alive(store, mode):
    res = run_cell(CellSpec("10.0", "7.2", "pc-q35-7.2", "none", "none", "devices", accel="tcg", mode=mode), store,
                   explain=False)
    assert res.real.kind == "completed", res.real
    assert store.get(res.spec.capture_key).source_ram


@pytest.mark.qemu
def test_accel_reaches_qemu(store):
    # -accel is on the command line: a q35 machine with an accelerator QEMU lacks refuses to start
    from conformance.tools.matrix.cell import load_into
    g = store.guest("paused")
    dev, extra = store.device_args("none", (), g, "tcg")
    assert extra[:2] == ["-accel", "tcg"]
    cap = store.get(("7.2", "pc-q35-7.2", "none", "none"))
    out = load_into(store.binaries["10.0"], cap.path, machine="pc-q35-7.2", devices=dev, mem_mb=32, caps=(),
                    globals_=(), extra_args=["-accel", "no-such-accel"], timeout=30)
    assert out.kind == "refused" and "no-such-accel" in out.message, out


def test_cells_run_elsewhere_merge_into_one_report():
    from conformance.tools.matrix.run import merge_cells

    a = _result(CellSpec("7.2", "10.0", "pc-q35-7.2", "none", "none", "linux", accel="tcg"), "completed").as_json()
    b = _result(CellSpec("10.0", "7.2", "pc-q35-7.2", "none", "none", "linux", accel="tcg"), "ram-differs").as_json()
    data = merge_cells([b, a], seconds=3.0)
    assert data["summary"] == {"cells": 2, "pass": 1, "expected-fail": 0, "disagree": 1, "error": 0, "seconds": 3.0}
    assert [c["id"] for c in data["cells"]] == [a["id"], b["id"]]  # the grid's order, not arrival
    assert data["grid"]["guests"] == ["linux"] and data["grid"]["directions"] == [
        "7.2->7.2", "7.2->10.0", "10.0->7.2", "10.0->10.0"]
    text = format_text(data)
    row = next(ln for ln in text.splitlines() if "guest=linux" in ln)
    assert row.split()[-4:] == ["-", "pass", "DIFF", "-"]  # cells that did not run are '-'
