"""One-sided settings: a -global, capability or parameter that only one side of a migration
has, and what the destination then does — one row per setting, each outcome observed on real
QEMU 7.2 and 10.0 in both directions (tests/test_dest_profile.py, the differential) unless
the effect says `verified=False` (then `qemu` and the row's `evidence` say what is known).

A row says what happens when only the SOURCE has the value (`source_only`) and when only the
DESTINATION has it (`dest_only`). `judge_sides` compares two sides' settings with the table;
the Loader and the channel model judge what the stream itself shows (a footer-less stream, a
missing configuration record, fewer channels) with the same codes, so that a stream
written with a non-default setting is reported once, naming the setting that makes it load.

Pure data and comparisons: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from conformance.rules.catalogue import Code

LOADS, FAILS, HANGS, LOSES = "loads", "fails", "hangs", "loses"  # LOSES: completes, guest state wrong


@dataclass(frozen=True)
class Effect:
    result: str  # LOADS | FAILS | HANGS | LOSES
    qemu: str = ""  # the destination's (or source's) own error text, or the behaviour
    code: Code | None = None  # what the model reports (None for LOADS)
    # a fact of the version named (conformance/versions.py): the effect holds only where it is False
    unless_fact: tuple[str, str] | None = None  # ("source"|"destination", fact)
    when_running: bool = False  # only while the source guest runs (a paused guest switches over at once)
    if_fact: tuple[str, str] | None = None  # ...: the effect holds only where it is True
    # False: real runs do not show one outcome (it depends on timing or on RAM contents); the
    # differential leaves the case out and says why in `qemu`
    verified: bool = True
    fix: str = ""  # what makes it load, when not "the same setting on the destination"


@dataclass(frozen=True)
class OneSided:
    kind: str  # "global" | "capability" | "parameter"
    name: str  # migration.send-section-footer, switchover-ack, multifd-channels
    value: Any  # the value only one side has (multifd-channels: any count differing from the other side's)
    source_only: Effect
    dest_only: Effect
    shared: Mapping[str, bool] = field(default_factory=dict)  # capabilities both sides need for it to matter
    in_stream: bool = False  # the Loader judges it from the bytes themselves (judge_sides skips it then)
    evidence: str = "real runs of both modelled versions, both ways (tests/test_dest_profile.py)"

    @property
    def option(self) -> str:
        """The command-line option that gives the destination this value."""
        flag = {"global": "--dest-global", "capability": "--dest-capability", "parameter": "--dest-parameter"}[self.kind]
        return f"{flag} {self.name}={_text(self.value)}"


def _text(v: Any) -> str:
    return "on" if v is True else "off" if v is False else str(v)


_ONE = Code.ONE_SIDED_SETTING
ONE_SIDED: tuple[OneSided, ...] = (
    # the Loader sees these in the bytes and says them with the codes of the same QEMU texts
    OneSided("global", "migration.send-section-footer", "off",
             Effect(FAILS, "Missing section footer for %s", Code.MISSING_FOOTER),
             Effect(FAILS, "Unknown savevm section type 126", Code.UNKNOWN_SECTION_TYPE), in_stream=True),
    OneSided("global", "migration.send-configuration", "off",
             Effect(FAILS, "Configuration section missing", Code.CONFIGURATION_MISSING),
             Effect(FAILS, "Unknown savevm section type 7", Code.UNKNOWN_SECTION_TYPE), in_stream=True),
    OneSided("global", "migration.multifd-flush-after-each-section", "off",  # default on for machine types <= 8.0
             # a destination without FLUSH records fails on the record itself (the Loader says so)
             Effect(FAILS, "a destination flushing after each section dies on the FLUSH record (10.0; 7.2: Unknown "
                    "combination of migration flags: 0x200)", _ONE, if_fact=("destination", "multifd_flush_understood")),
             Effect(LOADS, "a destination that syncs only on FLUSH records still syncs on every one"),
             shared={"multifd": True}),
    OneSided("capability", "return-path", True,
             Effect(LOADS, "the source waits for nothing the destination must send"),
             Effect(LOADS, "the destination opens no return path the source did not ask for")),
    OneSided("capability", "switchover-ack", True,
             Effect(HANGS, "the running source waits for a SWITCHOVER_ACK the destination never sends: it stays "
                    "'active' (a stopped guest switches over at once)", _ONE, when_running=True),
             Effect(FAILS, "RP: Received invalid message 0x0007 length 0x0000 (a source that does not know "
                    "SWITCHOVER_ACK fails)", Code.RP_MALFORMED, unless_fact=("source", "rp_msg_max_has_switchover_ack")),
             shared={"return-path": True}),
    OneSided("capability", "multifd", True,
             Effect(LOSES, "the destination never reads the extra connections (\"Extra incoming migration connection; "
                    "ignoring\"): their pages are not loaded, or the source blocks on them; with an all-zero paused "
                    "guest 2 of 4 real runs complete, 2 fail", Code.MULTIFD_CHANNELS, verified=False),
             Effect(HANGS, "the destination waits in 'setup' for multifd channels that never connect",
                    Code.MULTIFD_CHANNELS_MISSING)),
    OneSided("parameter", "multifd-channels", 4,  # the destination's count above the source's default (2)
             Effect(LOSES, "channels beyond the destination's count are never read (real runs with an all-zero paused "
                    "guest: 3 of 4 complete, a 10.0 destination fails with \"received id '2' already setup\")",
                    Code.MULTIFD_CHANNELS, verified=False),
             Effect(HANGS, "the destination waits in 'setup' for channels that never connect",
                    Code.MULTIFD_CHANNELS_MISSING),
             shared={"multifd": True}),
    OneSided("parameter", "zero-page-detection", "multifd",
             Effect(LOSES, "zero pages listed in multifd packets are ignored: they keep what the destination had",
                    Code.MULTIFD_ZERO_PAGES_IGNORED, unless_fact=("destination", "multifd_zero_pages_understood"),
                    fix="--source-parameter zero-page-detection=legacy", verified=False),
             Effect(LOADS, "a destination does not detect zero pages"),
             shared={"multifd": True},
             evidence="read from 7.2's sources (MultiFDPacket_t has no zero-page list); not shown on a real binary: "
                      "a 10.0 destination also skips a zero page it never received before, so a destination whose RAM "
                      "does not start zeroed differs on both"),
)

BY_NAME: Mapping[str, OneSided] = {r.name: r for r in ONE_SIDED}


@dataclass(frozen=True)
class Side:
    """What one side was started with: its QEMU version and the settings that differ from
    that version's defaults for the machine type (-global values as text, on/off)."""

    version: str
    machine: str | None = None  # None: the version's newest of the family does not matter (defaults)
    globals: Mapping[str, str] = field(default_factory=dict)  # "migration.send-section-footer" -> "off"
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    running: bool = False  # the guest runs while it migrates (only the source's matters)

    def value(self, row: OneSided) -> Any:
        if row.kind == "global":
            return self._global(row.name)
        if row.kind == "capability":
            return self.capabilities.get(row.name, False)
        if row.name == "multifd-channels":
            return int(self.parameters.get(row.name, 2))
        return self.parameters.get(row.name)


    def _global(self, name: str) -> str | None:
        """The effective value: the -global given, else what the machine type sets on that
        version (compat data; a version without the knob has the behaviour it names)."""
        from conformance.rules import compat

        driver, _, knob = name.partition(".")
        given = self.globals.get(name)
        if driver != "migration" or knob not in compat.WIRE_PROPERTIES or self.machine is None:
            return _norm(given) if given is not None else None
        try:
            return compat.wire_properties(self.version, self.machine, [f"{name}={given}"] if given else [])[knob]
        except KeyError:  # a machine type the version lacks: only what was given
            return _norm(given) if given is not None else None


