"""The strict downtime SLA model (conformance.rules.downtime) and the QEMU 10.0 downtime
trace analyser (conformance.tools.downtime): properties, committed real traces, and a real
10.0 → 10.0 migration traced on both sides."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
from hypothesis import assume, find, given, settings
from hypothesis import strategies as st

from conformance.rules.downtime import SlaClock, SlaCommand, simulate, sla_violations
from conformance.tools.downtime import (
    TraceFormatError,
    add_downtime_parser,
    analyse,
    cmd_downtime,
    parse_trace,
    read_trace,
    section_costs,
    trace_side,
)
from strategies.downtime import MAX_COST_US, sla_cases, sla_commands, section_costs as cost_lists
from wireformat.commands import CommandSet
from wireformat.constants import SectionType as T
from wireformat.records import Command, SectionFooter, SectionHeader

DATA = Path(__file__).parent / "data" / "downtime"
FIND = settings(max_examples=3000, database=None, derandomize=True)


def first_checkpoint_at_or_past(cmd: SlaCommand, costs: list[int]) -> int | None:
    """The obvious computation the model must agree with: 1-based section index."""
    if cmd.abort_limit_ms == 0:
        return None
    total = cmd.source_us
    for k, c in enumerate(costs, 1):
        total += c
        if total >= cmd.limit_us:
            return k
    return None


# --------------------------------------------------------------------------- the model
def test_abort_example():
    r = simulate(SlaCommand(abort_limit_ms=10, source_downtime_ms=4), [3000, 2000, 5000, 7000])
    assert r.abort is not None and r.abort.checkpoint == 3 and r.abort.section == "section2"
    assert (r.abort.total_us, r.abort.past_limit_us, r.abort.overshoot_us) == (14000, 4000, 4000)
    assert r.totals == [7000, 9000, 14000] and r.sections == 3


def test_no_abort_under_the_limit_and_zero_disables():
    assert simulate(SlaCommand(10, 4), [1000, 1000]).completed
    assert simulate(SlaCommand(0, 999), [10**9]).completed


def test_check_on_arrival():
    late = SlaCommand(abort_limit_ms=5, source_downtime_ms=7)
    assert simulate(late, [100], check_on_arrival=True).abort.checkpoint == 0
    a = simulate(late, [100]).abort  # without it: only after the first section
    assert a.checkpoint == 1 and a.overshoot_us == 100 and a.past_limit_us == 2100


def test_clock_is_sans_io():
    clock = SlaClock(SlaCommand(1, 0))
    assert clock.loaded("a", 400) is None and clock.loaded("b", 700).checkpoint == 2
    assert clock.loaded("c", 1) is None  # nothing after the abort
    with pytest.raises(ValueError):
        SlaClock(SlaCommand(1, 0)).loaded("x", -1)


@given(sla_cases())
def test_abort_at_exactly_the_first_check_point_at_or_past_the_limit(case):
    cmd, costs = case
    r = simulate(cmd, costs)
    expected = first_checkpoint_at_or_past(cmd, costs)
    assert (r.abort.checkpoint if r.abort else None) == expected
    if r.abort:
        assert r.abort.total_us >= cmd.limit_us
        assert all(t < cmd.limit_us for t in r.totals[:-1])  # no earlier check point was at the limit
        assert r.sections == expected
    else:
        assert r.sections == len(costs)


@given(sla_cases())
def test_overshoot_is_bounded_by_the_longest_section(case):
    cmd, costs = case
    r = simulate(cmd, costs)
    if r.abort:
        assert 0 <= r.abort.overshoot_us <= max(costs)
        assert r.abort.overshoot_us <= costs[r.abort.checkpoint - 1]  # the section loaded last


@given(sla_cases())
def test_with_a_check_on_arrival_the_bound_is_strict(case):
    cmd, costs = case
    r = simulate(cmd, costs, check_on_arrival=True)
    if r.abort and r.abort.checkpoint:
        assert r.abort.overshoot_us < costs[r.abort.checkpoint - 1]


def test_hypothesis_shows_the_overshoot_reaches_the_longest_section():
    """The granularity objection: the destination looks at the clock only between
    sections, so one section's whole load time can go by past the limit."""
    cmd, costs = find(sla_cases(), lambda c: (a := simulate(*c).abort) is not None and max(c[1]) > 0
                      and a.overshoot_us == max(c[1]), settings=FIND)
    assert (cmd, costs) == (SlaCommand(abort_limit_ms=1, source_downtime_ms=1), [1])


