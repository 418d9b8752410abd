"""Running guests migrated straight into a live destination (matrix/direct.py,
conformance.qemu.running_migration): postcopy switched while the guest dirties, precopy kept
from converging (bounded: the source is stopped), and multifd. Each real cell's outcome is
asserted, and the model and the checker agree with it, or the cell is a labelled known fault
of the binary (strict: the fault must show)."""

from __future__ import annotations

import pytest

from conformance.tools.matrix.cell import predict_cell, run_cell
from conformance.tools.matrix.grid import NONCONVERGING_SECONDS, CellSpec, build_grid, safe_name
from conformance.tools.matrix.store import CaptureStore


def spec(src: str, dst: str, mode: str, caps: str = "none", guest: str = "dirtier") -> CellSpec:
    return CellSpec(src, dst, "pc-i440fx-7.2", "none", caps, guest, accel="tcg", mode=mode)


def test_new_modes_are_direct_cells_of_their_own():
    g = build_grid(["7.2", "10.0"], ["pc-i440fx-7.2"], ["none"], ["none", "multifd"], ["paused", "dirtier"],
                   accels=["tcg"], modes=["live", "postcopy", "nonconverging"])
    cells = g.cells()
    # paused: live only; dirtier: 3 modes; 2 cap sets; 4 directions
    assert len(cells) == (1 + 3) * 2 * 4
    direct = [c for c in cells if c.direct]
    assert {c.mode for c in direct} == {"live", "postcopy", "nonconverging"}
    assert all(c.mode != "live" or "multifd" in c.capabilities for c in direct)
    assert not spec("7.2", "10.0", "live").direct
    # a direct cell is its own migration: one key per destination too
    assert len({c.capture_key for c in direct}) == len(direct)
    assert "none guest=dirtier postcopy" in g.rows and "none guest=dirtier nonconverging" in g.rows
    assert spec("7.2", "7.2", "postcopy").migration_capabilities == ("postcopy-ram",)


def test_model_predictions_for_the_modes():
    # 10.0 refuses multifd with postcopy-ram on either side; 7.2 accepts the pair
    for s, d in (("10.0", "10.0"), ("7.2", "10.0"), ("10.0", "7.2")):
        p = predict_cell(spec(s, d, "postcopy", "multifd"))
        assert p.compatible is False and any("Postcopy is not yet compatible with multifd" in r for r in p.reasons)
    assert predict_cell(spec("7.2", "7.2", "postcopy", "multifd")).compatible is True
    p = predict_cell(spec("10.0", "10.0", "nonconverging"))
    assert p.compatible and any(f"after {NONCONVERGING_SECONDS:g} s" in w for w in p.warnings)


def test_known_faults_label_the_cells_that_can_meet_them():
    label, kinds = spec("7.2", "7.2", "postcopy", "multifd").known_fault_and_kinds
    assert label and "yank" in label and kinds == ("failed",)
    for s, d in (("7.2", "10.0"), ("10.0", "7.2"), ("10.0", "10.0")):  # refused instead: predicted
        assert "yank" not in (spec(s, d, "postcopy", "multifd").known_fault or "")
    # 7.2's TCG dirty tracking: any mode that migrates a running guest, and convergence is a symptom
    label, kinds = spec("7.2", "10.0", "nonconverging").known_fault_and_kinds
    assert "TCG dirty tracking" in label and set(kinds) == {"ram-differs", "converged"}
    assert spec("7.2", "10.0", "postcopy").known_fault_and_kinds[1] == ("ram-differs",)
    assert spec("10.0", "7.2", "nonconverging").known_fault is None


# ---------------------------------------------------------------- real QEMU

@pytest.fixture(scope="module")
def store(qemu, tmp_path_factory) -> CaptureStore:
    return CaptureStore(tmp_path_factory.mktemp("running"), {v: qemu(v) for v in ("7.2", "10.0")}, mem_mb=64,
                        timeout=60.0)


