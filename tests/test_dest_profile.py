"""The destination profile (rules/profile.py, cli/profile_options.py), the one-sided settings
table (rules/settings.py), channels and the return path per destination
(rules/dest_channels.py), and the differential against real one-sided 7.2 <-> 10.0
migrations (qemu/one_sided.py)."""

from __future__ import annotations

import io
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.check.manifest import ENUM_PARAMETERS, INT_PARAMETERS
from conformance.check.pipeline import check_capture, check_stream
from conformance.rules import compat
from conformance.rules.catalogue import CATALOGUE, Code, Severity
from conformance.rules.channels import MultifdChecker
from conformance.rules.returnpath import ReturnPathModel
from conformance.rules.sync import SyncSummary
from conformance.rules.profile import UnknownTarget, configure, parse_spec, profile
from conformance.rules.settings import FAILS, HANGS, LOADS, LOSES, ONE_SIDED, Side, judge_sides
from tests.test_loader import EOS, HEADER, MEM, cfg, footer, start
from wireformat.returnpath import RpMessage, build_message

ROOT = Path(__file__).resolve().parent.parent
MULTIFD = ROOT / "tests" / "data" / "multifd"
CAPS = frozenset(compat.capabilities().capabilities)
OLD, NEW = "7.2", "10.0"

# a stream of two device sections and RAM, with or without footers / configuration
TIMER, CPU = b"\x00" * 24, b"\x00" * 8  # bodies as the destination's own layouts read them
DESC = b'{"page_size": 4096, "devices": []}'
TRAILER = b"\x06" + len(DESC).to_bytes(4, "big") + DESC  # VMDESCRIPTION


def stream(*, footers: bool = True, configuration: bool = True) -> bytes:
    f = footer if footers else (lambda sid: b"")
    return (HEADER + (cfg() if configuration else b"") + start(1, b"ram", 4) + MEM + EOS + f(1)
            + start(2, b"timer", 2, kind=4) + TIMER + f(2) + start(3, b"cpu_common", 1, kind=4) + CPU + f(3) + b"\x00" + TRAILER)


def judged(data: bytes, target):
    return [(v.code, v.severity) for v in check_stream(io.BytesIO(data), target=target).violations]


# ---------------------------------------------------------------- the table

def test_every_row_names_a_real_setting_and_a_catalogued_outcome():
    params = set(INT_PARAMETERS) | set(ENUM_PARAMETERS)
    for row in ONE_SIDED:
        if row.kind == "global":
            assert row.name.partition(".")[2] in compat.WIRE_PROPERTIES, row
        elif row.kind == "capability":
            assert row.name in CAPS, row
        else:
            assert row.kind == "parameter" and row.name in params, row
        assert set(row.shared) <= CAPS
        for e in (row.source_only, row.dest_only):
            assert e.result in (LOADS, FAILS, HANGS, LOSES) and e.qemu
            if e.result == LOADS:
                assert e.code is None
            else:  # the code's severity says what the effect is
                want = Severity.SILENT_LOSS if e.result == LOSES else Severity.REJECT
                assert CATALOGUE[e.code].severity is want, (row.name, e)


M = "pc-q35-7.2"