@given(sla_commands(source="within"), cost_lists(min_size=0, max_size=4), st.integers(1, 1000), st.integers(1, MAX_COST_US))
def test_mid_stream_overshoot_approaches_the_section_cost(cmd, before, gap, cost):
    """After a check point `gap` µs short of the limit, the next section overshoots by
    its cost less the gap: one µs short, the whole section bar one tick goes by past the
    limit. (Random search rarely lands exactly one tick short; this builds it.)"""
    room = cmd.limit_us - cmd.source_us
    assume(room > gap and cost >= gap)
    target = room - gap  # where the last check point before the big section lands
    prefix, acc = [], 0
    for c in before:  # as many of the drawn sections as fit, the rest in one more
        if acc + c > target:
            break
        prefix.append(c)
        acc += c
    prefix.append(target - acc)
    r = simulate(cmd, [*prefix, cost, 10**9])
    assert r.abort.checkpoint == len(prefix) + 1
    assert r.abort.overshoot_us == cost - gap


def test_sla_on_a_stream():
    cs = CommandSet.with_send_src_downtime(12)
    payload = SlaCommand(abort_limit_ms=2, source_downtime_ms=1).encode(cs)
    recs = [SectionHeader(offset=0, section_type=T.QEMU_VM_SECTION_FULL, section_id=3, idstr="timer", instance_id=0, version_id=2),
            SectionFooter(offset=10, section_id=3),
            Command(offset=20, cmd=12, data=payload, args=cs.decode(12, payload)),
            SectionHeader(offset=40, section_type=T.QEMU_VM_SECTION_FULL, section_id=4, idstr="cpu", instance_id=0, version_id=1),
            SectionFooter(offset=60, section_id=4),
            SectionHeader(offset=70, section_type=T.QEMU_VM_SECTION_FULL, section_id=5, idstr="vfio", instance_id=0, version_id=1),
            SectionFooter(offset=90, section_id=5)]
    v = sla_violations(recs, cs, {("cpu", 0): 600, ("vfio", 0): 5000, ("timer", 0): 10**9})
    assert [(x.code, x.offset, x.section) for x in v] == [("downtime-limit-exceeded", 90, "vfio (id 5)")]
    assert sla_violations(recs, cs, {("cpu", 0): 600}) == []
    with pytest.raises(ValueError):
        sla_violations(recs, CommandSet())


# --------------------------------------------------------------------------- trace parsing
BARE = """vmstate_downtime_checkpoint src-downtime-start
vmstate_downtime_save type=iterable idstr=ram instance_id=0 downtime=1995
vmstate_downtime_save type=non-iterable idstr=0000:00:01.1/ide instance_id=0 downtime=58
"""
STAMPED = """22038@1795462553.987979:vmstate_downtime_checkpoint src-downtime-start
22038@1795462553.988071:vmstate_downtime_save type=non-iterable idstr=smbus-eeprom instance_id=7 downtime=0
some other line
22038@1795462553.988085:loadvm_process_command com=PING len=4
"""


def test_parse_bare_lines():
    ev = parse_trace(BARE.splitlines())
    assert [e.kind for e in ev] == ["checkpoint", "save", "save"]
    assert ev[0].checkpoint == "src-downtime-start" and ev[0].time is None and ev[0].pid is None
    assert (ev[2].type, ev[2].idstr, ev[2].instance_id, ev[2].downtime_us) == ("non-iterable", "0000:00:01.1/ide", 0, 58)


def test_parse_prefixed_lines():
    ev = parse_trace(STAMPED.encode().splitlines())
    assert len(ev) == 2 and ev[0].pid == 22038 and ev[0].time == pytest.approx(1795462553.987979)
    assert ev[1].device == "smbus-eeprom[7]" and ev[1].line == 2


