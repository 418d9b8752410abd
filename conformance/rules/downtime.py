"""Downtime: the proposed strict SLA (SEND_SRC_DOWNTIME) as a sans-IO model, and an
analyser of QEMU 10.0's downtime trace points.

The strict SLA (RFC "migration: abort on destination if switchover limit exceeded",
qemu-devel June 2024, never merged; spec wire-format.md §2). At the start of the
switchover the source sends SEND_SRC_DOWNTIME(abort limit ms, source downtime so far ms).
The destination starts its own clock when the command arrives and, at each check point,
aborts once `source downtime + its own elapsed time` has reached the limit. Check points
lie between sections: after each section that follows the command is loaded. Where the
RFC's code checked is not recorded in the spec and could not be read here, so this is the
model's assumption; `check_on_arrival=True` adds a check point when the command arrives.
A limit of 0 disables the check (also an assumption).

The clock is virtual, in microseconds (the unit of QEMU's trace points); the command
carries milliseconds. Section load costs are generated (strategies.downtime) or taken
from a real destination trace (`section_costs`).

What follows from the rule (tests/test_downtime.py checks it with hypothesis):
  * the abort happens at the first check point at or past the limit, never later;
  * the destination's overshoot (its own time spent past the limit) is at most the cost of
    the single section loaded last, hence at most the longest section — and the bound is
    reached: with no check point before the first section, a command arriving with the
    budget already spent costs one whole section. Between two check points the overshoot
    reaches the section's cost less one clock tick. That is the review's granularity
    objection: one big device (a VFIO device, RAM) can blow through any limit by its
    whole load time before anyone looks at the clock.

Trace analysis. QEMU 10.0 has the trace points (enable with `-trace 'vmstate_downtime_*'
-D FILE`):
    vmstate_downtime_save type=iterable|non-iterable idstr=S instance_id=N downtime=US
    vmstate_downtime_load type=iterable|non-iterable idstr=S instance_id=N downtime=US
    vmstate_downtime_checkpoint NAME
Debian's 10.0 build uses the `log` trace backend: plain text lines in the -D file, each
prefixed with `PID@SECONDS.MICROSECONDS:` when QEMU runs with `-msg timestamp=on`, and
bare otherwise. Without timestamps check point intervals cannot be measured; the report
then says so and adds up device costs only. The `simple` backend's binary format is
recognised and refused (Debian's build does not write it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from wireformat.commands import CommandSet
from wireformat.records import Command, Record, SectionFooter, SectionHeader

from conformance.rules.catalogue import Code, Violation
from conformance.rules.sink import ViolationSink

US_PER_MS = 1000


# =========================================================================== SLA model
@dataclass(frozen=True)
class SlaCommand:
    """SEND_SRC_DOWNTIME's payload."""

    abort_limit_ms: int
    source_downtime_ms: int

    def __post_init__(self) -> None:
        if self.abort_limit_ms < 0 or self.source_downtime_ms < 0:
            raise ValueError("SEND_SRC_DOWNTIME carries unsigned milliseconds")

    @property
    def limit_us(self) -> int:
        return self.abort_limit_ms * US_PER_MS

    @property
    def source_us(self) -> int:
        return self.source_downtime_ms * US_PER_MS

    @classmethod
    def from_args(cls, args: Mapping[str, int]) -> "SlaCommand":
        return cls(int(args["abort_limit_ms"]), int(args["source_downtime_ms"]))

    def encode(self, commands: CommandSet) -> bytes:
        if commands.send_src_downtime_id is None:
            raise ValueError("the command set has no SEND_SRC_DOWNTIME id (CommandSet.with_send_src_downtime)")
        return commands.encode(commands.send_src_downtime_id, asdict(self))


@dataclass(frozen=True)
class SlaAbort:
    checkpoint: int  # how many sections were loaded when it aborted (0: at the command's arrival)
    section: str | None  # the section loaded last, None at arrival
    elapsed_us: int  # the destination's own time
    total_us: int  # source downtime + elapsed
    limit_us: int
    past_limit_us: int  # total - limit
    overshoot_us: int  # the destination's own time past the limit: total - max(limit, source downtime)