def test_judge_sides_follows_the_real_outcomes():
    foot = {"migration.send-section-footer": "off"}
    f = judge_sides(Side(OLD, M, foot), Side(NEW, M))
    assert [(x.only, x.effect.code) for x in f] == [("source", Code.MISSING_FOOTER)]
    assert "--dest-global migration.send-section-footer=off" in f[0].message
    assert judge_sides(Side(OLD, M, foot), Side(NEW, M, foot)) == []
    assert judge_sides(Side(OLD, M, foot), Side(NEW, M), stream_judged=True) == []  # the Loader says it
    # the machine type's own value is no one-sided setting: 10.0's pc-q35-10.0 flushes on FLUSH records already
    flush_off = {"migration.multifd-flush-after-each-section": "off"}
    mf = {"multifd": True}
    assert judge_sides(Side(NEW, "pc-q35-10.0", flush_off, mf), Side(NEW, "pc-q35-10.0", {}, mf)) == []
    f = judge_sides(Side(NEW, M, flush_off, mf), Side(NEW, M, {}, mf))
    assert [x.effect.code for x in f] == [Code.ONE_SIDED_SETTING]
    assert judge_sides(Side(NEW, M, flush_off, mf), Side(OLD, M, {}, mf)) == []  # 7.2 fails on the record itself
    assert judge_sides(Side(NEW, M, flush_off), Side(NEW, M)) == []  # without multifd it changes nothing
    # switchover-ack on the source alone: only a running guest waits for the ack
    rp, ack = {"return-path": True}, {"return-path": True, "switchover-ack": True}
    assert [x.effect.result for x in judge_sides(Side(NEW, M, {}, ack, running=True), Side(OLD, M, {}, rp))] == [HANGS]
    assert judge_sides(Side(NEW, M, {}, ack, running=False), Side(OLD, M, {}, rp)) == []
    # ... on the destination alone: a source that does not know SWITCHOVER_ACK fails
    assert [x.effect.code for x in judge_sides(Side(OLD, M, {}, rp), Side(NEW, M, {}, ack))] == [Code.RP_MALFORMED]
    assert judge_sides(Side(NEW, M, {}, rp), Side(NEW, M, {}, ack)) == []
    # channels: a destination waiting for more hangs
    f = judge_sides(Side(OLD, M, {}, mf), Side(NEW, M, {}, mf, {"multifd-channels": 4}))
    assert [(x.effect.result, x.effect.code) for x in f] == [(HANGS, Code.MULTIFD_CHANNELS_MISSING)]
    assert "multifd-channels=2" in f[0].message
    assert [x.effect.code for x in judge_sides(Side(OLD, M), Side(NEW, M, {}, mf))] == [Code.MULTIFD_CHANNELS_MISSING]
    # zero pages in packets: lost on a destination that ignores the list only
    zp = {"zero-page-detection": "multifd"}
    assert [x.effect.code for x in judge_sides(Side(NEW, M, {}, mf, zp), Side(OLD, M, {}, mf))] == \
        [Code.MULTIFD_ZERO_PAGES_IGNORED]
    assert judge_sides(Side(NEW, M, {}, mf, zp), Side(NEW, M, {}, mf)) == []
    assert judge_sides(Side(NEW, M, {}, {"return-path": True}), Side(OLD, M)) == []  # return-path alone: loads


# ---------------------------------------------------------------- the profile

def test_spec_and_machine_aliases_per_version():
    p = parse_spec(f"{OLD},machine=pc,migration.send-section-footer=off,return-path=on,multifd-channels=4", CAPS)
    assert (p.version, p.machine) == (OLD, "pc-i440fx-7.2")
    assert p.globals == {"migration.send-section-footer": "off"} and not p.footers and p.expects_configuration
    assert p.capabilities == {"return-path": True} and p.parameters == {"multifd-channels": 4}
    assert configure(NEW, machine="q35").machine == "pc-q35-10.0"
    assert configure(NEW, machine="pc").machine == "pc-i440fx-10.0"
    assert configure(NEW, machine="pc-q35-7.2").machine == "pc-q35-7.2"
    assert not configure(NEW).configured and profile(NEW).footers
    for bad in ("9.9", f"{NEW},machine", f"{NEW},return-path=4"):
        with pytest.raises(UnknownTarget):
            parse_spec(bad, CAPS)


def test_footerless_stream_is_said_once_and_conforms_for_a_destination_configured_so():
    data = stream(footers=False)
    v = check_stream(io.BytesIO(data), target=NEW).violations
    assert [x.code for x in v] == [Code.MISSING_FOOTER]  # once, not per section
    assert "Missing section footer for ram" in v[0].message and "migration.send-section-footer=off" in v[0].message
    off = configure(NEW, globals={"migration.send-section-footer": "off"})
    assert judged(data, off) == []
    # footers into a destination started without them: QEMU's type 126, once
    v = check_stream(io.BytesIO(stream()), target=off).violations
    assert [x.code for x in v] == [Code.UNKNOWN_SECTION_TYPE] and "126" in v[0].message
    # a stream that had footers and then misses one is broken, not one-sided
    broken = stream()
    i = broken.index(footer(2))
    v = check_stream(io.BytesIO(broken[:i] + broken[i + 5:]), target=NEW).violations
    assert [x.code for x in v] == [Code.MISSING_FOOTER] and "send-section-footer" not in v[0].message


