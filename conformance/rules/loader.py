"""The reference loader: a sans-IO model of a QEMU destination reading the main stream.

In the manner of h11: explicit phases, a transitions table, records in, violations out,
no I/O. `feed(record)` returns the violations that record causes; `close()` those the end
of the stream causes. The stream's framing comes from wireformat's reader; what is
allowed, and what a destination of the target version does otherwise, is decided here.
Three tables drive it: TRANSITIONS below (record order), the postcopy sub-states
(conformance.rules.postcopy) and the destination's MigrationStatus
(conformance.rules.migration_states). The return path, the other direction, is the
source's to judge (conformance.rules.returnpath).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from wireformat.constants import (
    MIG_CMD_FIXED_LEN,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_FILE_VERSION_COMPAT,
    RAM_SECTION_IDSTR,
    RAM_SECTION_VERSION,
    MigCmd,
    RamSaveFlag as F,
    SectionType as T,
)
from wireformat.budgets import BUDGETS, DecodeBudget
from wireformat.commands import RELEASED, CommandSet
from wireformat.errors import UnknownVfioMarker
from wireformat.ram import XbzrleError, xbzrle_decode
from wireformat.vfio import parse_markers
from wireformat.vmstate import VmstateBudgetError, VmstateDecodeError, parse_vmdescription
from wireformat.records import (
    Command,
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    PackageEnd,
    RamRecord,
    RamRun,
    Record,
    SectionFooter,
    SectionHeader,
    TrailingData,
    VmDescription,
)

from conformance.rules.tables import DestinationTables
from conformance.rules.profile import DestinationProfile, profile
from conformance.rules.catalogue import Code, Severity, Violation
from conformance.rules.decode_errors import code_of
from conformance.rules.migration_states import DESTINATION, Status
from conformance.rules import postcopy as pc
from conformance.rules.postcopy import PostcopyState
from conformance.rules.sink import ViolationSink
from conformance.rules.switchover import is_vfio_idstr
from conformance.rules.sync import SyncSummary
from conformance.rules.value_rules import ROM_PROBE_LIMIT, RomProbe
from conformance.versions import facts

PAGE_CONT = int(F.RAM_SAVE_FLAG_PAGE | F.RAM_SAVE_FLAG_CONTINUE)
ZERO_CONT = int(F.RAM_SAVE_FLAG_ZERO | F.RAM_SAVE_FLAG_CONTINUE)
MAPPED_RAM_FORBIDDEN = frozenset(int(f) for f in (F.RAM_SAVE_FLAG_ZERO, F.RAM_SAVE_FLAG_PAGE, F.RAM_SAVE_FLAG_XBZRLE,
                                                   F.RAM_SAVE_FLAG_HOOK, F.RAM_SAVE_FLAG_MULTIFD_FLUSH))
MAX_KEPT_BODIES = BUDGETS.kept_bodies  # device bodies kept for the VMDESCRIPTION cross-check


class Phase(Enum):
    HEADER = "header"  # expecting the file header
    CONFIGURATION = "configuration"  # expecting QEMU_VM_CONFIGURATION
    RECORDS = "records"  # between top-level records
    IN_SECTION = "in-section"  # inside a section body, expecting payload or footer
    AFTER_EOF = "after-eof"  # expecting the VMDESCRIPTION trailer
    DONE = "done"


@dataclass
class _Package:
    """One MIG_CMD_PACKAGED being read: its nested loader ends at POSTCOPY_RUN or EOF."""

    offset: int
    ended: bool = False
    trailing_reported: bool = False


# (phase, record type) -> next phase. Anything else is handled as a framing violation.
TRANSITIONS: dict[tuple[Phase, type], Phase] = {
    (Phase.HEADER, FileHeader): Phase.CONFIGURATION,
    (Phase.CONFIGURATION, Configuration): Phase.RECORDS,
    (Phase.RECORDS, SectionHeader): Phase.IN_SECTION,
    (Phase.RECORDS, Command): Phase.RECORDS,
    (Phase.RECORDS, PackageEnd): Phase.RECORDS,
    (Phase.RECORDS, Eof): Phase.AFTER_EOF,
    (Phase.IN_SECTION, RamRecord): Phase.IN_SECTION,
    (Phase.IN_SECTION, RamRun): Phase.IN_SECTION,
    (Phase.IN_SECTION, DeviceState): Phase.IN_SECTION,
    (Phase.IN_SECTION, SectionFooter): Phase.RECORDS,
    (Phase.AFTER_EOF, VmDescription): Phase.DONE,
    (Phase.AFTER_EOF, TrailingData): Phase.DONE,
    (Phase.DONE, TrailingData): Phase.DONE,
}


def _hint(setting: str, only: str) -> str:
    """Which side alone was started with `setting` off, and what makes the destination load it
    (rules/settings.py has the row)."""
    if only == "source":
        return (f"the source was started with {setting}=off: a destination loads it when started with "
                f"--dest-global {setting}=off")
    return f"the destination was started with {setting}=off and the source was not: it loads with the default ({setting}=on)"


_CONFIGURATION_MISSING = "Configuration section missing (" + \
    "a stream written with migration.send-configuration=off, or for a machine type <= 2.3: a destination loads it " + \
    "when started with --dest-global migration.send-configuration=off)"


def is_legacy_machine(machine: str) -> bool:
    """pc-i440fx-2.3 and older: no CONFIGURATION record, no section footers."""
    m = re.fullmatch(r"pc-(?:i440fx|q35)-(\d+)\.(\d+)(?:\.\d+)?", machine)
    return bool(m) and (int(m[1]), int(m[2])) <= (2, 3)


class Loader:
    def __init__(
        self,
        target: DestinationProfile | str | None = None,
        *,
        commands: CommandSet = RELEASED,
        tables: DestinationTables | None = None,
        body_checker: Callable[[dict, bytes, DecodeBudget], str | None] | None = None,
        machine: str | None = None,
        recovery: bool = False,
        previous: "Loader | None" = None,
        source_version: str | None = None,
    ):
        self.target = target if isinstance(target, DestinationProfile) else profile(target)
        self.commands = commands
        self.tables = tables  # the destination's registered entries, when known
        self.body_checker = body_checker
        self.machine = machine or self.target.machine  # the destination's machine type, when known
        self.source_version = source_version  # judges the return path (the source reads it), when known
        # Machine types up to 2.3 send neither CONFIGURATION nor footers (hw_compat_2_3).
        # Unknown destination machine: the stream's own first record says which it is.
        self.legacy_machine = None if self.machine is None else is_legacy_machine(self.machine)
        # mapped-ram rules apply once the destination accepted a configuration carrying the
        # capability (the reader's own mapped-ram flag frames MEM_SIZE whatever was accepted)
        self.mapped_ram = False
        self.phase = Phase.RECORDS if recovery else Phase.HEADER
        self.sink = ViolationSink(self.target.version)
        self.violations: list[Violation] = self.sink.violations  # the kept ones (at most sink.cap)
        self._closed = False
        # destination state. The stream's framing state (its section table, whether it has
        # footers, its page size) is the reader's; what is kept here is the destination's.
        self.configuration: Configuration | None = None
        # The destination's bindings: a START or FULL binds its section id to the entry it
        # names (QEMU: SaveStateEntry.load_section_id) and PART/END look the id up there. Not
        # framing state: "Unknown savevm section", a START that reuses an id, and the names in
        # the destination's messages are judged over it; it differs from the reader's table
        # where the destination skips records the reader frames (after POSTCOPY_RUN inside a
        # package); a recovery channel resumes the bindings of the channel it replaces; and
        # records built directly (tests, strategies) carry no reader's resolution.
        self.bindings: dict[int, SectionHeader] = {}
        self.open_iterables: set[int] = set()  # bound by START, not yet ENDed
        self.loaded_devices: set[tuple[str, int]] = set()
        self.current: SectionHeader | None = None  # the section being loaded (its footer is due)
        # whether the destination expects section footers now: its migration.send-section-footer,
        # None while a stream without configuration has not shown which machine type wrote it
        # (the reader's `footers` is what the stream has, which frames device bodies)
        self.expect_footers: bool | None = self.target.footers
        # the stream's footers at odds with the destination were said (a missing footer in a
        # footer-less stream, or a footer it does not expect): a destination stops at the first
        self._footer_framing_said = False
        self._no_configuration_at = 0
        self.return_path = False
        self.pings: list[int] = []  # MIG_CMD_PING values sent on an open return path (for the ReturnPathModel)
        # postcopy recovery: a new main channel with no header, destination in postcopy-recover
        # (the old channel brought the header, configuration, MEM_SIZE and ADVISE..RUN)
        self.postcopy = PostcopyState.RECOVER if recovery else PostcopyState.NONE
        self.packages: list[_Package] = []
        self.recovery_channel = recovery  # stays set: this channel never carries MEM_SIZE
        # the destination's MigrationStatus from the connection on, moved along its table only
        self.status = Status(DESTINATION, self.target.version, "postcopy-recover" if recovery else "active")
        self.blocks: dict[str, int] = {}
        self.blocks_announced = False
        self.last_block: dict[str, str] = {}  # per channel, survives section boundaries
        self.device_bodies: list[tuple[str | None, int, bytes, int]] = []  # (idstr, instance, body, offset)
        self.rom_probe = RomProbe()  # the option-ROM bytes a value rule (kvm-tpr-opt) reads from guest RAM
        self._kept = 0
        self.vmdescription: bytes | None = None
        self.saw_eof = False
        # statistics
        self.stats_records = Counter()
        self.stats_commands = Counter()
        self.pages = defaultdict(Counter)  # block -> kind -> count
        self.section_list: list[dict] = []
        self.mapped_ram_pages: dict[str, int] = {}
        self.bytes_seen = 0
        self.flushes = 0  # RAM_SAVE_FLAG_MULTIFD_FLUSH records: multifd sync points (SyncSummary)
        self.ram_eos = 0  # EOS records of the RAM section
        if recovery:
            self.return_path = True
            if previous is not None:  # the destination remembers what the old channel said
                self.bindings = dict(previous.bindings)
                self.open_iterables = set(previous.open_iterables)
                self.blocks = dict(previous.blocks)
                self.blocks_announced = bool(previous.blocks)
                self.configuration = previous.configuration
            elif tables is not None and tables.ram_blocks:
                self.blocks = dict(tables.ram_blocks)
        self._handlers = {
            FileHeader: self._header,
            Configuration: self._configuration,
            SectionHeader: self._section_header,
            SectionFooter: self._footer,
            RamRecord: self._ram,
            RamRun: self._ram_run,
            DeviceState: self._device_state,
            Command: self._command,
            PackageEnd: self._package_end,
            Eof: self._eof,
            VmDescription: self._vmdescription,
            TrailingData: self._trailing,
        }

    # -- events in, violations out ------------------------------------------------------
    def feed(self, rec: Record) -> list[Violation]:
        start = len(self.violations)
        kind = type(rec)
        if self.packages and self.packages[-1].ended and kind is not PackageEnd:
            # the nested loader stopped at RUN or EOF: QEMU never reads the rest of the package
            pkg = self.packages[-1]
            if not pkg.trailing_reported:
                pkg.trailing_reported = True
                self._v(Code.PACKAGE_TRAILING_DATA, rec.channel, rec.offset,
                        "records after the end of the packaged stream (POSTCOPY_RUN or EOF): the destination ignores them")
            return self.violations[start:]
        if kind is RamRun and self.phase is Phase.IN_SECTION:
            self._ram_run(rec)  # hot path: skip the table lookup
        elif kind is RamRecord and self.phase is Phase.IN_SECTION:
            self._ram(rec)
        else:
            self.stats_records[kind.__name__] += 1
            nxt = TRANSITIONS.get((self.phase, kind)) if not (kind is Eof and rec.depth) else self.phase
            if nxt is None:
                self._out_of_phase(rec)
                nxt = TRANSITIONS.get((self.phase, kind), self.phase)
            before = self.phase
            self._handlers[kind](rec)
            if self.phase is before:  # a handler that ended the load (bad magic) keeps its phase
                self.phase = nxt
        return self.violations[start:]

    def close(self, end_offset: int | None = None, channel: str = "main") -> list[Violation]:
        if self._closed:
            return []
        self._closed = True
        start = len(self.violations)
        off = end_offset if end_offset is not None else self.bytes_seen
        if self.phase in (Phase.HEADER,):
            self._v(Code.TRUNCATED, channel, off, "the stream is empty")
        elif self.phase in (Phase.CONFIGURATION, Phase.RECORDS, Phase.IN_SECTION) and not self.saw_eof:
            where = f" inside section {self._describe(self.current)}" if self.phase is Phase.IN_SECTION else ""
            paused = " (in postcopy: the destination pauses, postcopy-paused, until a recovery)" \
                if self.postcopy.qemu is PostcopyState.RUNNING else ""
            self._v(Code.MISSING_EOF, channel, off, f"the stream ends{where} without QEMU_VM_EOF{paused}")
        elif self.phase is Phase.AFTER_EOF and self.postcopy is PostcopyState.NONE and self.configuration is not None:
            # (machine types <= 2.2 suppress the trailer; they send no configuration either)
            self._v(Code.MISSING_VMDESCRIPTION, channel, off, "no VMDESCRIPTION trailer after EOF (a destination only warns)")
        self._counted_instances()
        self._check_device_bodies()
        self._load_device_state()
        self._value_rules()
        return self.violations[start:]

    def _counted_instances(self) -> None:
        """Instance ids the destination numbers 0..n-1 (CPUs, buses), judged once every header is seen."""
        if self.tables is None:
            return
        for h, f in self.tables.judge_counted(self.section_list):
            self._v(f.code, "main", h["offset"], f.message, f"{h['idstr']} (id {h['section_id']})")

    def fail(self, code: Code, channel: str, offset: int, message: str, section: str | None = None) -> None:
        """A point past which the stream cannot be framed (reported by the reader)."""
        in_section, self.phase = self.phase is Phase.IN_SECTION, Phase.DONE
        if self.violations and (self.violations[-1].code, self.violations[-1].offset) == (code, offset):
            return  # the record was judged already (e.g. an unknown section id)
        if code is Code.UNKNOWN_SECTION_TYPE and in_section and self.expect_footers and self.current is not None:
            # right after a section body a destination expects the footer, and says so
            name = self._bound(self.current).idstr
            code, message = Code.MISSING_FOOTER, f"Missing section footer for {name}"
        self._v(code, channel, offset, message, section)

    def final_status(self) -> str:
        """The destination's MigrationStatus after this stream, taken along its table: EOF
        without a rejection completes it; a rejection fails it. A channel that ends during
        postcopy (after RUN) does not fail it: it pauses and waits for a recovery (and so
        does a recovery channel, which has no edge to failed)."""
        rejects = {v.code for v in self.violations if v.severity is Severity.REJECT}
        if rejects:
            cut = self.postcopy.qemu is PostcopyState.RUNNING and not self.saw_eof and rejects <= {Code.MISSING_EOF, Code.TRUNCATED}
            out = self.status.outcome("postcopy-paused") if cut else self.status.outcome("failed", "postcopy-paused")
        else:
            out = self.status.outcome("completed") if self.saw_eof else None
        return out or self.status.state

    def sync_summary(self) -> SyncSummary:
        """The multifd sync points of the stream read so far, and its RAM blocks."""
        return SyncSummary(self.flushes, self.ram_eos, {b: n for b, n in self.blocks.items() if n})

    def rejected(self) -> bool:
        return any(v.severity is Severity.REJECT for v in self.violations)

    # -- helpers ------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return self.sink.dropped

    def _v(self, code: Code, channel: str, offset: int, message: str, section: str | None = None) -> None:
        """Emit through the sink (which looks the severity up); the section defaults to the current one."""
        if section is None and self.current is not None and len(self.violations) < self.sink.cap:  # (not for a dropped one)
            section = self._describe(self.current)
        self.sink.emit(code, channel, offset, message, section)

    def _bound(self, h: SectionHeader) -> SectionHeader:
        """The full header the destination bound h's section id to (h itself when none)."""
        return self.bindings.get(h.section_id, h)

    def _describe(self, h: SectionHeader | None) -> str | None:
        if h is None:
            return None
        return f"{self._bound(h).idstr or '?'} (id {h.section_id})"

    def _out_of_phase(self, rec: Record) -> None:
        if self.phase is Phase.CONFIGURATION:
            # No configuration: the framing of machine types <= 2.3 (no footers either).
            if not self.target.expects_configuration:
                pass  # started with migration.send-configuration=off: none expected
            elif self.legacy_machine is False:
                self._v(Code.CONFIGURATION_MISSING, rec.channel, rec.offset, _CONFIGURATION_MISSING)
            elif self.legacy_machine is None:
                self.expect_footers = None  # the first section end tells: footers mean a modern machine
                self._no_configuration_at = rec.offset
            else:
                self.expect_footers = False
            self.phase = Phase.RECORDS
        elif self.phase is Phase.IN_SECTION:
            self._missing_footer(rec)
            self.phase = Phase.RECORDS
        elif self.phase is Phase.DONE:
            pass
        else:
            self._v(Code.MALFORMED, rec.channel, rec.offset, f"{rec.kind} not expected in phase {self.phase.value}")

    def _missing_footer(self, rec: Record) -> None:
        sec = self.current
        if self.expect_footers is None:
            self.expect_footers = False  # no configuration, no footers: consistently <= 2.3
        elif self.expect_footers:
            name = self._bound(sec).idstr if sec else "?"
            if not self.stats_records["SectionFooter"]:
                # no section had a footer: the source was started without them. The destination
                # stops at the first; say it once, with the setting that makes it load.
                self._footer_framing_said, self.expect_footers = True, False
                self._v(Code.MISSING_FOOTER, rec.channel, rec.offset, f"Missing section footer for {name} "
                        f"({_hint('migration.send-section-footer', 'source')})")
            else:
                self._v(Code.MISSING_FOOTER, rec.channel, rec.offset, f"Missing section footer for {name}")
        self.current = None

    # -- handlers -----------------------------------------------------------------------
    def _header(self, r: FileHeader) -> None:
        if self.machine is not None and self.target.lacks_machine(self.machine):
            self._v(Code.MACHINE_TYPE_UNSUPPORTED, r.channel, r.offset,
                    f"QEMU {self.target.version} has no machine type {self.machine}: a destination for it cannot start "
                    "(unsupported machine type)")
        if r.magic != QEMU_VM_FILE_MAGIC:
            self._v(Code.BAD_MAGIC, r.channel, r.offset, f"Not a migration stream (magic {r.magic:#010x})")
            self.phase = Phase.DONE
        elif r.version == QEMU_VM_FILE_VERSION_COMPAT:
            self._v(Code.OBSOLETE_VERSION, r.channel, 4, "SaveVM v2 format is obsolete and don't work anymore")
        elif r.version != QEMU_VM_FILE_VERSION:
            self._v(Code.UNSUPPORTED_VERSION, r.channel, 4, f"Unsupported migration stream version {r.version}")

    def _target_page_size(self) -> int:
        # the stream says it in CONFIGURATION (the reader framed RAM records by it too)
        return self.configuration.page_size if self.configuration is not None else 4096

    def _configuration(self, r: Configuration) -> None:
        self.configuration = r
        if not self.target.expects_configuration:
            self._v(Code.UNKNOWN_SECTION_TYPE, r.channel, r.offset,
                    f"Unknown savevm section type 7 ({_hint('migration.send-configuration', 'destination')})")
            return
        if self.legacy_machine:
            self._v(Code.UNKNOWN_SECTION_TYPE, r.channel, r.offset, "Unknown savevm section type 7")
            return
        if self.target.lacks_machine(r.machine_type):
            self._v(Code.MACHINE_TYPE_UNSUPPORTED, r.channel, r.offset,
                    f"QEMU {self.target.version} has no machine type {r.machine_type}: a destination for it cannot start "
                    "(unsupported machine type)")
        for cap in r.capabilities:
            if cap not in self.target.validated_capabilities:
                self._v(Code.UNKNOWN_CAPABILITY, r.channel, r.offset, f"Received unknown capability {cap}")
        self.mapped_ram = r.mapped_ram
        # the destination compares only as many bytes as it received (a prefix passes)
        if self.machine is not None and not self.machine.startswith(r.machine_type):
            self._v(Code.MACHINE_TYPE_MISMATCH, r.channel, r.offset,
                    f"Machine type received is '{r.machine_type}' and local is '{self.machine}'")

    def _section_header(self, h: SectionHeader) -> None:
        ch, off = h.channel, h.offset
        if h.is_full:
            if h.section_type == T.QEMU_VM_SECTION_START:
                if h.section_id in self.open_iterables or (
                    h.section_id in self.bindings and self.bindings[h.section_id].section_type == T.QEMU_VM_SECTION_START
                ):
                    self._v(Code.REUSED_SECTION_ID, ch, off, f"START reuses section id {h.section_id}", self._describe(h))
                self.open_iterables.add(h.section_id)
            else:
                key = (h.idstr, h.instance_id)
                if key in self.loaded_devices and h.idstr != RAM_SECTION_IDSTR:
                    self._v(Code.DUPLICATE_DEVICE_SECTION, ch, off, f"device '{h.idstr}' instance {h.instance_id} sent twice", self._describe(h))
                self.loaded_devices.add(key)
            self.bindings[h.section_id] = h
            self._check_entry(h)
            self.section_list.append({"type": h.type_name, "section_id": h.section_id, "idstr": h.idstr,
                                      "instance_id": h.instance_id, "version_id": h.version_id, "offset": off})
        else:
            if h.section_id not in self.bindings:
                self._v(Code.UNKNOWN_SECTION_ID, ch, off, f"Unknown savevm section {h.section_id}", f"? (id {h.section_id})")
            elif h.section_id not in self.open_iterables:
                self._v(Code.SECTION_NOT_OPEN, ch, off, f"{h.type_name} for section {self._describe(h)} that is not open")
            if h.section_type == T.QEMU_VM_SECTION_END:
                self.open_iterables.discard(h.section_id)
        self.current = h

    def _check_entry(self, h: SectionHeader) -> None:
        ch, off, name = h.channel, h.offset, self._describe(h)
        if h.idstr == RAM_SECTION_IDSTR and h.instance_id == 0:
            if h.version_id != RAM_SECTION_VERSION:
                self._v(Code.RAM_VERSION, ch, off, f"ram section version {h.version_id}, destination loads only {RAM_SECTION_VERSION}", name)
            return
        if self.tables is None:
            return
        finding = self.tables.judge(h.idstr, h.instance_id, h.version_id)
        if finding is not None:
            self._v(finding.code, ch, off, finding.message, name)

    def _footer(self, f: SectionFooter) -> None:
        sec = self.current
        if self.expect_footers is None:
            # footers, yet no configuration: every machine type that sends one sends both
            self._v(Code.CONFIGURATION_MISSING, f.channel, self._no_configuration_at, _CONFIGURATION_MISSING)
            self.expect_footers = True
        elif not self.expect_footers and not self._footer_framing_said:
            self._footer_framing_said = True  # the destination stops at the first: said once
            why = (_hint("migration.send-section-footer", "destination") if not self.target.footers else
                   "a footer, in a stream framed for a machine type without footers")
            self._v(Code.UNKNOWN_SECTION_TYPE, f.channel, f.offset, f"Unknown savevm section type 126 ({why})")
        if sec is not None and f.section_id != sec.section_id:
            name = self._bound(sec).idstr
            self._v(Code.FOOTER_MISMATCH, f.channel, f.offset,
                    f"Mismatched section id in footer for {name} - read {f.section_id:#x} expected {sec.section_id:#x}")
        self.current = None

    def _device_state(self, d: DeviceState) -> None:
        sec = self.current
        if d.idstr is not None and is_vfio_idstr(d.idstr):  # the reader names the body's section
            self._vfio_body(d, d.idstr)
        if sec is not None and sec.section_type == T.QEMU_VM_SECTION_FULL and self._kept + len(d.data) <= MAX_KEPT_BODIES:
            # a FULL header is bound to itself: it names its body
            self.device_bodies.append((sec.idstr, sec.instance_id or 0, d.data, d.offset))
            self._kept += len(d.data)

    def _vfio_body(self, d: DeviceState, idstr: str) -> None:
        """vfio_load_state reads the body marker by marker and fails at one it does not know.
        (A body that ends inside a marker's data is not judged here: the length of the
        config state is not on the wire, so only its reader can tell.)"""
        try:
            parse_markers(d.data, offset=d.offset, channel=d.channel)
        except UnknownVfioMarker as e:
            self._v(code_of(e), e.channel, e.offset, f"{idstr}: {e.message}")
        except ValueError:
            pass

    # -- RAM ------------------------------------------------------------------------------
    def _ram(self, r: RamRecord) -> None:
        flags = r.flags
        if (flags == PAGE_CONT or flags == ZERO_CONT) and not self.mapped_ram:
            name = self.last_block.get(r.channel)
            if name is None:
                self._v(Code.RAM_CONTINUE_WITHOUT_BLOCK, r.channel, r.offset, "Ack, bad migration stream! (CONTINUE with no block named before)")
                return
            length = self.blocks.get(name)
            if length is None or r.addr >= length:
                self._bad_offset(r, name, length)
            if flags == ZERO_CONT and r.fill:
                self._zero_fill(r)
            if r.addr < ROM_PROBE_LIMIT and name == self.rom_probe.block:
                self.rom_probe.page(r.addr, r.data if flags == PAGE_CONT else None, r.fill or 0, self._target_page_size())
            self.pages[name]["page" if flags == PAGE_CONT else "zero"] += 1
            return
        self._ram_slow(r)

    def _ram_run(self, run: RamRun) -> None:
        if self.mapped_ram:
            self._v(Code.RAM_MAPPED_RAM_FLAGS, run.channel, run.offset, f"Unexpected RAM flags: {run.flags & ~0x20}")
            return
        name = self.last_block.get(run.channel)
        if name is None:
            self._v(Code.RAM_CONTINUE_WITHOUT_BLOCK, run.channel, run.offset, "Ack, bad migration stream! (CONTINUE with no block named before)")
            return
        length = self.blocks.get(name)
        if length is None or run.max_addr() >= length or (name == self.rom_probe.block and min(run.words) < ROM_PROBE_LIMIT):
            for r in run.records():  # rare: find the records at fault, or keep the ROM bytes
                self._ram(r)
            return
        if run.flags == ZERO_CONT:
            fills = bytes(run.region[8 :: run.stride])
            if fills.count(0) != run.count:
                for r in run.records():
                    if r.fill:
                        self._zero_fill(r)
            self.pages[name]["zero"] += run.count
        else:
            self.pages[name]["page"] += run.count

    def _ram_slow(self, r: RamRecord) -> None:
        kind = r.flags & ~int(F.RAM_SAVE_FLAG_CONTINUE)
        ch, off = r.channel, r.offset
        self.stats_records[f"ram:{F(kind).name.removeprefix('RAM_SAVE_FLAG_')}"] += 1
        if kind == F.RAM_SAVE_FLAG_EOS:
            self.ram_eos += 1
        elif kind == F.RAM_SAVE_FLAG_MULTIFD_FLUSH:
            self.flushes += 1
        if self.mapped_ram and kind in MAPPED_RAM_FORBIDDEN:
            self._v(Code.RAM_MAPPED_RAM_FLAGS, ch, off, f"Unexpected RAM flags: {kind}")
            return
        if kind == F.RAM_SAVE_FLAG_MEM_SIZE:
            seen = set()
            for b in r.blocks or []:
                if b.mapped_ram is not None:
                    self.mapped_ram_pages[b.name] = b.mapped_ram.get("pages_present")
                if b.name in seen:
                    self._v(Code.RAM_MEM_SIZE_DUPLICATE, ch, off, f"MEM_SIZE announces block {b.name} twice")
                seen.add(b.name)
                self.blocks[b.name] = b.used_length
                self.blocks_announced = True
                finding = self.tables.judge_block(b.name, b.used_length) if self.tables is not None else None
                if finding is not None:
                    self._v(finding.code, ch, off, finding.message)
            return
        if kind in (F.RAM_SAVE_FLAG_ZERO, F.RAM_SAVE_FLAG_PAGE, F.RAM_SAVE_FLAG_XBZRLE, F.RAM_SAVE_FLAG_COMPRESS_PAGE):
            if r.continued:
                name = self.last_block.get(ch)
                if name is None:
                    self._v(Code.RAM_CONTINUE_WITHOUT_BLOCK, ch, off, "Ack, bad migration stream! (CONTINUE with no block named before)")
                    return
            else:
                name = r.block
                if name not in self.blocks and self.recovery_channel and not self.blocks_announced:
                    self.blocks[name] = 1 << 64  # announced on the channel before the failure
                if name not in self.blocks:
                    code = Code.RAM_PAGE_BEFORE_MEM_SIZE if not self.blocks else Code.RAM_UNKNOWN_BLOCK
                    self._v(code, ch, off, f"Can't find block {name}")
                    return
                self.last_block[ch] = name
            length = self.blocks.get(name)
            if length is None or r.addr >= length:
                self._bad_offset(r, name, length)
            if r.addr < ROM_PROBE_LIMIT and name == self.rom_probe.block and kind in (F.RAM_SAVE_FLAG_ZERO, F.RAM_SAVE_FLAG_PAGE):
                self.rom_probe.page(r.addr, r.data if kind == F.RAM_SAVE_FLAG_PAGE else None, r.fill or 0, self._target_page_size())
            if kind == F.RAM_SAVE_FLAG_ZERO:
                if r.fill:
                    self._zero_fill(r)
                self.pages[name]["zero"] += 1
            elif kind == F.RAM_SAVE_FLAG_PAGE:
                self.pages[name]["page"] += 1
            elif kind == F.RAM_SAVE_FLAG_XBZRLE:
                self.pages[name]["xbzrle"] += 1
                self._xbzrle(r)
            else:
                self.pages[name]["compressed"] += 1
                if not self.target.compress_page_known:
                    self._v(Code.RAM_COMPRESSED_PAGE, ch, off, "Unknown combination of migration flags: 0x100")
            return
        if kind == F.RAM_SAVE_FLAG_MULTIFD_FLUSH:
            if not self.target.multifd_flush_understood:
                self._v(Code.RAM_MULTIFD_FLUSH_UNSUPPORTED, ch, off, f"Unknown combination of migration flags: {r.flags:#x}")
        elif kind == F.RAM_SAVE_FLAG_HOOK:
            self._v(Code.RAM_HOOK_WITHOUT_RDMA, ch, off, "RAM_SAVE_FLAG_HOOK outside an RDMA migration")

    def _bad_offset(self, r: RamRecord, name: str, length: int | None) -> None:
        if length is None:
            self._v(Code.RAM_UNKNOWN_BLOCK, r.channel, r.offset, f"Can't find block {name}")
        else:
            self._v(Code.RAM_OFFSET_OUT_OF_RANGE, r.channel, r.offset, f"Illegal RAM offset {r.addr:x} (block {name} is {length:#x} bytes)")

    def _zero_fill(self, r: RamRecord) -> None:
        if self.target.zero_fill_must_be_zero:
            msg = f"Found a zero page with value {r.fill}"
        else:
            msg = f"ZERO record with fill byte {r.fill:#x}: QEMU {self.target.version} fills the page with it; no current source writes it"
        self._v(Code.RAM_ZERO_FILL, r.channel, r.offset, msg)

    def _xbzrle(self, r: RamRecord) -> None:
        if r.encoding != 0x01:
            self._v(Code.RAM_XBZRLE, r.channel, r.offset, "Failed to load XBZRLE page - wrong compression!")
            return
        try:
            xbzrle_decode(bytes(r.data), bytes(4096))
        except XbzrleError as e:
            what = "len overflow!" if "overflow" in str(e) else "decode error!"
            self._v(Code.RAM_XBZRLE, r.channel, r.offset, f"Failed to load XBZRLE page - {what}")

    # -- commands -------------------------------------------------------------------------
    def _command(self, c: Command) -> None:
        ch, off, cmd, n = c.channel, c.offset, c.cmd, len(c.data)
        name = self.commands.name(cmd)
        self.stats_commands[name] += 1
        is_opt_in = cmd == self.commands.send_src_downtime_id
        if not is_opt_in and (cmd == 0 or cmd >= self.target.mig_cmd_max):
            known = (f": {name}, which QEMU {self.target.version} does not have"
                     if cmd and not name.startswith("MIG_CMD_0x") else "")
            self._v(Code.UNKNOWN_COMMAND, ch, off, f"MIG_CMD {cmd:#x} unknown (len {n:#x}){known}")
            return
        if is_opt_in:
            if c.args is None:
                self._v(Code.COMMAND_MALFORMED, ch, off, f"{name} payload of {n} bytes does not decode")
            return
        mc = MigCmd(cmd)
        fixed = MIG_CMD_FIXED_LEN.get(mc)
        if fixed is not None and n != fixed:
            label = "(null)" if mc == MigCmd.MIG_CMD_ENABLE_COLO else name.removeprefix("MIG_CMD_")
            self._v(Code.COMMAND_BAD_LENGTH, ch, off, f"{label} received with bad length - expecting {fixed}, got {n}")
            return
        if mc == MigCmd.MIG_CMD_OPEN_RETURN_PATH:
            if self.return_path:
                self._v(Code.RETURN_PATH_REOPENED, ch, off, "CMD_OPEN_RETURN_PATH called when RP already open")
            self.return_path = True
        elif mc == MigCmd.MIG_CMD_PING:
            if not self.return_path:
                self._v(Code.PING_WITHOUT_RETURN_PATH, ch, off, f"CMD_PING ({c.args['value']:#x}) received with no return path")
            else:
                self.pings.append(c.args["value"])
        elif mc == MigCmd.MIG_CMD_ENABLE_COLO and not self.target.capabilities.get("x-colo"):
            self._v(Code.COLO_WITHOUT_CAPABILITY, ch, off,
                    "ENABLE_COLO command come in migration stream, but x-colo capability is not set"
                    if facts(self.target.version).colo_enable_needs_capability else
                    f"ENABLE_COLO without the x-colo capability: QEMU {self.target.version} turns COLO on and, "
                    "once the stream is loaded, waits for a COLO checkpoint that never comes (hangs)")
        elif mc in pc.COMMANDS:
            self._postcopy_command(c, mc)

    # -- postcopy: the table of conformance.rules.postcopy, interpreted ---------------------
    def _postcopy_command(self, c: Command, mc: MigCmd) -> None:
        step = pc.TRANSITIONS[(self.postcopy, mc)]
        check = self._POSTCOPY_PAYLOAD.get(mc)
        if mc in pc.PAYLOAD_FIRST and check is not None and not check(self, c):
            return
        if step.refused is not None:
            self._v(step.refused.code, c.channel, c.offset, pc.refusal_message(step.refused, self.postcopy))
            return
        if mc not in pc.PAYLOAD_FIRST and check is not None and not check(self, c):
            return
        self.postcopy = step.next
        effect = self._POSTCOPY_EFFECT.get(mc)
        if effect is not None:
            effect(self, c)

    # payload rules: False (after reporting) when the destination fails on the payload
    def _advise_payload(self, c: Command) -> bool:
        if len(c.data) not in (0, 16):
            self._v(Code.POSTCOPY_ADVISE_LENGTH, c.channel, c.offset, f"CMD_POSTCOPY_ADVISE invalid length ({len(c.data)})")
            return False
        return True

    def _discard_payload(self, c: Command) -> bool:
        n = len(c.data)
        if c.args is None or n < 20 or c.args.get("version") != 0:
            self._v(Code.COMMAND_MALFORMED, c.channel, c.offset, f"CMD_POSTCOPY_RAM_DISCARD malformed payload (len {n})")
            return False
        return True

    def _recv_bitmap_payload(self, c: Command) -> bool:
        n = len(c.data)
        if c.args is None or not c.args.get("block"):
            what = "failed to read block name" if not n or not c.data[0] else f"invalid payload length ({n})"
            self._v(Code.COMMAND_MALFORMED, c.channel, c.offset, f"loadvm_handle_recv_bitmap: {what}")
            return False
        if self.blocks and c.args["block"] not in self.blocks:
            self._v(Code.RAM_UNKNOWN_BLOCK, c.channel, c.offset, f"loadvm_handle_recv_bitmap: block '{c.args['block']}' not found")
            return False
        return True

    # what a taken command does besides the sub-state
    def _listened(self, c: Command) -> None:
        self.status.to("postcopy-active")  # the destination's status moves at LISTEN
        if not self.return_path:
            self._v(Code.POSTCOPY_WITHOUT_RETURN_PATH, c.channel, c.offset,
                    "POSTCOPY_LISTEN with no return path: the destination cannot ask for a page it lacks")

    def _ran(self, c: Command) -> None:
        for pkg in self.packages:  # RUN quits every nested loader at once
            pkg.ended = True

    def _resumed(self, c: Command) -> None:
        self.status.to("postcopy-active")  # postcopy-recover -> postcopy-active

    def _packaged(self, c: Command) -> None:
        self.packages.append(_Package(offset=c.offset))

    _POSTCOPY_PAYLOAD = {
        MigCmd.MIG_CMD_POSTCOPY_ADVISE: _advise_payload,
        MigCmd.MIG_CMD_POSTCOPY_RAM_DISCARD: _discard_payload,
        MigCmd.MIG_CMD_RECV_BITMAP: _recv_bitmap_payload,
    }
    _POSTCOPY_EFFECT = {
        MigCmd.MIG_CMD_POSTCOPY_LISTEN: _listened,
        MigCmd.MIG_CMD_POSTCOPY_RUN: _ran,
        MigCmd.MIG_CMD_POSTCOPY_RESUME: _resumed,
        MigCmd.MIG_CMD_PACKAGED: _packaged,
    }

    def _package_end(self, p: PackageEnd) -> None:
        if not self.packages:
            return
        pkg = self.packages.pop()
        if not pkg.ended:
            self._v(Code.PACKAGE_INCOMPLETE, p.channel, pkg.offset,
                    "the packaged stream ends without POSTCOPY_RUN or EOF: the nested loader reads past its data and fails")

    # -- end of stream --------------------------------------------------------------------
    def _eof(self, e: Eof) -> None:
        if e.depth:
            self.packages[-1].ended = True  # ends the nested loader only
            return
        self.saw_eof = True  # final_status() takes the status to completed when nothing rejected
        self.bytes_seen = e.offset + 1

    def _vmdescription(self, v: VmDescription) -> None:
        self.bytes_seen = v.offset + 5 + len(v.json)
        if not v.complete:
            self._v(Code.VMDESCRIPTION_TRUNCATED, v.channel, self.bytes_seen,
                    f"VMDESCRIPTION announces {v.announced} bytes, the stream ends after {len(v.json)} (a destination completes)")
            return
        self.vmdescription = v.json

    def _trailing(self, t: TrailingData) -> None:
        self._v(Code.TRAILING_DATA, t.channel, t.offset, f"{t.length} bytes after the end of the stream (first: {t.head[:8].hex()})")
        self.bytes_seen = t.offset + t.length

    def _check_device_bodies(self) -> None:
        """Each FULL body must be exactly what the stream's own VMSD description says."""
        if self.vmdescription is None or self.body_checker is None:
            return
        try:  # within the JSON budgets and type-checked against the trailer's schema
            devices = parse_vmdescription(self.vmdescription).devices
        except VmstateDecodeError as e:
            self._v(Code.VMDESCRIPTION_MALFORMED, "main", self.bytes_seen, f"VMDESCRIPTION is not the expected JSON: {e.message.removeprefix('VMDESCRIPTION: ')}")
            return
        by_key = {}
        for dev in devices:
            by_key.setdefault((dev["name"], dev["instance_id"]), dev)
        budget = DecodeBudget()  # one for every body of the stream
        for idstr, inst, data, off in self.device_bodies:
            dev = by_key.get((idstr, inst))
            if dev is None:
                continue
            try:
                problem = self.body_checker(dev, data, budget)
            except VmstateBudgetError as e:
                self._v(Code.VMDESCRIPTION_MALFORMED, "main", self.bytes_seen,
                        f"VMDESCRIPTION describes more than the budget of {budget.limit} decoded elements "
                        f"(reached at {idstr} instance {inst}: {e.message}); later bodies are not checked against it")
                return
            if problem:
                self._v(Code.DEVICE_BODY_MISMATCH, "main", off, problem, f"{idstr} instance {inst}")

    def _load_device_state(self) -> None:
        """Each FULL body read as the destination reads it: by its own VMSD layout (rules.device_state)."""
        layouts = getattr(self.tables, "device_layouts", None)
        if layouts is None:
            return
        from conformance.rules.device_state import judge_bodies

        machine = self.machine or (self.configuration.machine_type if self.configuration else None)
        j = judge_bodies(layouts, self.device_bodies, self.section_list, machine, self.vmdescription)
        for off, section, f in j.findings:
            self._v(f.code, "main", off, f.message, section)
        self.device_state = j.stats()

    def _value_rules(self) -> None:
        """The checks the destination's VMSDs and post_load make on values (rules.value_rules)."""
        from conformance.rules.value_rules import judge_bodies

        j = judge_bodies(self.target.version, self.device_bodies, self.vmdescription, self.target.globals, self.blocks,
                         self.rom_probe)
        for off, section, f in j.findings:
            self._v(f.code, "main", off, f.message, section)
        if j.checked or j.not_judged:
            self.value_rules = j.stats()

    # -- report ---------------------------------------------------------------------------
    def stats(self) -> dict:
        conf = self.configuration
        return {
            "bytes": self.bytes_seen,
            "records": dict(self.stats_records),
            "commands": dict(self.stats_commands),
            "configuration": None
            if conf is None
            else {"machine_type": conf.machine_type, "capabilities": conf.capabilities,
                  "uuid": conf.uuid.hex() if conf.uuid else None},
            "sections": len(self.section_list),
            "ram_blocks": {name: {"used_length": self.blocks.get(name), **dict(self.pages.get(name, {}))} for name in self.blocks},
            "mapped_ram_pages": self.mapped_ram_pages or None,
            "postcopy": self.postcopy.qemu.name,
            "status": self.final_status(),
            "violations_dropped": self.dropped,
            **({"device_state": self.device_state} if getattr(self, "device_state", None) else {}),
            **({"value_rules": self.value_rules} if getattr(self, "value_rules", None) else {}),
        }