def _norm(v: str) -> str:
    return {"true": "on", "yes": "on", "false": "off", "no": "off"}.get(str(v).lower(), str(v).lower())


@dataclass(frozen=True)
class Finding:
    row: OneSided
    only: str  # "source" or "destination": the side that has the value
    effect: Effect
    message: str


def _fact(version: str, name: str) -> bool:
    from conformance.versions import facts

    f = facts(version)
    if name == "rp_msg_max_has_switchover_ack":
        return f.rp_msg_max > SWITCHOVER_ACK_RP_TYPE
    return bool(getattr(f, name))


SWITCHOVER_ACK_RP_TYPE = 7  # MIG_RP_MSG_SWITCHOVER_ACK


def judge_sides(source: Side, dest: Side, *, stream_judged: bool = False) -> list[Finding]:
    """The rows whose setting the two sides do not share, with what the destination does
    (`stream_judged`: without the rows the Loader judges from the stream's own bytes)."""
    out = []
    for row in ONE_SIDED:
        if stream_judged and row.in_stream:
            continue
        if any(source.capabilities.get(c, False) != v or dest.capabilities.get(c, False) != v
               for c, v in row.shared.items()):
            continue
        s, d = source.value(row), dest.value(row)
        if row.name == "multifd-channels":
            if s == d:
                continue
            only = "destination" if d > s else "source"
        elif s == d or (s != row.value and d != row.value) or (row.kind == "global" and None in (s, d)):
            continue
        else:
            only = "source" if s == row.value else "destination"
        effect = row.source_only if only == "source" else row.dest_only
        if effect.result == LOADS or (effect.when_running and not source.running):
            continue
        if effect.unless_fact is not None:
            who, fact = effect.unless_fact
            if _fact(source.version if who == "source" else dest.version, fact):
                continue
        if effect.if_fact is not None:
            who, fact = effect.if_fact
            if not _fact(source.version if who == "source" else dest.version, fact):
                continue
        out.append(Finding(row, only, effect, message(row, only, effect, s, d)))
    return out


def message(row: OneSided, only: str, effect: Effect, source_value: Any = None, dest_value: Any = None) -> str:
    """One line: what happens, and the setting that would make the destination load it."""
    if effect.fix:
        fix = effect.fix
        what = f"the {only} was started with {row.name}={_text(row.value)} and the other side was not"
    elif row.name == "multifd-channels":
        what = f"the source opens {source_value} multifd channels, the destination expects {dest_value}"
        fix = f"--dest-parameter multifd-channels={source_value}"
    elif only == "source":
        what = f"the source was started with {row.name}={_text(row.value)} and the destination was not"
        fix = row.option
    else:
        what = f"only the destination was started with {row.name}={_text(row.value)}"
        fix = f"a destination without {row.name}={_text(row.value)}"
    verb = {FAILS: "fails", HANGS: "hangs", LOSES: "loses guest state"}.get(effect.result, effect.result)
    return f"{what}: the migration {verb} ({effect.qemu}); it loads with {fix}"