def test_configuration_setting_on_either_side():
    bare = stream(configuration=False)
    v = check_stream(io.BytesIO(bare), target=NEW, machine=M).violations
    assert [x.code for x in v] == [Code.CONFIGURATION_MISSING] and "send-configuration=off" in v[0].message
    off = configure(NEW, machine=M, globals={"migration.send-configuration": "off"})
    assert judged(bare, off) == []
    v = check_stream(io.BytesIO(stream()), target=off).violations
    assert [x.code for x in v] == [Code.UNKNOWN_SECTION_TYPE] and "type 7" in v[0].message


def _capture(name: str):
    main = io.BytesIO(lzma.decompress((MULTIFD / f"{name}.main.bin.xz").read_bytes()))
    chans = [(f"multifd{i}", io.BytesIO(lzma.decompress((MULTIFD / f"{name}.multifd{i}.bin.xz").read_bytes())))
             for i in range(2)]
    return main, chans


def test_channels_per_destination():
    # a real 10.0 capture (2 channels, zero pages in packets)
    codes = lambda rep: [v.code for v in rep.violations]  # noqa: E731
    rep = check_capture(*_capture("qemu100-i440fx-10.0"), target=configure(NEW, parameters={"multifd-channels": 4}))
    assert codes(rep) == [Code.MULTIFD_CHANNELS_MISSING] and "multifd-channels=2" in rep.violations[0].message
    assert codes(check_capture(*_capture("qemu100-i440fx-10.0"), target=configure(NEW, capabilities={"multifd": True}))) == []
    # 7.2 ignores the zero-page list of 10.0's packets: said once, silent loss
    rep = check_capture(*_capture("qemu100-i440fx-10.0"), target=OLD)
    lost = [v for v in rep.violations if v.code is Code.MULTIFD_ZERO_PAGES_IGNORED]
    assert len(lost) == 1 and lost[0].severity is Severity.SILENT_LOSS
    # 7.2's own packets list no zero pages
    assert Code.MULTIFD_ZERO_PAGES_IGNORED not in codes(check_capture(*_capture("qemu72-i440fx-7.2"), target=OLD))
    # the checker alone: one channel for a destination set for two
    c = MultifdChecker(SyncSummary(0, 0, {}), destination_channels=2)
    c.close()
    assert [v.code for v in c.violations] == [Code.MULTIFD_CHANNELS_MISSING]


def test_return_path_judged_by_the_source_version():
    ack = RpMessage(offset=0, type=7, data=b"")
    for version, bad in ((OLD, True), (NEW, False)):
        model = ReturnPathModel(NEW, source_version=version)
        got = [v.code for v in model.feed(ack)]
        assert got == ([Code.RP_MALFORMED] if bad else []), version
    rp = io.BytesIO(build_message(ack))
    rep = check_stream(io.BytesIO(stream()), target=NEW, source=Side(OLD), return_path=rp)
    assert [v.code for v in rep.violations] == [Code.RP_MALFORMED]
    assert "0x0007" in rep.violations[0].message


# ---------------------------------------------------------------- check and the plugin