def _agrees(res) -> None:
    assert res.verdict == "pass", (res.verdict, res.real, res.model, res.checker)
    assert res.model_agrees is True and res.checker_agrees is True, (res.model, res.checker)


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("src,dst", [("7.2", "7.2"), ("10.0", "10.0"), ("7.2", "10.0"), ("10.0", "7.2")])
def test_postcopy_while_the_guest_dirties(store, src, dst):
    res = run_cell(spec(src, dst, "postcopy"), store, explain=False)
    for _ in range(2):
        if not (src == "10.0" and res.real.message == "completed in precopy, before the switch to postcopy"):
            break
        # a starved vCPU (parallel workers on 2 cores) can dirty nothing between two syncs, and
        # QEMU completes precopy with nothing pending before it looks at the switch request:
        # again (twice at most), as a user would rerun such a cell
        res = run_cell(spec(src, dst, "postcopy"), store, explain=False)
    # RAM equal on both sides and the resumed guest alive; a 7.2 source under TCG can complete
    # before the switch (its dirty log loses the guest's writes: running_migration's
    # POSTCOPY_PARAMETERS) and says so
    assert res.real.kind == "completed", res.real
    # after three tries a 10.0 source on a loaded machine may still have completed before the
    # switch; it must say so, never pretend
    assert res.real.message in ("completed in postcopy", "completed in precopy, before the switch to postcopy")
    _agrees(res)
    assert res.real.seconds < 30


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("src,dst", [("10.0", "10.0"), ("10.0", "7.2")])
def test_nonconverging_precopy_is_bounded_and_ends_by_stopping_the_source(store, src, dst):
    res = run_cell(spec(src, dst, "nonconverging"), store, explain=False)
    assert res.real.kind == "completed", res.real
    assert res.real.message.startswith(f"did not converge within {NONCONVERGING_SECONDS:g} s"), res.real
    assert "completed once the source was stopped" in res.real.message
    _agrees(res)
    assert NONCONVERGING_SECONDS < res.real.seconds < NONCONVERGING_SECONDS + 20


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("dst", ["7.2", "10.0"])
def test_nonconverging_from_7_2_under_tcg_is_its_labelled_dirty_tracking_fault(store, dst):
    # strict: QEMU 7.2's TCG dirty log drops the guest's writes, so the migration converges
    # by itself and the destination's RAM is not the source's
    res = run_cell(spec("7.2", dst, "nonconverging"), store, explain=True)
    assert res.real.kind in ("ram-differs", "converged"), res.real
    assert "converged by itself" in res.real.message
    assert res.verdict == "expected-fail" and res.known_fault and res.disagreeing == []
    assert res.model.compatible is True  # the model predicts a conforming migration; the binary loses writes
    assert "TCG dirty tracking" in res.explanation["summary"]


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("src,dst", [("7.2", "10.0"), ("10.0", "7.2"), ("10.0", "10.0")])
def test_multifd_with_a_running_guest(store, src, dst):
    res = run_cell(spec(src, dst, "live", "multifd"), store, explain=False)
    assert res.real.kind == "completed", res.real
    _agrees(res)
    folder = store.root / ("direct_" + safe_name(res.spec.direct_name))
    channels = sorted(p.name for p in folder.glob("multifd*.bin") if p.stat().st_size > 0)
    assert channels == ["multifd0.bin", "multifd1.bin"]  # the default multifd-channels, recorded and checked


@pytest.mark.qemu
@pytest.mark.slow
def test_multifd_postcopy_on_7_2_aborts_the_destination_labelled(store):
    res = run_cell(spec("7.2", "7.2", "postcopy", "multifd"), store, explain=True)
    assert res.real.kind == "failed" and res.real.side == "destination", res.real
    assert any("yank_unregister_instance" in ln for ln in res.real.error_lines), res.real
    assert res.verdict == "expected-fail" and res.known_fault
    assert res.model.compatible is True  # both sides accept the pair: the abort is the binary's fault
    assert "known fault of QEMU 7.2" in res.explanation["summary"]


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("src,dst,side", [("10.0", "10.0", "destination"), ("7.2", "10.0", "destination"),
                                          ("10.0", "7.2", "source")])
def test_multifd_postcopy_refused_by_10_0_as_predicted(store, src, dst, side):
    res = run_cell(spec(src, dst, "postcopy", "multifd"), store, explain=False)
    assert res.real.kind == "refused" and res.real.side == side, res.real
    assert "Postcopy is not yet compatible with multifd" in res.real.message
    assert res.verdict == "expected-fail" and res.model_agrees is True and res.checker.ok is None
