"""`migconform matrix`: the grid, outcomes, explanations and reports (no QEMU needed), and
one real-QEMU test per cell of a bounded grid (both directions between 7.2 and 10.0, plus
same-version cells): the real outcome must be what the compat model and the checker
predict, or be a known, explained finding (strict xfail)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess

import pytest

from conformance.rules import compat
from conformance.tools.matrix import (
    CAPABILITY_SETS,
    DEFAULT_CAPS,
    DEFAULT_DEVICES,
    EXCLUDED_CAPABILITIES,
    MATRIX_DEVICE_SETS,
    CaptureStore,
    CellResult,
    CellSpec,
    CheckerVerdict,
    MatrixError,
    MatrixResult,
    Outcome,
    add_matrix_parser,
    build_grid,
    default_machines,
    explain_cell,
    failing_section,
    load_into,
    outcome_of_exception,
    outcome_of_verdict,
    parse_caps,
    predict_cell,
    run_cell,
)
from conformance.tools.matrix.command import split_values
from conformance.tools.matrix.grid import EXTRA_DEVICE_SETS
from conformance.tools.matrix.report import ProgressBar, cell_text, format_text, render_html
from conformance.qemu import DEVICE_SETS, LoadVerdict, MigrationFailed, QemuExited, QemuTimeout, QmpCommandError


from conformance.pytest_plugin import MATRIX_CELL_PROPERTY  # noqa: E402

MATRIX = pytest.mark.matrix
VERSIONS = ("7.2", "10.0")


# ---------------------------------------------------------------- the grid (no QEMU)

def test_default_grid_shape():
    grid = build_grid(VERSIONS)
    assert grid.machines == ("pc-i440fx-2.12", "pc-q35-2.12", "pc-i440fx-5.2", "pc-q35-5.2", "pc-i440fx-7.2",
                             "pc-q35-7.2", "pc-i440fx-10.0", "pc-q35-10.0")
    assert grid.devices == DEFAULT_DEVICES == MATRIX_DEVICE_SETS
    assert set(DEVICE_SETS) < set(MATRIX_DEVICE_SETS) and len(MATRIX_DEVICE_SETS) == 4
    assert grid.caps == DEFAULT_CAPS
    cells = grid.cells()
    assert len(cells) == 8 * 4 * 3 * 4 == len({c.id for c in cells})
    assert "7.2->10.0/pc-q35-7.2/virtio-net+virtio-blk/none" in {c.id for c in cells}
    # the cells of one capture are adjacent, so a capture serves its destinations in a row
    keys = [c.capture_key for c in cells]
    assert len(set(keys)) == len([k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k])


def test_default_machines_add_each_versions_newest():
    assert default_machines(["7.2"]) == ["pc-i440fx-2.12", "pc-q35-2.12", "pc-i440fx-5.2", "pc-q35-5.2",
                                         "pc-i440fx-7.2", "pc-q35-7.2"]
    ms = default_machines(["7.2", "10.0"])
    assert ms[-2:] == ["pc-i440fx-10.0", "pc-q35-10.0"]
    assert not compat.load("7.2").has_machine("pc-q35-10.0")


def test_parse_caps():
    assert parse_caps("none") == ()
    assert parse_caps("validate-uuid") == ("validate-uuid",)
    assert parse_caps("x-ignore-shared+xbzrle") == ("x-ignore-shared", "xbzrle")
    assert parse_caps("events+events") == ("events",)
    for name in CAPABILITY_SETS:
        parse_caps(name)
    with pytest.raises(MatrixError, match="return-path.*Bad file descriptor"):
        parse_caps("return-path")
    # multifd cells migrate over TCP into a live destination (matrix/direct.py); postcopy-ram is a mode
    assert parse_caps("xbzrle+multifd") == ("xbzrle", "multifd")
    with pytest.raises(MatrixError, match="postcopy-ram.*--modes postcopy"):
        parse_caps("multifd+postcopy-ram")
    with pytest.raises(MatrixError, match="unknown capability 'bogus'"):
        parse_caps("bogus")
    assert set(EXCLUDED_CAPABILITIES) <= set(compat.capabilities().capabilities)


def test_build_grid_rejects_bad_names():
    with pytest.raises(MatrixError, match="no compat data"):
        build_grid(["6.1"])
    with pytest.raises(MatrixError, match="pc-q35-99.0"):
        build_grid(VERSIONS, machines=["pc-q35-99.0"])
    with pytest.raises(MatrixError, match="unknown device set 'nic'"):
        build_grid(VERSIONS, devices=["nic"])
    with pytest.raises(MatrixError, match="unknown capability"):
        build_grid(VERSIONS, caps=["nope"])
    # a machine type only one version has is a valid row (its other cells are expected failures)
    assert build_grid(VERSIONS, machines=["pc-i440fx-2.3"]).machines == ("pc-i440fx-2.3",)


# ---------------------------------------------------------------- outcomes and verdicts (no QEMU)

def _verdict(**kw) -> LoadVerdict:
    d = dict(completed=False, status="failed", exit_code=1, stderr="", error_lines=[], hung=False,
             version="7.2.22", duration=0.1)
    d.update(kw)
    return LoadVerdict(**d)


def test_outcome_of_verdict():
    assert outcome_of_verdict(_verdict(completed=True, status="completed", exit_code=None)).kind == "completed"
    o = outcome_of_verdict(_verdict(error_lines=[
        "warning: hub 0 is not connected to host network",
        "Unknown savevm section or instance '0000:00:02.0/virtio-net' 0. Make sure that your current VM setup "
        "matches your saved VM setup, including any hotplugged devices",
        "load of migration failed: Invalid argument"]))
    assert (o.kind, o.side) == ("failed", "destination")
    assert o.message.startswith("Unknown savevm section or instance")
    assert outcome_of_verdict(_verdict(hung=True, status="active", exit_code=None)).kind == "hung"
    o = outcome_of_verdict(_verdict(status=None, error_lines=["-machine pc-q35-10.0: unsupported machine type",
                                                              "Use -machine help to list supported machines"]))
    assert (o.kind, o.message) == ("unsupported-machine", "-machine pc-q35-10.0: unsupported machine type")
    # status None: died before the first query-migrate answered, while starting or at once in the load
    assert outcome_of_verdict(_verdict(status=None, error_lines=["Unknown savevm section or instance 'x' 0"])
                              ).kind == "failed"


def test_outcome_of_exception():
    e = QemuExited("QEMU 7.2 exited", 1, "qemu-system-x86_64: -machine pc-q35-10.0: unsupported machine type\n"
                                         "Use -machine help to list supported machines\n")
    o = outcome_of_exception(e, "source")
    assert (o.kind, o.side, o.message) == ("unsupported-machine", "source", "-machine pc-q35-10.0: unsupported machine type")
    o = outcome_of_exception(QmpCommandError("migrate-set-capabilities", "GenericError",
                                             "Parameter 'capability' does not accept value 'mapped-ram'"), "source")
    assert (o.kind, o.message) == ("refused", "Parameter 'capability' does not accept value 'mapped-ram'")
    o = outcome_of_exception(MigrationFailed("failed", {"error-desc": "Unable to write to file"}), "source")
    assert (o.kind, o.message) == ("failed", "Unable to write to file")
    assert outcome_of_exception(QemuTimeout("migration still 'active' after 30 s"), "source").kind == "hung"
    assert outcome_of_exception(RuntimeError("boom"), "destination").kind == "error"


def test_failing_section_reads_qemu_texts():
    assert failing_section(["error while loading state section id 5(0000:00:02.0/virtio-net)",
                            "error while loading state for instance 0x0 of device '0000:00:02.0/virtio-net'",
                            "load of migration failed: Invalid argument"]) == \
        {"kind": "load", "idstr": "0000:00:02.0/virtio-net", "instance_id": 0}
    assert failing_section(["Unknown savevm section or instance 'kvmclock' 0. Make sure that ..."]) == \
        {"kind": "unknown", "idstr": "kvmclock", "instance_id": 0}
    v = failing_section(["savevm: unsupported version 4 for 'timer' v2"])
    assert (v["kind"], v["idstr"], v["stream_version"], v["local_version"]) == ("version", "timer", 4, 2)
    assert failing_section(["Missing section footer for apic"])["idstr"] == "apic"
    assert failing_section(["error while loading state section id 2(ram)"])["idstr"] == "ram"
    assert failing_section(["Unknown ramblock \"0000:00:02.0/virtio-net-pci.rom\", cannot accept migration",
                            "error while loading state for instance 0x0 of device 'ram'"]) == \
        {"kind": "ramblock", "idstr": "ram", "instance_id": 0, "block": "0000:00:02.0/virtio-net-pci.rom"}
    v = failing_section(["Length mismatch: pc.ram: 0x8000000 in != 0x4000000: Invalid argument"])
    assert (v["block"], v["stream_length"], v["local_length"]) == ("pc.ram", 0x8000000, 0x4000000)
    assert failing_section(["load of migration failed: Input/output error"]) is None


def _cell(src="7.2", dst="10.0", machine="pc-q35-7.2", devices="none", caps="none", *, real="completed",
          side="destination", message="", model=True, checker=True, explanation=None, violations=()) -> CellResult:
    spec = CellSpec(src, dst, machine, devices, caps)
    return CellResult(spec, Outcome(real, side, message or real, [message] if message else [], 0.12),
                      compat.Prediction(model, [] if model else ["destination QEMU 7.2: unsupported machine type 'x'"],
                                        ["pc-i440fx-2.12 is deprecated"] if not model else []),
                      CheckerVerdict(checker, list(violations), "conforms" if checker else "rejects"),
                      src_version=src + ".1", dst_version=dst + ".2", capture_bytes=1000, capture_seconds=0.1,
                      explanation=explanation or {})


def test_cell_verdicts():
    assert _cell().verdict == "pass"
    c = _cell(real="unsupported-machine", model=False, checker=False)
    assert (c.verdict, c.disagreeing) == ("expected-fail", [])
    c = _cell(real="failed", message="load of migration failed")
    assert (c.verdict, c.disagreeing) == ("disagree", ["model", "checker"])
    c = _cell(real="completed", checker=False)
    assert (c.verdict, c.disagreeing) == ("disagree", ["checker"])
    c = _cell(real="unsupported-machine", side="source", model=False, checker=None)
    assert (c.verdict, c.checker_agrees) == ("expected-fail", None)
    assert _cell(real="error", model=False, checker=None).verdict == "error"
    j = _cell(real="failed", message="x").as_json()
    assert j["id"] == "7.2->10.0/pc-q35-7.2/none/none" and j["verdict"] == "disagree"
    assert json.loads(json.dumps(j)) == j


# ---------------------------------------------------------------- reports (no QEMU)

def _synthetic_result() -> MatrixResult:
    grid = build_grid(VERSIONS, machines=["pc-q35-7.2", "pc-q35-10.0"], devices=["none", "e1000+usb"],
                      caps=["none", "x-ignore-shared"])
    cells = []
    for spec in grid.cells():
        kw: dict = {}
        if spec.machine == "pc-q35-10.0" and "7.2" in (spec.src, spec.dst):
            side = "source" if spec.src == "7.2" else "destination"
            kw = dict(real="unsupported-machine", side=side, message="-machine pc-q35-10.0: unsupported machine type",
                      model=False, checker=None if side == "source" else False,
                      explanation={"summary": f"QEMU 7.2 ({side}) has no machine type pc-q35-10.0", "details": []})
        elif spec.id == "10.0->7.2/pc-q35-7.2/e1000+usb/x-ignore-shared":
            kw = dict(real="failed", message="error while loading state for instance 0x0 of device '0000:00:02.0/e1000'"
                                             " <script>alert(1)</script>",
                      explanation={"summary": "QEMU 7.2 destination failed at '0000:00:02.0/e1000' (section 5, version 2, "
                                              "byte 4242): the destination (QEMU 7.2) has no section", "details": [
                                                  "source stream (QEMU 10.0): section 5 '0000:00:02.0/e1000' ...",
                                                  "  mac_reg = [1, 2, 3]"]},
                      violations=[{"code": "missing-vmdescription", "severity": "deviation", "channel": "main",
                                   "offset": 4242, "message": "no VMDESCRIPTION <b>", "section": None}])
        elif spec.id == "7.2->7.2/pc-q35-7.2/none/none":
            kw = dict(real="error", model=True, checker=None, message="QMP query-migrate: connection lost")
        cells.append(_cell(spec.src, spec.dst, spec.machine, spec.devices, spec.caps, **kw))
    return MatrixResult(grid, cells, {"7.2": "7.2.22", "10.0": "10.0.2"}, {"mem_mb": 64, "globals": []}, 12.5)


def test_report_text_and_json():
    res = _synthetic_result()
    assert res.counts() == {"pass": 18, "expected-fail": 12, "disagree": 1, "error": 1}
    assert res.exit_code == 1
    data = json.loads(json.dumps(res.as_json()))
    assert data["summary"]["cells"] == 2 * 2 * 2 * 4
    assert data["grid"]["capabilities"] == {"none": [], "x-ignore-shared": ["x-ignore-shared"]}
    text = format_text(data)
    assert text == format_text(res)
    assert "capabilities: none" in text and "capabilities: x-ignore-shared" in text
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("pc-q35-10.0") and "e1000+usb" in ln)
    assert row.split()[-4:] == ["xfail", "xfail", "xfail", "pass"]
    assert "findings: 2 cells in 2 groups" in text
    assert "* 1 cell 10.0→7.2: real failed, model: compatible; checker: accepts — the model and checker are wrong" in text
    assert "10.0->7.2/pc-q35-7.2/e1000+usb/x-ignore-shared  [disagree]" in text
    assert "disagrees: model, checker" in text
    assert "* 1 cell 7.2→7.2: real error, model: compatible; checker: n/a\n" in text
    assert text.rstrip().endswith("32 cells: 18 pass, 12 expected-fail, 1 disagree, 1 error in 12.5 s")
    assert "\x1b[" not in text and "\x1b[1;31mDIFF" in format_text(data, color=True)


def test_report_html_is_self_contained_and_escaped():
    page = render_html(_synthetic_result())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"src=|href=['\"]?[^'\"#]|https?://|@import", page)  # nothing to fetch; links are #anchors
    assert "href='#cell-10.0-_7.2_pc-q35-7.2_e1000+usb_x-ignore-shared'" in page
    assert "id='cell-10.0-_7.2_pc-q35-7.2_e1000+usb_x-ignore-shared'" in page
    assert page.count("<table>") == 2  # one per capability set
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "no VMDESCRIPTION &lt;b&gt;" in page
    assert page.count("class='c disagree'") == 1 and page.count("class='c error'") == 1
    assert page.count("class='c expected-fail'") == 12 and page.count("class='c pass'") == 18
    assert "7.2→10.0" in page and "1 disagreement and 1 cell without a verdict</b>, in 2 groups" in page
    assert "mac_reg = [1, 2, 3]" in page  # the explanation travels with the cell


def test_findings_are_grouped():
    from conformance.tools.matrix.report import group_findings

    v = {"code": "missing-footer", "severity": "reject", "channel": "main", "offset": 345433,
         "message": "Missing section footer for timer", "section": "timer (id 0)"}
    cells = [_cell("7.2", "7.2", m, d, "none", checker=False, violations=[v]).as_json()
             for m in ("pc-i440fx-2.0", "pc-i440fx-2.2") for d in ("none", "e1000+usb")]
    cells.append(_cell("7.2", "10.0", "pc-i440fx-2.3", real="unsupported-machine", model=False).as_json())
    cells.append(_cell().as_json())
    groups = group_findings(cells)
    assert [len(g) for g in groups] == [4, 1]
    text = format_text({**_synthetic_result().as_json(), "cells": cells})
    assert "* 4 cells 7.2→7.2: real completed, model: compatible; checker: rejects (missing-footer [timer]) — the " \
           "checker is wrong" in text
    assert "cells: pc-i440fx-2.0/none/none, pc-i440fx-2.0/e1000+usb/none, pc-i440fx-2.2/none/none" in text


def test_progress_bar():
    out = io.StringIO()  # not a terminal: plain lines, one every `every` seconds (0: each update)
    bar = ProgressBar(4, enabled=True, stream=out, every=0)
    bar.update(_cell(), 1)
    bar.update(_cell(real="failed"), 2)
    assert out.getvalue().splitlines() == ["matrix: 1/4 cells  0 disagree", "matrix: 2/4 cells  1 disagree"]
    bar.close()
    slow = io.StringIO()
    bar = ProgressBar(4, enabled=True, stream=slow, every=3600)
    bar.update(_cell(), 1)
    assert slow.getvalue() == ""  # a log gets a line every few seconds, not one per cell
    quiet = io.StringIO()
    bar = ProgressBar(4, enabled=False, stream=quiet)
    bar.update(_cell(), 1)
    bar.close()
    assert quiet.getvalue() == "" and bar.counts["pass"] == 1


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_html_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no chromium under CI: scripts/setup.sh installs it", pytrace=False)
        pytest.skip("no chromium: apt-get install -y chromium (scripts/setup.sh does)")
    page = tmp_path / "report.html"
    page.write_text(render_html(_synthetic_result()))
    png = tmp_path / "report.png"
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        f"--screenshot={png}", "--window-size=1400,1000", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    head = png.read_bytes()
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


# ---------------------------------------------------------------- command line (no QEMU run)

def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="migconform")
    add_matrix_parser(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["matrix", *argv])


def test_parser_defaults_and_lists():
    a = _args("--qemu", "7.2", "--qemu", "10.0", "--machines", "pc-q35-7.2", "pc-i440fx-7.2,pc-q35-5.2",
              "--caps", "none", "--caps", "validate-uuid")
    assert a.qemu == ["7.2", "10.0"] and a.workers == 2 and a.json is None and a.html is None
    assert split_values(a.machines) == ["pc-q35-7.2", "pc-i440fx-7.2", "pc-q35-5.2"]
    assert split_values(a.caps) == ["none", "validate-uuid"]


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--global", "nodot=1"], "expected DRIVER.PROPERTY=VALUE"),
    (["--qemu", "7.2=/nonexistent/qemu-system-x86_64"], "/nonexistent/qemu-system-x86_64: no such file"),
    (["--qemu", "latest"], "--qemu takes VERSION or VERSION=PATH"),
    (["--qemu", "9.9=/nonexistent/q"], "no such file"),
])
def test_cmd_matrix_usage_errors(argv, message, capsys):
    a = _args(*argv)
    assert a.func(a) == 2
    err = capsys.readouterr().err
    assert err.startswith("migconform: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- real QEMU

# The bounded grid of the real-QEMU test: the default grid plus two machine types only 7.2
# has, framed the legacy way (no configuration record, no section footers), where the known
# findings below live.
LEGACY_MACHINES = ("pc-i440fx-2.2", "pc-i440fx-2.3")
TEST_GRID = build_grid(VERSIONS, machines=list(default_machines(VERSIONS)) + list(LEGACY_MACHINES),
                       devices=list(DEFAULT_DEVICES), caps=list(DEFAULT_CAPS))
NO_VMDESC_MACHINES = ("pc-i440fx-2.0", "pc-i440fx-2.1", "pc-i440fx-2.2")  # QEMU 7.2 suppresses the trailer
# Cells outside the grid that document a finding of their own.
EXTRA_CELLS = (CellSpec("7.2", "7.2", "pc-q35-7.2", "virtio-net+virtio-blk", "block"),)


def known_finding(spec: CellSpec) -> str | None:
    """The explained disagreements this grid is known to have (checker findings, all on
    machine types <= 2.3, which only QEMU 7.2 offers). Strict xfail: a fix makes them fail."""
    if spec.caps == "block" and spec.devices == "virtio-net+virtio-blk" and spec.src == spec.dst == "7.2":
        return ("model: predicts compatible, but 7.2's block migration names disks by BlockBackend name and a "
                "-blockdev disk has none: 'Error unknown block device' (the same disk as -drive id=... migrates)")
    # The checker's findings on machine types <= 2.3 (footer-less bodies without a trailer,
    # x-ignore-shared without a configuration record, machine types 10.0 lacks) are fixed:
    # their cells are ordinary ones now.
    return None


def _params():
    out = []
    for spec in TEST_GRID.cells() + list(EXTRA_CELLS):
        why = known_finding(spec)
        marks = [pytest.mark.xfail(reason=why, strict=True, raises=AssertionError)] if why else []
        out.append(pytest.param(spec, id=spec.id, marks=marks))
    return out


@pytest.fixture(scope="session")
def matrix_store(qemu, tmp_path_factory) -> CaptureStore:
    """Captures shared by every cell, and by pytest-xdist workers (a lock file per capture)."""
    binaries = {v: qemu(v) for v in VERSIONS}
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's common folder, above the worker's own
    return CaptureStore(base / "matrix-captures", binaries, mem_mb=64, timeout=30.0)


def test_bounded_grid_size():
    assert len(TEST_GRID.machines) >= 6 and len(TEST_GRID.devices) >= 4 and len(TEST_GRID.caps) >= 3
    assert len(TEST_GRID.cells()) == len(TEST_GRID.machines) * 4 * 3 * 4 == 480


@pytest.mark.qemu
@MATRIX
@pytest.mark.parametrize("spec", _params())
def test_cell(spec: CellSpec, matrix_store: CaptureStore, record_property):
    res = run_cell(spec, matrix_store)
    # for --matrix-json/--matrix-html: which worker ran it, and whether it came over ssh (a second host)
    record_property(MATRIX_CELL_PROPERTY, json.dumps({**res.as_json(), "worker": os.environ.get("PYTEST_XDIST_WORKER"),
                                                      "over_ssh": bool(os.environ.get("SSH_CONNECTION"))}))
    account = cell_text(res.as_json())
    assert res.verdict in ("pass", "expected-fail"), account
    if res.verdict == "expected-fail":
        assert res.explanation.get("summary"), account
    if res.real.kind == "unsupported-machine":
        assert "unsupported machine type" in res.real.message and spec.machine in res.explanation["summary"]


@pytest.mark.qemu
@MATRIX
def test_former_findings_on_legacy_machine_types_now_agree(matrix_store: CaptureStore):
    """The checker findings this matrix first found on machine types <= 2.3 are fixed:
    footer-less bodies without a trailer, x-ignore-shared without a configuration record,
    and a machine type the destination version lacks."""
    res = run_cell(CellSpec("7.2", "7.2", "pc-i440fx-2.2", "none", "none"), matrix_store)
    assert res.verdict == "pass" and res.real.kind == "completed" and res.checker.ok
    res = run_cell(CellSpec("7.2", "10.0", "pc-i440fx-2.3", "none", "none"), matrix_store)
    assert (res.real.kind, res.model.compatible, res.checker.ok) == ("unsupported-machine", False, False)
    assert res.verdict == "expected-fail"
    assert "has no machine type pc-i440fx-2.3" in res.explanation["summary"]
    res = run_cell(CellSpec("7.2", "7.2", "pc-i440fx-2.3", "none", "x-ignore-shared"), matrix_store)
    assert res.verdict == "pass" and res.real.kind == "completed"


def _load_elsewhere(store: CaptureStore, spec: CellSpec, extra_args: list[str]) -> Outcome:
    """Load the cell's capture into a destination started with other devices than the source:
    the grid itself never does that, but it makes a real load failure to explain."""
    cap = store.get(spec.capture_key)
    return load_into(store.binaries[spec.dst], cap.path, machine=spec.machine, devices="none", mem_mb=64, caps=(),
                     globals_=(), extra_args=extra_args, timeout=30)


def _explained(store: CaptureStore, spec: CellSpec, real: Outcome) -> dict:
    res = CellResult(spec, real, predict_cell(spec), CheckerVerdict(True, [], "conforms"))
    return explain_cell(res, store, store.get(spec.capture_key))


@pytest.mark.qemu
@MATRIX
def test_explains_a_missing_device_section(matrix_store: CaptureStore):
    """The destination lacks the source's virtio-rng: it fails at that section, which the
    explanation finds in the stream, with what the destination's -dump-vmstate knows."""
    spec = CellSpec("10.0", "7.2", "pc-q35-7.2", "ahci-cd+vga+serial+balloon+rng", "none")
    no_rng = list(EXTRA_DEVICE_SETS[spec.devices])
    assert no_rng[-2:] == ["-device", "virtio-rng-pci"]
    real = _load_elsewhere(matrix_store, spec, no_rng[:-2])
    assert real.kind == "failed" and "Unknown savevm section or instance" in real.message, real
    ex = _explained(matrix_store, spec, real)
    assert re.search(r"QEMU 7\.2 destination failed at '0000:00:0\d\.0/virtio-rng' \(section \d+, version \d+, "
                     r"byte \d+\): the destination \(QEMU 7\.2\) has no section", ex["summary"]), ex
    assert any(re.match(r"source stream \(QEMU 10\.0\): section \d+ '0000:00:0\d\.0/virtio-rng' instance 0", d)
               for d in ex["details"]), ex["details"]
    assert any("-dump-vmstate: vmsd 'virtio-rng'" in d for d in ex["details"]), ex["details"]
    assert ex["section"]["idstr"].endswith("/virtio-rng")