def test_malformed_downtime_line():
    with pytest.raises(TraceFormatError, match="line 1"):
        parse_trace(["vmstate_downtime_save type=iterable idstr=ram"])


def test_read_trace_refuses_foreign_files(tmp_path):
    (tmp_path / "simple").write_bytes(bytes.fromhex("ffffffffffffffff") + (0xF2B177CB0AA429B4).to_bytes(8, "little") + b"\x04" + bytes(7))
    (tmp_path / "bin").write_bytes(b"QEVM\x00\x00\x00\x03")
    (tmp_path / "latin").write_bytes(b"vmstate_downtime_checkpoint \xff\xfe")
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "empty").write_text("")
    for name, pattern in (("simple", "'simple' backend"), ("bin", "binary"), ("latin", "UTF-8"),
                          ("text", "no vmstate_downtime"), ("empty", "no vmstate_downtime"), ("missing", "No such file")):
        with pytest.raises(TraceFormatError, match=pattern):
            read_trace(tmp_path / name)


def run_cli(argv, capsys):
    import argparse

    p = argparse.ArgumentParser(prog="migconform")
    add_downtime_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["downtime", *argv])
    rc = cmd_downtime(args)
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- committed samples
SAMPLES = json.loads((DATA / "index.json").read_text())["samples"] if (DATA / "index.json").exists() else []


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["name"] for s in SAMPLES])
def test_committed_samples(sample):
    src = read_trace(DATA / sample["source"], side="source")
    dst = read_trace(DATA / sample["destination"], side="destination")
    assert trace_side(src) == "source" and trace_side(dst) == "destination"
    r = analyse(src, dst, top=5)
    assert r.timestamps == sample["timestamps"]
    assert r.checkpoints["source"] == ["src-downtime-start", "src-vm-stopped", "src-iterable-saved",
                                       "src-non-iterable-saved", "src-downtime-end"]
    assert r.checkpoints["destination"][0] == "dst-precopy-loadvm-completed"
    assert len(r.top) == 5 and r.top == sorted(r.top, key=lambda d: -d.us)
    assert not r.loaded_not_saved  # every loaded section was saved
    assert "ram" in {e.idstr for e in dst if e.kind == "load" and e.type == "iterable"}
    if sample["timestamps"]:
        assert r.estimate_us == r.end_to_end_us > 0 and r.source_us > 0
        # QEMU's own downtime (ms, source side) against the source's first and last check point
        assert abs(r.source_us / 1000 - sample["query_migrate_downtime_ms"]) <= 2.0
        assert all(iv.us is not None and iv.us >= 0 for iv in r.intervals if iv.end != "(end of trace)")
    else:
        assert r.end_to_end_us is None and r.estimate_us == r.device_total_us
        assert all(iv.us is None for iv in r.intervals)


@pytest.mark.skipif(not SAMPLES, reason="no committed samples")
def test_cli_on_samples(capsys, tmp_path):
    s = next(x for x in SAMPLES if x["timestamps"])
    rc, out, err = run_cli([str(DATA / s["source"]), str(DATA / s["destination"])], capsys)
    assert rc == 0 and out.startswith("downtime estimate:") and not err
    rc, out, _ = run_cli([str(DATA / s["source"]), str(DATA / s["destination"]), "--json", "--top", "3", "--limit", "1"], capsys)
    j = json.loads(out)
    assert rc == 0 and len(j["top"]) == 3 and j["sla"]["abort_limit_ms"] == 1
    # swapped, missing, foreign: exit 2, one line
    for argv in ([str(DATA / s["destination"]), str(DATA / s["source"])],
                 [str(tmp_path / "nope.log"), str(DATA / s["destination"])],
                 [str(DATA / "index.json"), str(DATA / s["destination"])]):
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2 and not out and err.count("\n") == 1 and err.startswith("migconform: error: ")