class SlaClock:
    """The destination side of the strict SLA, sans-IO: `arrive()` when SEND_SRC_DOWNTIME
    has been read, `loaded(name, cost_us)` after each section. Each returns an SlaAbort
    when the destination aborts there, else None; nothing happens after an abort."""

    def __init__(self, cmd: SlaCommand, *, check_on_arrival: bool = False):
        self.cmd = cmd
        self.check_on_arrival = check_on_arrival
        self.elapsed_us = 0
        self.loaded_sections = 0
        self.totals: list[int] = []  # source downtime + elapsed, at each check point
        self.abort: SlaAbort | None = None
        self._last: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cmd.abort_limit_ms > 0

    def arrive(self) -> SlaAbort | None:
        return self._check() if self.check_on_arrival else None

    def loaded(self, name: str, cost_us: int) -> SlaAbort | None:
        if self.abort is not None:
            return None
        if cost_us < 0:
            raise ValueError(f"negative load cost for {name}: {cost_us}")
        self.elapsed_us += cost_us
        self.loaded_sections += 1
        self._last = name
        return self._check()

    def _check(self) -> SlaAbort | None:
        if self.abort is not None:
            return None
        total = self.cmd.source_us + self.elapsed_us
        self.totals.append(total)
        if not self.enabled or total < self.cmd.limit_us:
            return None
        limit = self.cmd.limit_us
        self.abort = SlaAbort(checkpoint=self.loaded_sections, section=self._last, elapsed_us=self.elapsed_us,
                              total_us=total, limit_us=limit, past_limit_us=total - limit,
                              overshoot_us=total - max(limit, self.cmd.source_us))
        return self.abort


@dataclass
class SlaResult:
    abort: SlaAbort | None
    totals: list[int]  # at each check point reached
    sections: int  # sections loaded (all of them when there was no abort)

    @property
    def completed(self) -> bool:
        return self.abort is None


def simulate(cmd: SlaCommand, costs: Sequence[int | tuple[str, int]], *, check_on_arrival: bool = False) -> SlaResult:
    """Load sections of the given costs (µs; or (name, µs) pairs) after the command."""
    clock = SlaClock(cmd, check_on_arrival=check_on_arrival)
    if clock.arrive() is None:
        for i, c in enumerate(costs):
            name, cost = (c if isinstance(c, tuple) else (f"section{i}", c))
            if clock.loaded(name, cost) is not None:
                break
    return SlaResult(abort=clock.abort, totals=clock.totals, sections=clock.loaded_sections)


def sla_violations(records: Iterable[Record], commands: CommandSet,
                   costs: Mapping[tuple[str, int], int] | None = None, *, default_cost_us: int = 0,
                   check_on_arrival: bool = False) -> list[Violation]:
    """Judge a main stream that carries SEND_SRC_DOWNTIME (under `commands`' id) as a
    destination enforcing the strict SLA would: each section that ends after the command
    costs `costs[(idstr, instance)]` µs (a destination's load trace: `section_costs`),
    else `default_cost_us`. Returns the abort as a `downtime-limit-exceeded` violation."""
    if commands.send_src_downtime_id is None:
        raise ValueError("the command set has no SEND_SRC_DOWNTIME id (CommandSet.with_send_src_downtime)")
    costs = costs or {}
    names: dict[int, tuple[str, int]] = {}
    clock: SlaClock | None = None
    current: SectionHeader | None = None
    sink = ViolationSink()
    for rec in records:
        if isinstance(rec, Command) and rec.cmd == commands.send_src_downtime_id and clock is None:
            args = rec.args if isinstance(rec.args, dict) else commands.decode(rec.cmd, rec.data)
            if args is None:
                continue  # the loader reports the malformed payload
            clock = SlaClock(SlaCommand.from_args(args), check_on_arrival=check_on_arrival)
            hit = clock.arrive()
            if hit is not None:
                _abort(sink, hit, clock.cmd, rec)
                break
        elif isinstance(rec, SectionHeader):
            if rec.is_full:
                names[rec.section_id] = (rec.idstr or "?", rec.instance_id or 0)
            current = rec
        elif isinstance(rec, SectionFooter) and clock is not None and current is not None:
            key = names.get(current.section_id, ("?", 0))
            name = f"{key[0]} (id {current.section_id})"
            hit = clock.loaded(name, costs.get(key, default_cost_us))
            current = None
            if hit is not None:
                _abort(sink, hit, clock.cmd, rec)
                break
    return sink.violations