@pytest.mark.qemu
@MATRIX
def test_explains_a_missing_ram_block(matrix_store: CaptureStore):
    """Without the source's NIC the destination lacks its option-ROM RAM block."""
    spec = CellSpec("7.2", "10.0", "pc-i440fx-7.2", "virtio-net+virtio-blk", "none")
    real = _load_elsewhere(matrix_store, spec, [])
    assert real.kind == "failed" and real.message.startswith('Unknown ramblock "'), real
    ex = _explained(matrix_store, spec, real)
    assert re.search(r"QEMU 10\.0 destination failed at RAM block '0000:00:0\d\.0/virtio-net-pci\.rom' \(MEM_SIZE "
                     r"record of the ram section \d+, byte \d+\): the destination \(QEMU 10\.0\) has no RAM block",
                     ex["summary"]), ex
    assert any(re.match(r"source stream \(QEMU 7\.2\): MEM_SIZE lists RAM block '.*virtio-net-pci\.rom', "
                        r"used_length 0x[0-9a-f]+", d) for d in ex["details"]), ex["details"]


@pytest.mark.qemu
@MATRIX
def test_cmd_matrix_small_grid(qemu, tmp_path, capsys):
    for v in VERSIONS:
        qemu(v)
    a = _args("--machines", "pc-i440fx-7.2", "pc-q35-10.0", "--devices", "none", "--caps", "none",
              "--json", str(tmp_path / "m.json"), "--html", str(tmp_path / "m.html"), "--keep", str(tmp_path / "s"))
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "8 cells: 5 pass, 3 expected-fail, 0 disagree, 0 error" in out
    data = json.loads((tmp_path / "m.json").read_text())
    # (the id names the accelerator when it is not the default one, which depends on the host)
    assert [c["verdict"] for c in data["cells"] if c["id"].startswith("10.0->7.2/pc-q35-10.0/")] == ["expected-fail"]
    assert (tmp_path / "m.html").read_text().count("<table>") == 1
    assert list((tmp_path / "s").glob("*.mig"))