def test_section_costs_with_and_without_wall_clock():
    dst = parse_trace([
        "1@100.000010:vmstate_downtime_load type=iterable idstr=ram instance_id=0 downtime=10",
        "1@100.000500:vmstate_downtime_load type=non-iterable idstr=cpu instance_id=0 downtime=20",
        "1@100.000530:vmstate_downtime_checkpoint dst-precopy-loadvm-completed",
    ])
    assert section_costs(dst) == [("ram", 10), ("cpu", 490)]
    assert section_costs(dst, wall=False) == [("ram", 10), ("cpu", 20)]


# --------------------------------------------------------------------------- real QEMU 10.0
def traced_migration(binary, workdir: Path, *, machine: str = "pc-i440fx-10.0", devices: str = "none",
                     running: bool = False, timestamps: bool = True, transport: str = "tcp", timeout: float = 30.0):
    """A 10.0 → 10.0 migration with the downtime trace points on at both ends. Returns
    (source log, destination log, the source's final query-migrate, seconds)."""
    from conformance.qemu import QemuProcess, start_destination, vm_args

    src_log, dst_log = workdir / "src.log", workdir / "dst.log"
    trace = lambda log: [*(["-msg", "timestamp=on"] if timestamps else []), "-trace", "vmstate_downtime_*", "-D", str(log)]
    t0 = time.monotonic()
    with start_destination(binary, machine=machine, devices=devices, extra_args=trace(dst_log)) as dst, \
            QemuProcess(binary, vm_args(machine=machine, devices=devices) + trace(src_log), cmd_timeout=10.0) as src:
        if running:
            src.cmd("cont")
        if transport == "tcp":
            dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
            port = dst.query_migrate()["socket-address"][0]["port"]
            src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            info = src.wait_migration(timeout=timeout)
            dst.wait_migration(timeout=timeout)
        else:  # through a file: the destination loads once the source is done
            stream = workdir / "stream.mig"
            src.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(stream))}")
            info = src.wait_migration(timeout=timeout)
            src.terminate()  # done; QEMU writes each trace line through, nothing is lost
            dst.cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(str(stream))}")
            dst.wait_migration(timeout=timeout)
    return src_log, dst_log, info, time.monotonic() - t0


@pytest.mark.qemu
@pytest.mark.parametrize("transport,timestamps,running", [("tcp", True, True), ("exec", False, False)],
                         ids=["tcp-stamped-running", "exec-bare-stopped"])
def test_real_traced_migration(qemu, tmp_path, transport, timestamps, running, capsys):
    binary = qemu("10.0")
    src_log, dst_log, info, wall = traced_migration(binary, tmp_path, transport=transport, timestamps=timestamps,
                                                    running=running)
    assert info["status"] == "completed"
    src, dst = read_trace(src_log, side="source"), read_trace(dst_log, side="destination")
    r = analyse(src, dst)
    assert r.checkpoints["source"][0] == "src-downtime-start" and r.checkpoints["source"][-1] == "src-downtime-end"
    assert r.checkpoints["destination"][0] == "dst-precopy-loadvm-completed"
    assert not r.loaded_not_saved
    # every section the destination loaded, it loaded once, in the order the source saved them
    saved = [e.device for e in src if e.kind == "save" and e.type == "non-iterable"]
    loaded = [e.device for e in dst if e.kind == "load" and e.type == "non-iterable"]
    assert loaded == [d for d in saved if d in set(loaded)]
    assert r.estimate_us > 0
    if timestamps:
        assert 0 < r.end_to_end_us < wall * 1e6
        assert abs(r.source_us / 1000 - info["downtime"]) <= 2.0
    rc, out, _ = run_cli([str(src_log), str(dst_log), "--json"], capsys)
    assert rc == 0 and json.loads(out)["timestamps"] is timestamps
    # real load costs through the SLA model: a limit just past the source's share aborts
    costs = section_costs(dst)
    assert len(costs) == len([e for e in dst if e.kind == "load"])
    total = sum(c for _, c in costs)
    if total >= 2000:
        res = simulate(SlaCommand(abort_limit_ms=1, source_downtime_ms=0), costs)
        assert res.abort is not None and res.abort.checkpoint == first_checkpoint_at_or_past(SlaCommand(1, 0), [c for _, c in costs])