def _abort(sink: ViolationSink, a: SlaAbort, cmd: SlaCommand, rec: Record) -> None:
    where = f"after {a.checkpoint} section(s)" if a.checkpoint else "on arrival of the command"
    sink.emit(Code.DOWNTIME_LIMIT_EXCEEDED, rec.channel, rec.offset,
              f"downtime {a.total_us / 1000:.3f} ms (source {cmd.source_downtime_ms} ms + destination "
              f"{a.elapsed_us / 1000:.3f} ms) reached the abort limit {cmd.abort_limit_ms} ms {where}: "
              f"the destination aborts, {a.past_limit_us / 1000:.3f} ms past the limit", a.section)


# =========================================================================== traces
class TraceFormatError(ValueError):
    """A file that is not a QEMU downtime trace (one line, for the CLI)."""


TRACE_EVENTS = ("vmstate_downtime_save", "vmstate_downtime_load", "vmstate_downtime_checkpoint")
_PREFIX = r"(?:(?P<pid>\d+)@(?P<sec>\d+)\.(?P<usec>\d+):)?"
_LINE = re.compile(_PREFIX + r"(?P<event>vmstate_downtime_(?:save|load|checkpoint))(?: (?P<rest>.*))?$")
_DEVICE = re.compile(r"type=(?P<type>\S+) idstr=(?P<idstr>.*) instance_id=(?P<inst>-?\d+) downtime=(?P<dt>-?\d+)$")
# the simple backend's file header: event id ~0, magic, little- or big-endian
_SIMPLE_MAGIC = (bytes.fromhex("ffffffffffffffff") + (0xF2B177CB0AA429B4).to_bytes(8, "little"),
                 bytes.fromhex("ffffffffffffffff") + (0xF2B177CB0AA429B4).to_bytes(8, "big"))
MAX_TRACE_BYTES = 256 << 20


@dataclass(frozen=True)
class TraceEvent:
    kind: str  # "save", "load" or "checkpoint"
    line: int  # 1-based line number in its file
    pid: int | None = None
    time: float | None = None  # wall-clock seconds (gettimeofday) when logged; None without -msg timestamp=on
    type: str | None = None  # "iterable" / "non-iterable" (save, load)
    idstr: str | None = None
    instance_id: int | None = None
    downtime_us: int | None = None  # the entry's own save/load time
    checkpoint: str | None = None

    @property
    def device(self) -> str:
        return f"{self.idstr}[{self.instance_id}]" if self.instance_id else str(self.idstr)


def parse_trace(lines: Iterable[str | bytes]) -> list[TraceEvent]:
    """The vmstate_downtime_* events of a log-backend trace, with or without the
    `pid@time:` prefix. Other lines (other trace points, messages) are skipped; a
    vmstate_downtime line that does not have the 10.0 layout raises TraceFormatError."""
    out: list[TraceEvent] = []
    for n, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
        line = line.rstrip("\r\n")
        if "vmstate_downtime_" not in line:
            continue
        m = _LINE.match(line)
        if m is None:
            continue  # e.g. `-trace help` output or a message quoting the name
        pid = int(m["pid"]) if m["pid"] else None
        t = int(m["sec"]) + int(m["usec"]) / 10 ** len(m["usec"]) if m["sec"] else None
        event, rest = m["event"], m["rest"] or ""
        if event == "vmstate_downtime_checkpoint":
            if not rest.strip():
                raise TraceFormatError(f"line {n}: vmstate_downtime_checkpoint without a name")
            out.append(TraceEvent("checkpoint", n, pid, t, checkpoint=rest.strip()))
            continue
        d = _DEVICE.match(rest)
        if d is None:
            raise TraceFormatError(f"line {n}: {event} arguments are not 'type=… idstr=… instance_id=… downtime=…': {rest[:80]!r}")
        out.append(TraceEvent(event.removeprefix("vmstate_downtime_"), n, pid, t, type=d["type"], idstr=d["idstr"],
                              instance_id=int(d["inst"]), downtime_us=int(d["dt"])))
    return out


