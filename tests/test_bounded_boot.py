"""Every wait of a matrix cell with a running guest is bounded by the cell's timeout, and a guest
that does not boot is the cell's outcome ("no-boot", with the last line it printed), not a
stall: the guest's boot wait, the capture lock shared by workers, the accelerator probe, and
the progress shown while a long capture runs."""

from __future__ import annotations

import fcntl
import io
import time

import pytest

from conformance.qemu import accel, guests, linux_guest
from conformance.qemu.process import QemuProcess
from conformance.tools.matrix.cell import Outcome, outcome_of_exception, run_cell
from conformance.tools.matrix.grid import CellSpec
from conformance.tools.matrix.report import ProgressBar, short_real
from conformance.tools.matrix.store import CaptureStore


def test_a_guest_that_did_not_start_is_an_outcome_without_verdict():
    e = guests.GuestDidNotStart("the linux guest did not boot within 30 s: last serial line 'Decompressing'")
    out = outcome_of_exception(e, "source", 30.2)
    assert (out.kind, out.side, out.ok) == ("no-boot", "source", False)
    assert out.said == "could not start the cell: " + str(e)
    assert short_real({"real": out.as_json()}) == "guest did not boot"


def test_a_capture_lock_held_elsewhere_is_waited_for_a_bounded_time(tmp_path):
    store = CaptureStore(tmp_path, {}, timeout=5.0, lock_seconds=0.5)
    key = ("7.2", "pc-i440fx-7.2", "none", "none", "linux", "", "tcg", "live")
    store.binaries = {"7.2": type("B", (), {"path": "qemu", "full_version": "7.2.22"})()}
    with open(tmp_path / f"{store._stem(key)}.lock", "w") as held:  # another worker, making it
        fcntl.flock(held, fcntl.LOCK_EX)
        t0 = time.monotonic()
        cap = store.get(key)
        waited = time.monotonic() - t0
    assert 0.5 <= waited < 2.0, waited
    assert cap.path is None and cap.outcome.kind == "error"
    assert "still being made by another process or thread after 0.5 s" in cap.outcome.message


def test_progress_says_what_a_worker_is_at_and_ticks_without_a_finished_cell():
    out = io.StringIO()
    bar = ProgressBar(4, enabled=True, stream=out, every=0)
    bar.doing("capture 7.2 pc-i440fx-7.2 none guest=linux accel=tcg: booting the guest (at most 30 s)")
    bar.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == ("matrix: 0/4 cells  0 disagree  capture 7.2 pc-i440fx-7.2 none guest=linux accel=tcg: "
                        "booting the guest (at most 30 s)")
    assert len(lines) == 2 and lines[1] == lines[0]  # a tick repeats the state: the log shows the run alive
    bar.close()


# ---------------------------------------------------------------- real QEMU


@pytest.mark.qemu
def test_a_guest_that_prints_nothing_ends_the_wait_at_the_timeout(qemu, linux):
    # never continued (-S): the guest runs no instruction, as under an accelerator that runs none
    with QemuProcess(qemu("10.0"), ["-machine", "pc", "-m", "128M", *linux.args], name="never-runs") as q:
        t0 = time.monotonic()
        with pytest.raises(guests.GuestDidNotStart) as e:
            guests.wait_started(q, linux, 2.0)
        waited = time.monotonic() - t0
    assert 2.0 <= waited < 3.0, waited
    assert str(e.value) == "the linux guest did not boot within 2 s: nothing on its serial port"


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_the_accelerator_probe_needs_timer_interrupts_to_wake_a_halted_cpu(qemu, tmp_path, version):
    b = qemu(version)
    assert accel.runs_guests(b, "tcg", within=20.0)  # the ticker under TCG: woken 18.2 times a second
    # the same program with interrupts left off (sti -> nop): halted for ever, the probe says no
    sector = guests.TICKER_BOOT_SECTOR
    assert sector.count(guests.STI) == 1
    disk = guests.boot_floppy(tmp_path / "no-sti.img", sector.replace(guests.STI, b"\x90"))
    g = guests.Guest("ticker", ("-drive", f"file={disk},format=raw,if=floppy,index=0,snapshot=on"), True)
    with QemuProcess(b, ["-accel", "tcg", "-machine", "pc", "-m", "32M", *g.args], name="no-sti") as q:
        q.cmd("cont")
        assert not guests.counter_reaches(q, g, accel.TICKS, 3.0)
        assert guests.read_counter(q, *g.heartbeat) <= 1  # at most the one pass before the first hlt


@pytest.mark.qemu
@pytest.mark.slow
def test_a_linux_guest_that_never_beats_is_a_no_boot_cell_within_the_timeout(qemu, linux, tmp_path):
    # the real kernel, but /init is a shell: it boots and prints, and never gets to a heartbeat
    args = list(linux.args)
    args[args.index("-append") + 1] = linux_guest.KERNEL_APPEND + " rdinit=/bin/sh"
    store = CaptureStore(tmp_path, {v: qemu(v) for v in ("7.2", "10.0")}, mem_mb=64, timeout=20.0)
    store._guests.get("linux", lambda: guests.Guest("linux", tuple(args), True, linux.min_mem_mb))  # this guest
    t0 = time.monotonic()
    res = run_cell(CellSpec("7.2", "10.0", "pc-i440fx-7.2", "none", "none", "linux"), store)
    took = time.monotonic() - t0
    assert took < 20.0 + 10.0, took  # the boot wait, QEMU's start and kill; no migration was tried
    assert res.real.kind == "no-boot" and res.real.side == "source", res.real
    # what it printed last: busybox's prompt (its terminal query stripped)
    assert res.real.message == "the linux guest did not boot within 20 s: last serial line '/ #'", res.real.message
    assert res.verdict == "error" and res.disagreeing == []
    assert res.checker.ok is None and "no stream" in res.checker.note
    assert "no migration was tried" in res.explanation["summary"]
    print(f"no-boot cell: {took:.1f} s ({res.real.message})")


def test_the_last_serial_line_is_what_a_reader_would_see():
    r = linux_guest.SerialReader(None)
    assert r.last_line() == ""
    r.text += b"migconform-linux init\r\n\r\n/ # \x1b[6n"
    assert r.last_line() == "/ #"
    r.text += b"\r\n" + b"x" * 300 + b"\r\n"
    assert r.last_line() == "x" * 100


def test_outcome_round_trips_with_the_new_kind():
    o = Outcome("no-boot", "source", "the linux guest did not boot within 30 s: nothing on its serial port")
    assert Outcome.from_json(o.as_json()) == o
