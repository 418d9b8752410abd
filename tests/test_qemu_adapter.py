"""The QEMU adapter against the real 7.2 and 10.0 binaries: discovery, captures, loads,
rejections, dump-vmstate, file-backed guest RAM, process hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.qemu import (
    DEVICE_SETS,
    MigrationFailed,
    QemuExited,
    QemuNotFound,
    QemuProcess,
    QemuTimeout,
    QmpCommandError,
    capture_stream,
    discover,
    dump_vmstate,
    feed,
    load_stream,
    machine_types,
    make_ram_file,
    parse_pairs,
    require,
    start_destination,
)

from .qemu_fixtures import QEMU_VERSIONS

pytestmark = pytest.mark.qemu

SHARED_MACHINE = "pc-i440fx-7.2"  # the newest i440fx type both versions have
OTHER = {"7.2": "10.0", "10.0": "7.2"}


# ------------------------------------------------------------------ discovery

@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_discovery_reports_real_versions(qemu, version):
    b = qemu(version)
    assert b.version == version
    assert b.full_version.startswith(version + ".")
    assert subprocess.run(b.argv("--version"), env=b.env(), capture_output=True, text=True,
                          timeout=20).stdout.startswith(f"QEMU emulator version {b.full_version}")


def test_unpacked_10_does_not_load_foreign_modules(qemu):
    # -device help loads every QOM module; a module of another build aborts QEMU on an assertion
    b = qemu("10.0")
    r = subprocess.run(b.argv("-device", "help"), env=b.env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-500:]
    assert "Assertion" not in r.stderr and "Only modules from the same build" not in r.stderr
    assert 'name "virtio-net-pci"' in r.stdout


def test_explicit_paths_are_checked(qemu, tmp_path, monkeypatch):
    b72 = qemu("7.2")
    missing = tmp_path / "no-such-qemu"
    with pytest.raises(QemuNotFound, match="no-such-qemu: no such file"):
        discover({"7.2": str(missing)})
    monkeypatch.setenv("MIGCONFORM_QEMU", f"10.0={b72.path}")  # labelled with the wrong version
    with pytest.raises(QemuNotFound, match=r"reports QEMU 7\.2\.\d+, not 10\.0"):
        discover()
    monkeypatch.setenv("MIGCONFORM_QEMU", f"7.2={b72.path}")
    monkeypatch.setenv("MIGCONFORM_CACHE", str(tmp_path / "empty-cache"))
    assert discover()["7.2"].source == "env"
    assert discover({"7.2": str(b72.path)})["7.2"].source == "option"
    assert parse_pairs(" 7.2=/a 10.0=/b,\n") == {"7.2": "/a", "10.0": "/b"}
    with pytest.raises(QemuNotFound, match="MIGCONFORM_QEMU takes VERSION=PATH"):
        parse_pairs("/just/a/path")
    with pytest.raises(QemuNotFound) as e:
        require("9.9")
    assert str(e.value) == (f"QEMU 9.9 not found (looked in MIGCONFORM_QEMU, {tmp_path / 'empty-cache'}, PATH); "
                            "run scripts/setup.sh or pass --qemu 9.9=PATH")


@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_machine_types(qemu, version):
    types = machine_types(qemu(version))
    assert {"pc-i440fx-7.2", "pc-q35-7.2"} <= set(types)
    assert ("pc-i440fx-10.0" in types) == (version == "10.0")


@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_dump_vmstate(qemu, version, tmp_path):
    path = dump_vmstate(qemu(version), SHARED_MACHINE, tmp_path / "dump.json")
    dump = json.loads(path.read_text())
    assert dump["vmschkmachine"] == {"Name": SHARED_MACHINE}
    assert dump["e1000"]["Name"] == "e1000"
    # a device that lives in a loadable module: the binary's own module folder was used
    assert "usb-redir" in dump


# ------------------------------------------------------------------ capture and load

@pytest.mark.parametrize("devices", DEVICE_SETS)
@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_capture_loads_same_and_cross_version(qemu, capture, version, devices):
    cap = capture(version, SHARED_MACHINE, devices)
    assert cap.path.read_bytes()[:4] == b"QEVM"
    assert cap.size == cap.path.stat().st_size and cap.version == qemu(version).full_version
    for dst in (version, OTHER[version]):
        v = load_stream(qemu(dst), cap.path, machine=SHARED_MACHINE, devices=devices)
        assert v.completed and v.status == "completed", (dst, v.error_lines)
        assert v.exit_code is None and not v.hung


@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_device_sets_on_q35(qemu, capture, version):
    for devices in DEVICE_SETS:
        cap = capture(version, "pc-q35-7.2", devices)
        v = load_stream(qemu(version), cap.path, machine="pc-q35-7.2", devices=devices)
        assert v.completed, (devices, v.error_lines)


@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_truncated_stream_is_rejected(qemu, capture, version, tmp_path):
    data = capture(OTHER[version], SHARED_MACHINE).path.read_bytes()
    half = tmp_path / "half.mig"
    half.write_bytes(data[: len(data) // 2])
    v = load_stream(qemu(version), half, machine=SHARED_MACHINE)
    assert not v.completed and not v.hung
    assert v.exit_code not in (None, 0)
    assert v.error_lines and any("error while loading state" in ln for ln in v.error_lines), v.stderr


@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_machine_type_mismatch_is_rejected(qemu, capture, version):
    cap = capture(version, SHARED_MACHINE)
    v = load_stream(qemu(version), cap.path, machine="pc-q35-7.2")
    assert not v.completed and v.exit_code not in (None, 0)
    assert any("Machine type received is" in ln for ln in v.error_lines), v.stderr


def test_destination_lacking_machine_type(qemu, capture):
    cap = capture("10.0", "pc-i440fx-10.0")
    v = load_stream(qemu("7.2"), cap.path, machine="pc-i440fx-10.0")
    assert not v.completed and v.status is None and v.exit_code == 1
    assert any("unsupported machine type" in ln for ln in v.error_lines), v.stderr


def test_exec_transport_quotes_the_path(qemu, tmp_path):
    out = tmp_path / "a b'c;$(x).mig"
    cap = capture_stream(qemu("7.2"), out, machine=SHARED_MACHINE, transport="exec")
    assert out.read_bytes()[:4] == b"QEVM" and cap.size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_file_backed_random_ram_survives_migration(qemu, tmp_path):
    mem_mb = 16
    ram = make_ram_file(tmp_path / "ram.img", mem_mb, seed=7)
    zero = make_ram_file(tmp_path / "zero.img", mem_mb, content=b"")
    cap = capture_stream(qemu("7.2"), tmp_path / "s.mig", machine=SHARED_MACHINE, mem_mb=mem_mb, ram_file=ram)
    assert cap.size > mem_mb << 20  # random pages: none is sent as a zero page
    with start_destination(qemu("10.0"), machine=SHARED_MACHINE, mem_mb=mem_mb, ram_file=zero) as dst:
        v = feed(dst, cap.path)
        assert v.completed, v.error_lines
        dst.cmd("pmemsave", val=1 << 20, size=(mem_mb - 1) << 20, filename=str(tmp_path / "dst.bin"))
    # above 1 MiB guest-physical is plain RAM (below, BIOS ROMs shadow it)
    assert (tmp_path / "dst.bin").read_bytes() == ram.read_bytes()[1 << 20:]
    assert zero.read_bytes().count(0) == mem_mb << 20  # share=off: the backing file is untouched


def test_stalled_stream_is_reported_as_hung(qemu, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: `cat` blocks, the destination waits for data forever
    v = load_stream(qemu("10.0"), fifo, machine=SHARED_MACHINE, timeout=1.5)
    assert v.hung and not v.completed and v.exit_code is None
    assert v.status in ("setup", "active")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(fifo) not in ps  # the exec: helper died with QEMU


# ------------------------------------------------------------------ QMP events and out-of-band commands

@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_events_and_out_of_band_commands(qemu, version):
    """cont on a stopped (-S) guest announces RESUME, stop announces STOP, quit SHUTDOWN;
    the events stay readable once the process is gone. exec-oob reaches QEMU's dispatcher,
    which refuses commands not marked allow-oob (monitor/qmp-dispatch.c)."""
    with QemuProcess(qemu(version), ["-machine", SHARED_MACHINE], cmd_timeout=10.0) as q:
        assert q.events() == []
        q.cmd("cont")
        assert q.wait_event("RESUME", 5.0)["event"] == "RESUME"
        seen = len(q.events())
        q.cmd("stop")
        assert q.wait_event("STOP", 5.0, since=seen)["event"] == "STOP"
        with pytest.raises(QemuTimeout):
            q.wait_event("RESUME", 0.2, since=seen)  # the earlier RESUME is before `since`
        with pytest.raises(QmpCommandError, match="does not support OOB"):
            q.execute_oob("query-status")
        with pytest.raises(QmpCommandError) as e:  # allowed out of band; refused only for the state
            q.execute_oob("migrate-pause")
        assert "OOB" not in e.value.desc and "postcopy" in e.value.desc
        q.cmd("quit")
        assert q.wait_event("SHUTDOWN", 5.0)["event"] == "SHUTDOWN"
    assert not q.alive()
    assert [e["event"] for e in q.events()] == ["RESUME", "STOP", "SHUTDOWN"]


# ------------------------------------------------------------------ process hygiene

def test_process_errors_and_cleanup(qemu):
    b = qemu("7.2")
    with pytest.raises(QemuExited, match="unsupported machine type") as e:
        with QemuProcess(b, ["-machine", "no-such-machine"]):
            pass
    assert e.value.returncode == 1
    with QemuProcess(b, ["-machine", SHARED_MACHINE]) as q:
        pid = q.pid
        assert q.cmd("query-status")["status"] == "prelaunch"
        with pytest.raises(QmpCommandError, match="no-such-command"):
            q.cmd("no-such-command")
        q.cmd("migrate", uri="exec:exit 3")  # the reader goes away: the source must report failure
        with pytest.raises(MigrationFailed):
            q.wait_migration(timeout=10)
    assert not q.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_fixture_fails_missing_binary_only_under_ci(tmp_path):
    test = tmp_path / "test_inner.py"
    test.write_text(textwrap.dedent("""
        def test_absent(qemu):
            qemu("9.9")
    """))
    root = Path(__file__).resolve().parent.parent
    runs = {}
    for ci in ("", "true"):
        env = {**os.environ, "CI": ci, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # only this plugin: fast
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                            "-p", "tests.qemu_fixtures", "--rootdir", str(tmp_path), str(test)],
                           cwd=root, env=env, capture_output=True, text=True, timeout=60)
        runs[ci] = r
    assert runs[""].returncode == 0 and "1 skipped" in runs[""].stdout, runs[""].stdout
    assert runs["true"].returncode == 1 and "1 failed" in runs["true"].stdout, runs["true"].stdout
    assert "QEMU 9.9 not found" in runs["true"].stdout