def read_trace(path: str | Path, side: str | None = None) -> list[TraceEvent]:
    """parse_trace on a file; TraceFormatError (one line) for unreadable or foreign files.
    side "source" / "destination": the file must hold that side's events."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_TRACE_BYTES + 1)
    except OSError as e:
        raise TraceFormatError(f"{path}: {e.strerror or e}") from None
    if len(data) > MAX_TRACE_BYTES:
        raise TraceFormatError(f"{path}: larger than {MAX_TRACE_BYTES >> 20} MiB: not a downtime trace")
    if data.startswith(_SIMPLE_MAGIC):
        raise TraceFormatError(f"{path}: a binary trace of QEMU's 'simple' backend; expected the 'log' backend's "
                               "text (-trace 'vmstate_downtime_*' -D FILE), which Debian's QEMU 10.0 writes")
    if b"\x00" in data[:65536]:
        raise TraceFormatError(f"{path}: binary data, not a QEMU trace log")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TraceFormatError(f"{path}: not UTF-8 text, not a QEMU trace log") from None
    try:
        events = parse_trace(text.splitlines())
    except TraceFormatError as e:
        raise TraceFormatError(f"{path}: {e}") from None
    if not events:
        raise TraceFormatError(f"{path}: no vmstate_downtime_* trace lines (QEMU 10.0: -trace 'vmstate_downtime_*' -D FILE)")
    if side is not None:
        have = trace_side(events)
        if have == "both":
            raise TraceFormatError(f"{path}: holds both source and destination events (one -D file for both QEMUs?)")
        if have not in (side, None):
            raise TraceFormatError(f"{path}: holds {have} events, expected the {side}'s (arguments swapped?)")
    return events


def trace_side(events: Sequence[TraceEvent]) -> str | None:
    """"source" (save events, src-* check points), "destination" (load, dst-*), or None."""
    src = any(e.kind == "save" or (e.checkpoint or "").startswith("src-") for e in events)
    dst = any(e.kind == "load" or (e.checkpoint or "").startswith("dst-") for e in events)
    if src and dst:
        return "both"
    return "source" if src else "destination" if dst else None


def section_costs(dst_events: Sequence[TraceEvent], *, wall: bool = True) -> list[tuple[str, int]]:
    """The destination's sections in load order with their cost in µs: with timestamps
    (wall=True) the time since the previous load ended (it includes waiting for the
    source's data; the first one its own load time), else the load trace's own time."""
    loads = [e for e in dst_events if e.kind == "load"]
    out: list[tuple[str, int]] = []
    prev: float | None = None
    for e in loads:
        cost = e.downtime_us or 0
        if wall and e.time is not None and prev is not None:
            cost = max(cost, round((e.time - prev) * 1e6))
        out.append((e.device, max(0, cost)))
        prev = e.time
    return out


@dataclass
class Interval:
    side: str
    start: str
    end: str
    us: int | None  # None without timestamps
    devices: int  # save/load events logged between the two check points
    device_us: int  # their own costs added up


@dataclass
class DeviceCost:
    side: str
    type: str
    device: str
    us: int


@dataclass
class DowntimeReport:
    source_pid: list[int]
    destination_pid: list[int]
    timestamps: bool
    intervals: list[Interval]
    top: list[DeviceCost]
    source_us: int | None  # first to last source check point (the source's downtime)
    destination_us: int | None  # from the first load's start to the last destination check point
    end_to_end_us: int | None  # first source check point to last destination one (same host clock)
    device_total_us: int  # every save + load cost added up (a lower bound without transfer)
    estimate_us: int  # end_to_end when known, else device_total
    estimate_method: str
    saved_not_loaded: list[str] = field(default_factory=list)
    loaded_not_saved: list[str] = field(default_factory=list)
    checkpoints: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sla: dict | None = None

    def as_json(self) -> dict:
        return asdict(self)


def _intervals(side: str, events: Sequence[TraceEvent]) -> list[Interval]:
    out: list[Interval] = []
    prev: TraceEvent | None = None
    n = us = 0
    first_dev: TraceEvent | None = None
    for e in events:
        if e.kind != "checkpoint":
            n += 1
            us += e.downtime_us or 0
            first_dev = first_dev or e
            continue
        if prev is None and n:
            # device events before the first check point (the destination's loads)
            start_t = first_dev.time - (first_dev.downtime_us or 0) / 1e6 if first_dev and first_dev.time is not None else None
            span = round((e.time - start_t) * 1e6) if start_t is not None and e.time is not None else None
            out.append(Interval(side, "(first section)", e.checkpoint or "?", span, n, us))
        elif prev is not None:
            span = round((e.time - prev.time) * 1e6) if e.time is not None and prev.time is not None else None
            out.append(Interval(side, prev.checkpoint or "?", e.checkpoint or "?", span, n, us))
        prev, n, us = e, 0, 0
    if prev is not None and n:
        out.append(Interval(side, prev.checkpoint or "?", "(end of trace)", None, n, us))
    return out


def analyse(src_events: Sequence[TraceEvent], dst_events: Sequence[TraceEvent], *, top: int = 10,
            limit_ms: int | None = None) -> DowntimeReport:
    """Check point intervals, the costliest devices and a total downtime estimate of one
    migration from its source and destination traces. `limit_ms`: what the proposed strict
    SLA would have done with that abort limit (the command sent when the source's VM
    stopped, carrying the source's downtime up to then)."""
    notes: list[str] = []
    src_pids = sorted({e.pid for e in src_events if e.pid is not None})
    dst_pids = sorted({e.pid for e in dst_events if e.pid is not None})
    for side, pids in (("source", src_pids), ("destination", dst_pids)):
        if len(pids) > 1:
            notes.append(f"the {side} trace holds {len(pids)} processes ({', '.join(map(str, pids))}): several runs appended to one file?")
    stamped = all(e.time is not None for e in (*src_events, *dst_events))
    if not stamped:
        notes.append("no timestamps (QEMU ran without -msg timestamp=on): intervals unknown, the estimate adds device costs only")
    intervals = _intervals("source", src_events) + _intervals("destination", dst_events)

    costs: dict[tuple[str, str, str], int] = defaultdict(int)
    for side, evs in (("source", src_events), ("destination", dst_events)):
        for e in evs:
            if e.kind != "checkpoint":
                costs[(side, e.type or "?", e.device)] += e.downtime_us or 0
    ranked = sorted(costs.items(), key=lambda kv: (-kv[1], kv[0]))
    top_list = [DeviceCost(side, typ, dev, us) for (side, typ, dev), us in ranked[:max(0, top)]]
    device_total = sum(costs.values())

    src_cps = [e for e in src_events if e.kind == "checkpoint"]
    dst_cps = [e for e in dst_events if e.kind == "checkpoint"]
    source_us = destination_us = end_to_end = None
    if stamped and len(src_cps) >= 2:
        source_us = round((src_cps[-1].time - src_cps[0].time) * 1e6)
    loads = [e for e in dst_events if e.kind == "load"]
    if stamped and dst_cps:
        first = loads[0] if loads else dst_cps[0]
        start = first.time - (first.downtime_us or 0) / 1e6
        destination_us = round((dst_cps[-1].time - start) * 1e6)
    if stamped and src_cps and dst_cps:
        end_to_end = round((dst_cps[-1].time - src_cps[0].time) * 1e6)
        if end_to_end < 0:
            notes.append("the destination's last check point precedes the source's first: traces of different migrations?")
    if end_to_end is not None and end_to_end >= 0:
        estimate, method = end_to_end, f"{src_cps[0].checkpoint} (source) to {dst_cps[-1].checkpoint} (destination), same host clock"
    else:
        estimate, method = device_total, "sum of the save and load costs of every entry (no transfer time): a lower bound"

    saved = {e.device for e in src_events if e.kind == "save"}
    loaded = {e.device for e in dst_events if e.kind == "load"}
    report = DowntimeReport(
        source_pid=src_pids, destination_pid=dst_pids, timestamps=stamped, intervals=intervals, top=top_list,
        source_us=source_us, destination_us=destination_us, end_to_end_us=end_to_end, device_total_us=device_total,
        estimate_us=estimate, estimate_method=method,
        saved_not_loaded=sorted(saved - loaded), loaded_not_saved=sorted(loaded - saved),
        checkpoints={"source": [e.checkpoint or "?" for e in src_cps], "destination": [e.checkpoint or "?" for e in dst_cps]},
        notes=notes,
    )
    if limit_ms is not None:
        report.sla = _sla_from_traces(src_events, dst_events, limit_ms)
    return report


def _sla_from_traces(src_events: Sequence[TraceEvent], dst_events: Sequence[TraceEvent], limit_ms: int) -> dict:
    src_cps = [e for e in src_events if e.kind == "checkpoint" and e.time is not None]
    stopped = next((e for e in src_cps if e.checkpoint == "src-vm-stopped"), None)
    source_ms = 0
    if src_cps and stopped is not None:
        source_ms = max(0, round((stopped.time - src_cps[0].time) * 1000))
    cmd = SlaCommand(limit_ms, source_ms)
    res = simulate(cmd, section_costs(dst_events))
    return {"abort_limit_ms": limit_ms, "source_downtime_ms": source_ms, "sections": res.sections,
            "aborted": res.abort is not None, "abort": asdict(res.abort) if res.abort else None}


def _ms(us: int | None) -> str:
    return "?" if us is None else f"{us / 1000:.3f} ms"


def format_report(r: DowntimeReport) -> str:
    lines = [f"downtime estimate: {_ms(r.estimate_us)} ({r.estimate_method})"]
    if r.source_us is not None:
        lines.append(f"  source, first to last check point: {_ms(r.source_us)}")
    if r.destination_us is not None:
        lines.append(f"  destination, first load to last check point: {_ms(r.destination_us)}")
    lines.append(f"  save + load costs of all entries: {_ms(r.device_total_us)}")
    lines.append("check point intervals:")
    for iv in r.intervals:
        lines.append(f"  {iv.side:<11} {iv.start} -> {iv.end}: {_ms(iv.us)}"
                     + (f" ({iv.devices} entries, {_ms(iv.device_us)} of their own)" if iv.devices else ""))
    lines.append(f"top {len(r.top)} entries by cost:")
    for d in r.top:
        lines.append(f"  {_ms(d.us):>12}  {d.side:<11} {d.type:<12} {d.device}")
    if r.saved_not_loaded:
        lines.append(f"saved but never loaded (no section on the wire): {', '.join(r.saved_not_loaded)}")
    if r.loaded_not_saved:
        lines.append(f"loaded but not in the source trace: {', '.join(r.loaded_not_saved)}")
    if r.sla is not None:
        s = r.sla
        what = (f"aborts after {s['abort']['checkpoint']} section(s) ({s['abort']['section']}), "
                f"{s['abort']['past_limit_us'] / 1000:.3f} ms past the limit") if s["aborted"] else "completes"
        lines.append(f"strict SLA (proposed), limit {s['abort_limit_ms']} ms, source {s['source_downtime_ms']} ms: {what}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


# =========================================================================== CLI
def add_downtime_parser(subparsers) -> argparse.ArgumentParser:
    """`migconform downtime SRC_LOG DST_LOG [--json] [--top N] [--limit MS]`."""
    p = subparsers.add_parser(
        "downtime", help="analyse QEMU 10.0 vmstate_downtime_* trace logs of a migration (exit 0, 2 on unreadable/foreign files)",
        description="Check point intervals, the costliest devices and a downtime estimate from the source's and the "
                    "destination's trace logs (QEMU 10.0: -trace 'vmstate_downtime_*' -D FILE, with -msg timestamp=on "
                    "for intervals).")
    p.add_argument("src_log", metavar="SRC_LOG", help="the source's trace log")
    p.add_argument("dst_log", metavar="DST_LOG", help="the destination's trace log")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--top", type=int, default=10, metavar="N", help="how many costliest entries to list (default 10)")
    p.add_argument("--limit", type=int, default=None, metavar="MS",
                   help="also say what the proposed strict SLA (SEND_SRC_DOWNTIME) would do with this abort limit")
    p.set_defaults(func=cmd_downtime)
    return p


def cmd_downtime(args) -> int:
    try:
        src = read_trace(args.src_log, side="source")
        dst = read_trace(args.dst_log, side="destination")
    except TraceFormatError as e:
        print(f"migconform: error: {e}", file=sys.stderr)
        return 2
    if args.top is not None and args.top < 0 or args.limit is not None and args.limit < 0:
        print("migconform: error: --top and --limit take non-negative numbers", file=sys.stderr)
        return 2
    report = analyse(src, dst, top=args.top, limit_ms=args.limit)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    return 0