def _cli(*args) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def test_check_takes_the_profile(tmp_path):
    f = tmp_path / "nofooter.bin"
    f.write_bytes(stream(footers=False))
    code, out, _ = _cli("check", str(f), "--json")
    assert code == 1 and [v["code"] for v in json.loads(out)["violations"]] == ["missing-footer"]
    for opts in (["--dest-global", "migration.send-section-footer=off"],
                 ["--dest", f"{OLD},machine=pc,migration.send-section-footer=off"]):
        code, out, _ = _cli("check", str(f), "--json", *opts)
        assert code == 0 and json.loads(out)["verdict"] == "conforms", opts
    assert json.loads(_cli("check", str(f), "--json", "--dest", f"{OLD},migration.send-section-footer=off")[1])["target"] == OLD
    # the machine type as the destination resolves the alias, then compared as QEMU compares
    out = json.loads(_cli("check", str(f), "--json", "--dest", f"{OLD},machine=q35,migration.send-section-footer=off")[1])
    assert [v["message"] for v in out["violations"]] == ["Machine type received is 'pc-i440fx-7.2' and local is 'pc-q35-7.2'"]
    code, out, err = _cli("check", str(f), "--dest", "9.9")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "9.9" in err
    code, out, err = _cli("check", str(f), "--dest-parameter", "nonsense=1")
    assert code == 2 and "nonsense" in err and "Traceback" not in err
    code, out, err = _cli("check", str(f), "--dest-qmp", str(tmp_path / "no-such.sock"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, _ = _cli("check", str(f), "--json", "--dest-global", "migration.send-section-footer=off",
                        "--source-version", OLD, "--source-global", "migration.send-section-footer=off",
                        "--source-capability", "switchover-ack", "--source-capability", "return-path",
                        "--dest-capability", "return-path")
    assert code == 1 and [v["code"] for v in json.loads(out)["violations"]] == ["one-sided-setting"]


pytest_plugins = ["pytester"]


def test_plugin_takes_the_same_profile(pytester, monkeypatch):
    d = pytester.path / "caps"
    d.mkdir()
    (d / "nofooter.bin").write_bytes(stream(footers=False))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    base = ["-p", "no:cacheprovider", "-p", "conformance.pytest_plugin", f"--captures={d}"]
    r = pytester.runpytest_subprocess(*base, timeout=120)
    r.assert_outcomes(failed=1)  # as check rejects it
    assert "missing-footer" in r.stdout.str()
    r = pytester.runpytest_subprocess(*base, "--captures-dest-global", "migration.send-section-footer=off", timeout=120)
    r.assert_outcomes(passed=1)
    r = pytester.runpytest_subprocess(*base, f"--captures-dest={OLD},migration.send-section-footer=off", "-v",
                                      timeout=120)
    r.assert_outcomes(passed=1)
    assert f"[{OLD}]" in r.stdout.str()


# ---------------------------------------------------------------- the differential

def _cells():
    """(row, side that has the value, running, source version, destination version, machine):
    every verified one-sided case of the table, both ways between the modelled versions."""
    for row in ONE_SIDED:
        for only, effect in (("source", row.source_only), ("destination", row.dest_only)):
            if not effect.verified:
                continue
            if row.name == "multifd-channels" and only == "source":
                continue
            machines = ("pc-q35-7.2", "pc-i440fx-7.2") if row.kind == "global" and row.in_stream else ("pc-q35-7.2",)
            runs = (True, False) if effect.when_running else (False,)
            for machine in machines:
                for running in runs:
                    for sv in (OLD, NEW):
                        for dv in (OLD, NEW):
                            yield row, only, running, sv, dv, machine


def _settings(row, only: str):
    """(source, destination) kwargs of migrate_sided / Side for the case."""
    shared = dict(row.shared)
    one: dict = {}
    if row.kind == "global":
        one["globals"] = (f"{row.name}={row.value}",)
    elif row.kind == "capability":
        one["capabilities"] = {row.name: True}
    else:
        one["parameters"] = {row.name: row.value}
    src = {"globals": (), "capabilities": dict(shared), "parameters": {}}
    dst = {"globals": (), "capabilities": dict(shared), "parameters": {}}
    side = src if only == "source" else dst
    for k, v in one.items():
        side[k] = v if k == "globals" else {**side[k], **v}
    return src, dst


def _model(out, row, only, running, sv, dv, machine, src, dst, tmp: Path) -> str:
    from conformance.check.destination import destination_tables
    from conformance.check.paths import check_files

    (tmp / "main.bin").write_bytes(out.main)
    (tmp / "rp.bin").write_bytes(out.return_path)
    chans = []
    for i, data in sorted(out.multifd.items()):
        (tmp / f"multifd{i}.bin").write_bytes(data)
        chans.append(str(tmp / f"multifd{i}.bin"))
    g = lambda gs: dict(x.split("=", 1) for x in gs)  # noqa: E731
    dest = configure(dv, machine=machine, globals=g(dst["globals"]), capabilities=dst["capabilities"],
                     parameters=dst["parameters"])
    source = Side(sv, machine, g(src["globals"]), src["capabilities"], src["parameters"], running=running)
    rep = check_files(str(tmp / "main.bin"), chans, target=dest, machine=machine, source=source,
                      tables=destination_tables(None, None, dv), return_path=str(tmp / "rp.bin"))
    if rep.rejected:
        return "rejects", rep
    return ("loses" if rep.violations and any(v.severity is Severity.SILENT_LOSS for v in rep.violations)
            else "loads"), rep


REAL = {"completed": "loads", "failed": "rejects", "hung": "rejects", "ram-differs": "loses"}


@pytest.mark.qemu
@pytest.mark.slow
def test_model_agrees_with_real_one_sided_migrations(qemu, tmp_path, record_property):
    """Every verified row of the table, on each side, both ways between the real binaries:
    the model's verdict on the recorded channels and the two profiles equals what the real
    destination did (completed / failed / hung / completed with other RAM)."""
    from conformance.qemu.one_sided import migrate_sided

    bins = {v: qemu(v) for v in (OLD, NEW)}
    results, refused, disagree = [], 0, []
    for n, (row, only, running, sv, dv, machine) in enumerate(_cells()):
        src, dst = _settings(row, only)

        def migrate(timeout: float):
            return migrate_sided(bins[sv], bins[dv], machine=machine, running=running, timeout=timeout,
                                 src_globals=src["globals"], dst_globals=dst["globals"],
                                 src_capabilities=src["capabilities"], dst_capabilities=dst["capabilities"],
                                 src_parameters=src["parameters"], dst_parameters=dst["parameters"])

        out = migrate(12)
        if out.kind == "refused":  # a side lacks the setting (7.2 and switchover-ack): no migration to judge
            refused += 1
            continue
        cell = tmp_path / f"cell{n}"
        cell.mkdir()
        verdict, rep = _model(out, row, only, running, sv, dv, machine, src, dst, cell)
        cut = out.kind == "completed" and any(v.code.value == "truncated" for v in rep.violations)
        if (out.kind == "hung" and verdict != REAL["hung"]) or (cut and verdict != REAL["completed"]):
            # (a completed load whose recording ends mid-packet: the destination finished and
            # closed a channel while the source was still writing to it; the recording is not
            # the stream the destination read, so the cell is migrated again)
            # a loaded machine (parallel workers) can stretch a good migration past 12 s: a hang
            # the model does not predict is confirmed by a second, longer wait
            out = migrate(60)
            verdict, rep = _model(out, row, only, running, sv, dv, machine, src, dst, cell)
        results.append((row.name, only, running, sv, dv, machine, out.kind, verdict))
        if verdict != REAL[out.kind]:
            disagree.append((row.name, only, running, sv, dv, machine, out.kind, out.message,
                             [v.one_line() for v in rep.violations][:3]))
    agree = len(results) - len(disagree)
    record_property("differential", f"{agree}/{len(results)} agree, {refused} refused set-ups")
    print(f"\none-sided differential: {agree}/{len(results)} cells agree ({refused} set-ups refused by a side)")
    assert len(results) >= 40 and not disagree, "\n".join(map(str, disagree))


def test_matrix_checker_column_judges_the_cells_destination(tmp_path):
    """A matrix cell's checker verdict is for the destination as the cell starts it."""
    from conformance.tools.matrix.cell import check_capture as cell_check
    from conformance.tools.sides import parse_axis

    f = tmp_path / "nofooter.bin"
    f.write_bytes(stream(footers=False))
    plain = cell_check(f, NEW, "pc-i440fx-7.2", parse_axis("src-no-section-footer"), "paused", OLD)
    assert plain.ok is False and [v["code"] for v in plain.violations] == ["missing-footer"]
    both = parse_axis("src-global:migration.send-section-footer=off+dst-global:migration.send-section-footer=off")
    assert cell_check(f, NEW, "pc-i440fx-7.2", both, "paused", OLD).ok is True


@pytest.mark.qemu
def test_profile_read_from_a_real_destination(qemu, tmp_path):
    """--dest-qemu starts the binary with the stream's machine type; --dest-qmp asks a running one."""
    from conformance.qemu import QemuProcess
    from conformance.qemu.dest_profile import from_binary, from_socket

    old = qemu(OLD)
    got = from_binary(old, "q35")
    assert (got["version"], got["machine"]) == (OLD, "pc-q35-7.2") and got["parameters"]["multifd-channels"] == 2
    f = tmp_path / "nofooter.bin"
    f.write_bytes(stream(footers=False))  # machine pc-i440fx-7.2
    code, out, err = _cli("check", str(f), "--json", "--dest-qemu", str(old.path),
                          "--dest-global", "migration.send-section-footer=off")
    assert code == 0 and json.loads(out)["target"] == OLD, err
    sock = tmp_path / "dst.qmp"
    with QemuProcess(qemu(NEW), ["-machine", "pc", "-qmp", f"unix:{sock},server=on,wait=off"]):
        got = from_socket(sock)
        assert (got["version"], got["machine"]) == (NEW, "pc-i440fx-10.0")
        code, out, err = _cli("check", str(f), "--json", "--dest-qmp", str(sock))
    assert code == 1 and json.loads(out)["target"] == NEW
    # the running destination's machine type is the one compared
    assert any("local is 'pc-i440fx-10.0'" in v["message"] for v in json.loads(out)["violations"])
