"""Downtime: the proposed strict SLA (SEND_SRC_DOWNTIME) as a sans-IO model (QEMU 10.0's
downtime trace points are analysed by conformance.tools.downtime).

The strict SLA (RFC "migration: abort on destination if switchover limit exceeded",
qemu-devel June 2024, never merged; its command: wireformat.commands). At the start of the
switchover the source sends SEND_SRC_DOWNTIME(abort limit ms, source downtime so far ms).
The destination starts its own clock when the command arrives and, at each check point,
aborts once `source downtime + its own elapsed time` has reached the limit. Check points
lie between sections: after each section that follows the command is loaded. Where the
RFC's code checked is not in QEMU's tree and could not be read here, so this is the
model's assumption; `check_on_arrival=True` adds a check point when the command arrives.
A limit of 0 disables the check (also an assumption).

The clock is virtual, in microseconds (the unit of QEMU's trace points); the command
carries milliseconds. Section load costs are generated (strategies.downtime) or taken
from a real destination trace (conformance.tools.downtime.section_costs).

What follows from the rule (tests/test_downtime.py checks it with hypothesis):
  * the abort happens at the first check point at or past the limit, never later;
  * the destination's overshoot (its own time spent past the limit) is at most the cost of
    the single section loaded last, hence at most the longest section — and the bound is
    reached: with no check point before the first section, a command arriving with the
    budget already spent costs one whole section. Between two check points the overshoot
    reaches the section's cost less one clock tick. That is the review's granularity
    objection: one big device (a VFIO device, RAM) can blow through any limit by its
    whole load time before anyone looks at the clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
